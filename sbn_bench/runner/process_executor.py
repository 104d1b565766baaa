"""``--executor processes[:N]``: cells in N worker processes on this machine.

Each worker is a process of its own (started by a ``forkserver``, which imports torch and
sbn-bench once, so that a replacement starts in a fraction of a second; ``spawn`` where there is no
forkserver), measuring one cell at a time with the run's ``threads`` torch threads (default one) and
sending its result back through a pipe; the manager writes it. What a worker receives is described
in :mod:`sbn_bench.runner.worker`; the run's configuration travels once per worker.

Faults are handled here, per worker, so that only the cell concerned is lost:

* a worker that dies while measuring (killed, out of memory, ``os._exit`` in an estimator) is
  replaced and its cell is tried once more in a fresh worker; a second death records the cell as
  failed with stage ``worker`` and what happened (signal or exit status);
* a cell past ``config.cell_timeout`` stops itself inside its worker (``SIGALRM``, for Python
  code); one that does not (stuck in C code, signals blocked) is killed with its worker when the
  limit and a grace period are over, and replaced. Both are recorded with stage ``timeout``;
* a worker that dies before it is ready (before its loop starts: most often a script without an
  ``if __name__ == "__main__":`` guard, which each worker process imports and so runs again) costs
  its cell nothing: the cell goes to a fresh worker. :data:`STARTUP_DEATHS` such deaths in a row
  stop the run with a :class:`~sbn_bench.runner.memory.RunError` that says so (a new worker would
  die the same way);
* Ctrl-C (or any exception in the manager) kills every worker at once: workers ignore ``SIGINT``
  (the forkserver ignores it before it imports torch, :mod:`sbn_bench._quiet_sigint`, and the
  workers it forks inherit that, so the terminal's Ctrl-C, which reaches the whole process group,
  never interrupts one while it starts), hold nothing that needs saving, and the manager keeps the
  cells already written.
"""

from __future__ import annotations

import collections
import multiprocessing
import pickle
import signal
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from sbn_bench.config import RunConfig
from sbn_bench.runner.cells import Cell, CellContext, CellResult, Task, failure_row
from sbn_bench.runner.memory import RunError
from sbn_bench.runner.worker import WORKER_STAGE, main_allows_processes, measure_shipped, recipe_of

ATTEMPTS = 2
"""A cell whose worker dies is tried this many times in all (once more), then recorded as failed."""

STARTUP_DEATHS = 3
"""Workers that die before they are ready, one after the other (none ready in between), that
stop the run: starting more would not help."""

STARTUP_TIMEOUT_S = 300.0
"""Seconds a worker may take to become ready (import torch and sbn-bench, and the main module where
``spawn`` or ``forkserver`` imports it) before it is killed as a start-up failure; a cell's own
time limit counts from then."""

READY = "ready"
"""A worker's first message: its loop has started (its start-up, and the import of the main
module that ``spawn`` and ``forkserver`` do, went through)."""


def grace_s(timeout: float) -> float:
    """Seconds after ``cell_timeout`` before a cell that did not stop itself is killed: one second
    plus 5 % of the limit, at most a minute."""
    return min(60.0, 1.0 + 0.05 * timeout)


def describe_exit(exitcode: int | None) -> str:
    """What a worker's exit code says happened, in words."""
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = (" (killed from outside, or by the kernel for running out of memory)"
               if -exitcode == signal.SIGKILL else "")
        return f"it was killed by {name}{why}"
    return f"it exited with status {exitcode} (the estimator ended the process, e.g. os._exit)"


