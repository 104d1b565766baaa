"""Imported first by the processes executor's forkserver (its preload list): ignore ``SIGINT``.

The terminal's Ctrl-C reaches every process of the group. The forkserver spends its first seconds
importing torch (the next module of its preload list), and a ``KeyboardInterrupt`` there printed a
traceback under the run's own message. With ``SIGINT`` ignored before that import, the forkserver
and every worker it forks (they inherit the setting) leave Ctrl-C to the manager, which stops them
(:mod:`sbn_bench.runner.process_executor`). This module imports nothing else of sbn-bench, so it
runs before torch loads; it changes nothing off the main thread.
"""

from __future__ import annotations

import signal
import threading

if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
