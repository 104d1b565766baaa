"""Keep freed memory in the process: the C allocator's policy sbn-bench measures under.

An estimator call allocates and frees the same megabyte-sized tensors again and again (a
``[S, D, n]`` float32 tensor of the paper net at ``S = 1000`` is 4 MB). glibc's ``malloc`` serves
blocks above its *mmap threshold* (128 KiB at start, raised by itself only as large blocks are
freed) with fresh ``mmap`` pages and returns them to the kernel on ``free``, and it trims the top of
its heap whenever more than a few hundred KiB is free there. Every such block is then faulted in
page by page (and zeroed by the kernel) on its first write: on this project's 2-core machine that
was about a quarter of the time of an ``arm`` call on the paper net at ``S = 1000`` (about 6,000
page faults per call; ``Tensor.random_`` into a fresh 8 MB tensor took 6.6 ms, ~3 ms of it page
faults).

:func:`keep_freed_memory` sets glibc's mmap threshold to its largest allowed value (32 MiB on 64-bit
systems) and turns heap trimming off (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``,
see ``man 3 mallopt``): freed blocks up to 32 MiB are reused without page faults (larger ones are
still mapped afresh); the price is that the process keeps the memory of its peak (its largest
chunk; in a run's manager, an exact reference of up to ``max_exact_bytes``) until it exits, and
that, called from Python, it changes the calling process for good. The numbers an estimator
computes do not change, only how fast. sbn-bench applies it where it measures (every cell in every
executor's processes, ``runner.run``, ``train.train``, ``train_study.run_study``);
``SBN_BENCH_MALLOC=system`` before the first call leaves the allocator as it is (the policy in
effect is recorded in the manifests). Elsewhere than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from sbn_bench.errors import ArgumentError

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""glibc's upper bound on ``M_MMAP_THRESHOLD`` for 64-bit systems (``HEAP_MAX_SIZE / 2``)."""

ENV = "SBN_BENCH_MALLOC"
"""The environment variable that opts out (``system``)."""

_policy: str | None = None


def keep_freed_memory() -> str:
    """Ask the C allocator to keep freed memory for reuse (see the module docstring), once per
    process, and return the policy in effect: ``"kept"`` (glibc, set), or ``"system"`` (``$SBN_BENCH_MALLOC``
    is ``system``, not glibc, or ``mallopt`` refused)."""
    global _policy
    if _policy is None:
        _policy = _apply()
    return _policy


def policy() -> str:
    """The policy in effect, without changing it: ``"kept"`` once :func:`keep_freed_memory` has set
    it in this process, else ``"system"``."""
    return _policy or "system"


def _apply() -> str:
    choice = os.environ.get(ENV, "").strip().lower() or "keep"  # set but empty: the default
    if choice not in ("keep", "system"):
        raise ArgumentError(f"environment variable {ENV}={os.environ[ENV]!r} must be 'keep' or "
                            "'system'", argument=ENV, value=os.environ[ENV],
                            expected="'keep' or 'system'")
    if choice == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "system"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap threshold first: M_TRIM_THRESHOLD alone would also freeze the threshold at 128 KiB
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return "system"
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # the largest int: trim only beyond 2 GiB free on top
    return "kept"