def _worker_main(conn: Connection, debug: bool) -> None:
    """A worker's loop: receive ``(cell, problem, reference, config or None, recipe)``, send the
    :class:`CellResult` (or ``("error", traceback)`` when ``debug`` re-raises), until ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the manager's: it stops the workers
    try:
        conn.send_bytes(pickle.dumps(READY))
    except (BrokenPipeError, OSError):
        return
    config: RunConfig | None = None
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if msg is None:
            return
        cell, problem, reference, new_config, recipe = msg
        config = new_config or config
        assert config is not None
        try:
            out: Any = measure_shipped(cell, problem, reference, config, recipe, debug=debug)
        except BaseException:  # noqa: BLE001 - debug: the manager raises it with the traceback
            out = ("error", traceback.format_exc())
        conn.send_bytes(pickle.dumps(out))


@dataclass
class _Job:
    """A task on its way: the cell, its context, how many times it was started."""

    cell: Cell
    context: CellContext
    attempts: int = 0
    deaths: list[str] = field(default_factory=list)


@dataclass
class _Worker:
    process: Any
    conn: Connection
    config: RunConfig | None = None
    job: _Job | None = None
    started: float = 0.0
    ready: bool = False


class ProcessExecutor:
    """Cells in ``workers`` processes on this machine (see the module docstring).

    Args:
        workers: number of worker processes (≥ 1).
        debug: re-raise an estimator's exception (with the worker's traceback) instead of
            recording it.
    """

    name = "processes"

    def __init__(self, workers: int, *, debug: bool = False) -> None:
        self.workers = workers
        self.debug = debug
        methods = multiprocessing.get_all_start_methods()
        self._mp = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            # first SIGINT ignored (Ctrl-C is the manager's), then torch and sbn-bench imported
            self._mp.set_forkserver_preload(["sbn_bench._quiet_sigint", "sbn_bench.runner.worker"])
        self._pool: list[_Worker] = []
        self._startup_deaths: list[str] = []  # since the last worker that became ready

    # -- workers ---------------------------------------------------------------------------

    def _start(self) -> _Worker:
        parent, child = self._mp.Pipe()
        proc = self._mp.Process(target=_worker_main, args=(child, self.debug), daemon=True,
                                name="sbn-bench-worker")
        proc.start()
        child.close()
        w = _Worker(proc, parent)
        self._pool.append(w)
        return w

    def _kill(self, w: _Worker) -> None:
        if w.process.is_alive():
            w.process.kill()
        w.process.join(5)
        w.conn.close()
        if w in self._pool:
            self._pool.remove(w)

    def _send(self, w: _Worker, job: _Job) -> None:
        config = job.context.config
        job.attempts += 1  # taken back by the caller when the worker proves dead
        if not w.process.is_alive():
            raise BrokenPipeError("the worker died while idle")
        w.job, w.started = job, time.monotonic()
        # plain pickle: torch's multiprocessing pickler would move tensors through shared memory
        w.conn.send_bytes(pickle.dumps((job.cell, job.context.problem, job.context.reference,
                                        None if w.config is config else config,
                                        recipe_of(job.context))))
        w.config = config  # sent once per worker (a sweep's configuration lists every problem)

    # -- the protocol -----------------------------------------------------------------------

    def map(self, tasks: Iterable[Task]) -> Iterator[CellResult]:
        """Measure the tasks in the worker processes; yield each result when it arrives. Tasks are
        pulled only when a worker is free, so references are computed as their cells come due."""
        source = iter(tasks)
        retry: collections.deque[_Job] = collections.deque()
        exhausted = False
        try:
            while True:
                idle = [w for w in self._pool if w.job is None]
                # a worker is started only for a task that is there (never more than the cells)
                while idle or len(self._pool) < self.workers:
                    if retry:
                        job = retry.popleft()
                    elif not exhausted:
                        try:
                            cell, context = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        job = _Job(cell, context)
                    else:
                        break
                    w = idle.pop(0) if idle else self._start()
                    try:
                        self._send(w, job)
                    except (BrokenPipeError, OSError):  # died while idle: replace, send again
                        w.job = None
                        w.process.join(5)
                        was_ready = self._was_ready(w)
                        self._kill(w)
                        job.attempts -= 1  # not the cell's doing, ready or not
                        retry.appendleft(job)
                        if not was_ready:
                            self._started_badly(describe_exit(w.process.exitcode))
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    if exhausted and not retry:
                        return
                    continue
                yield from self._collect(busy, retry)
        finally:
            for w in [w for w in self._pool if w.job is not None]:
                self._kill(w)  # interrupted: their cells are abandoned

    def _collect(self, busy: list[_Worker], retry: collections.deque[_Job]
                 ) -> Iterator[CellResult]:
        """Wait for the first result, death or deadline among ``busy`` workers; yield what is
        final (a result, a timeout, a second death); requeue a first death in ``retry``."""
        now = time.monotonic()
        deadlines = {id(w): self._deadline(w) for w in busy}
        finite = [d for d in deadlines.values() if d is not None]
        wait_s = max(0.0, min(finite) - now) if finite else None
        handles: list[Any] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = set(wait(handles, timeout=wait_s))
        for w in busy:
            job = w.job
            assert job is not None
            if w.conn in ready:
                try:
                    out = pickle.loads(w.conn.recv_bytes())
                    if out == READY:
                        w.ready = True
                        self._startup_deaths.clear()
                        w.started = time.monotonic()  # the cell's time limit counts from here
                        if not w.conn.poll():
                            continue  # its cell is still being measured
                        out = pickle.loads(w.conn.recv_bytes())
                except (EOFError, OSError):
                    out = None
                if out is not None:
                    w.job = None
                    yield self._result(job, out)
                    continue
            if w.conn in ready or w.process.sentinel in ready:
                w.process.join(5)
                what = describe_exit(w.process.exitcode)
                w.job = None
                self._kill(w)
                if not w.ready:  # it never started its loop: not the cell's doing
                    self._not_started(job, retry, what)
                    continue
                res = self._died(job, what, time.monotonic() - w.started, retry)
                if res is not None:
                    yield res
                continue
            deadline = deadlines[id(w)]
            if deadline is not None and time.monotonic() >= deadline:
                w.job = None
                self._kill(w)
                if not w.ready:  # stuck in its start-up: not the cell's doing
                    self._not_started(job, retry, f"it was not ready after {STARTUP_TIMEOUT_S:g} s")
                    continue
                limit = job.context.config.cell_timeout
                yield CellResult(job.cell, "failure", [failure_row(
                    job.cell, "timeout", f"the cell ran past its time limit of {limit:g} s "
                                         f"(cell_timeout) and did not stop; its worker process was "
                                         "killed and replaced")], seconds=time.monotonic() - w.started)

    def _was_ready(self, w: _Worker) -> bool:
        """Whether idle worker ``w`` had become ready (its message may still wait in the pipe)."""
        if not w.ready:
            try:
                w.ready = w.conn.poll() and pickle.loads(w.conn.recv_bytes()) == READY
            except (EOFError, OSError):
                pass
            if w.ready:
                self._startup_deaths.clear()
        return w.ready

    def _not_started(self, job: _Job, retry: collections.deque[_Job], what: str) -> None:
        """``job``'s worker failed before it was ready (``what``): the attempt is not the job's,
        which goes first in ``retry``; the failure counts towards :data:`STARTUP_DEATHS`."""
        job.attempts -= 1
        retry.appendleft(job)
        self._started_badly(what)

    def _started_badly(self, what: str) -> None:
        """Count a worker that died before it was ready; raise when :data:`STARTUP_DEATHS` did
        in a row."""
        self._startup_deaths.append(what)
        if len(self._startup_deaths) < STARTUP_DEATHS:
            return
        why = ("" if main_allows_processes() else
               " A Python script that uses executor='processes' must put its work under "
               "`if __name__ == \"__main__\":`: every worker process imports the script, and so "
               "runs it again; or use executor='serial'.")
        raise RunError(
            f"worker processes die as they start ({len(self._startup_deaths)} in a row; the last: "
            f"{what}), before measuring anything.{why} (A worker's own error, if any, is printed "
            "above.)")

    def _deadline(self, w: _Worker) -> float | None:
        assert w.job is not None
        if not w.ready:
            return w.started + STARTUP_TIMEOUT_S
        limit = w.job.context.config.cell_timeout
        return None if limit is None else w.started + limit + grace_s(limit)

    def _result(self, job: _Job, out: Any) -> CellResult:
        if isinstance(out, tuple) and out and out[0] == "error":
            raise RuntimeError(f"cell {job.cell} raised in its worker process (SBN_BENCH_DEBUG):\n"
                               f"{out[1]}")
        assert isinstance(out, CellResult)
        return out

    def _died(self, job: _Job, what: str, seconds: float, retry: collections.deque[_Job]
              ) -> CellResult | None:
        job.deaths.append(what)
        if job.attempts < ATTEMPTS:
            retry.append(job)
            return None
        history = "; then ".join(job.deaths)
        return CellResult(job.cell, "failure", [failure_row(
            job.cell, WORKER_STAGE, f"the worker process measuring this cell died {len(job.deaths)} "
                                    f"times, so the cell is recorded as failed: {history}")],
            seconds=seconds)

    def close(self) -> None:
        """Stop every worker (politely when idle, at once when busy)."""
        for w in list(self._pool):
            if w.job is None and w.process.is_alive():
                try:
                    w.conn.send_bytes(pickle.dumps(None))
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 2.0
        for w in list(self._pool):
            if w.job is None:
                w.process.join(max(0.0, deadline - time.monotonic()))
            self._kill(w)


__all__ = ["ATTEMPTS", "STARTUP_DEATHS", "ProcessExecutor", "describe_exit", "grace_s"]
