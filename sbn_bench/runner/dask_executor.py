"""``--executor dask[:ADDRESS]``: cells on a Dask cluster (:mod:`dask.distributed`), the optional
extra ``pip install "sbn-bench[dask]"``.

``dask:tcp://host:8786`` connects to a running scheduler (started with ``dask-scheduler``, workers
with ``dask-worker tcp://host:8786 --nthreads 1 --nworkers N``, or by dask-jobqueue on a batch
system); plain ``dask`` starts a :class:`distributed.LocalCluster` on this machine over loopback:
one worker process per CPU (``dask:N`` for N), one thread each.

The client (the manager, :func:`sbn_bench.runner.run`) keeps a window of about two tasks per worker
thread in flight and pulls more from the run as results come back, so references are computed by
the manager as their cells come due and Ctrl-C leaves little to cancel. Each problem checkpoint,
its reference gradient and the run's configuration are sent to the cluster once, as the results
of tasks that every cell needing them depends on (so the scheduler recomputes them if the worker
holding them dies, which scattered data would not survive); a task carries the cell and its
estimator's :class:`~sbn_bench.runner.worker.Recipe` (spec, version, plugin files' text: the files
need not exist on the workers). Results travel back to the client, which alone writes them: no
shared file system is needed.

Faults:

* a worker that dies while measuring (killed, out of memory) is the scheduler's to handle: it runs
  the task again on another worker, up to ``distributed.scheduler.allowed-failures`` times (the
  local cluster sets it to 1: a cell is retried once), then fails it with ``KilledWorker``. The
  scheduler counts a death against every task assigned to the worker, those waiting behind the
  one that killed it included, so a cell failed that way may be a bystander: once the other cells
  are done it runs again alone on the cluster (the same number of tries), and only a cell that
  kills its workers alone too is recorded, with stage ``worker``;
* ``cell_timeout``: the task measures its cell in a thread of its own and waits for it at most that
  long; past it the task returns a ``timeout`` failure and the client restarts that worker (through
  its nanny), which ends the stuck computation;
* a cluster left without any worker (every worker gone, none coming back) for
  :data:`NO_WORKERS_TIMEOUT_S` while cells wait stops the run with a :class:`RunError` saying so;
  the finished cells are saved and a rerun of the same command resumes the rest;
* Ctrl-C cancels the tasks in flight and closes the client (and the local cluster).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sbn_bench.config import RunConfig
from sbn_bench.problems import Problem
from sbn_bench.runner.cells import Cell, CellResult, Reference, Task, failure_row
from sbn_bench.runner.memory import RunError
from sbn_bench.runner.worker import (
    WORKER_STAGE,
    Recipe,
    default_workers,
    measure_shipped,
    recipe_of,
)

DASK_EXTRA = 'pip install "sbn-bench[dask]"'
"""How to install what ``--executor dask`` needs."""
CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a scheduler that does not answer before giving up with an error."""
LOCAL_ALLOWED_FAILURES = 1
"""The local cluster's ``allowed-failures``: a cell whose worker dies is run once more, then failed."""
LOCAL_CONFIG: dict[str, Any] = {
    "distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES,
    # the workers' statistical profiler samples every thread's Python stack every 10 ms, which
    # slows cells (pure Python around small tensors) several times over
    "distributed.worker.profile.enabled": False,
    # one thread per worker for the numerical libraries, as Dask sets by default, but without its
    # MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap threshold: every tensor over
    # 128 KiB would then be mapped and unmapped afresh (several times slower)
    "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                                            "OPENBLAS_NUM_THREADS": 1},
}
"""Dask configuration of the local cluster (its workers inherit it)."""
WINDOW_PER_THREAD = 2
"""Tasks kept in flight per worker thread."""
MAX_LOSSES = 3
"""A cell whose result is lost before it reaches the client (its worker left) runs again, at most this
many times in all."""
RESTART_TIMEOUT_S = 30.0
"""Most seconds to wait for a worker restarted after a timeout (in the background)."""
RESULT_TIMEOUT_S = 300.0
"""Most seconds to fetch a finished task's result from its worker."""
NO_WORKERS_TIMEOUT_S = 120.0
"""Most seconds a run waits while the cluster has no worker at all (a worker restarted by its nanny
is back within seconds; workers of a batch system may take longer to come back), before it stops
with an error."""
POLL_S = 0.02
"""Seconds between looks at the tasks in flight while none has finished."""


def require_dask(spec: str) -> None:
    """Refuse ``--executor dask…`` where Dask is not installed, with the command that installs it.

    Raises:
        RunError: naming the executor and the extra.
    """
    try:
        import distributed  # noqa: F401 - an optional extra, checked before any work
    except ImportError as e:
        raise RunError(f"argument executor={spec!r} needs Dask, which is not installed ({e}); "
                       f"install the extra: {DASK_EXTRA}", argument="executor", value=spec,
                       expected=f"Dask installed ({DASK_EXTRA})") from None


def held(obj: Any) -> Any:
    """A task that holds an object shared by many cells (a problem, its reference, the config)."""
    return obj


def run_on_worker(cell: Cell, problem: Problem, reference: Reference | None, config: RunConfig,
                  recipe: Recipe, debug: bool) -> tuple[CellResult, str | None]:
    """The Dask task of one cell, on a worker: :func:`~sbn_bench.runner.worker.measure_shipped` in a
    thread of its own, waited for at most ``config.cell_timeout`` seconds.

    Returns:
        The result and None; or, past the limit, a ``timeout`` failure and this worker's address,
        which the client restarts (the stuck thread cannot be stopped otherwise).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = measure_shipped(cell, problem, reference, config, recipe, debug=debug)
        except BaseException as e:  # noqa: BLE001 - debug: re-raised in the task
            box["error"] = e

    thread = threading.Thread(target=target, name=f"sbn-bench cell {cell.id}", daemon=True)
    thread.start()
    thread.join(config.cell_timeout)
    if "error" in box:
        raise box["error"]
    if "result" in box:
        return box["result"], None
    from distributed import get_worker

    address = get_worker().address
    return CellResult(cell, "failure", [failure_row(
        cell, "timeout", f"the cell ran past its time limit of {config.cell_timeout:g} s "
                         f"(cell_timeout); its Dask worker {address} was restarted")],
        seconds=float(config.cell_timeout or 0.0)), address


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the local cluster's processes start, so that they inherit it: Ctrl-C in a
    terminal reaches the whole process group, and only the manager should act on it (it closes the
    cluster), not the workers (which would print their tracebacks). Off the main thread, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class SchedulerUnreachable(RunError):
    """The Dask scheduler of ``executor='dask:ADDRESS'`` did not answer: a failure of the cluster
    (start it), not a bad value, so the command line exits with status 1 (``usage`` False)."""

    usage = False


class _Lost(Exception):
    """A task's result did not reach the client (see :meth:`DaskExecutor._outcome`)."""


class _Killed(Exception):
    """A task failed with ``KilledWorker``: its workers died as many times as the scheduler allows
    (see :meth:`DaskExecutor._outcome`); the message says how often and where."""


def _connect(client_type: Any, address: str, timeout: float) -> Any:
    """``Client(address)``, given up after ``timeout`` (+ 5 s): Dask's own timeout covers the
    connection but not a server that accepts it and never answers, where ``Client`` waits
    forever. The attempt runs in a daemon thread; one past the deadline raises ``TimeoutError``
    (the thread is left to Dask, and ends with the process)."""
    box: dict[str, Any] = {}

    def attempt() -> None:
        try:
            box["client"] = client_type(address, timeout=timeout, set_as_default=False)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
            # free the half-made Client here: its __del__ times out closing a connection that
            # never was one, and would print that as an "Exception ignored" after our message
            e.__traceback__ = e.__context__ = e.__cause__ = None
            hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
            try:
                gc.collect()
            finally:
                sys.unraisablehook = hook

    thread = threading.Thread(target=attempt, name="sbn-bench-dask-connect", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if thread.is_alive():
        raise TimeoutError(f"no answer from {address}: it accepted the connection and said nothing")
    if "error" in box:
        raise box["error"]
    return box["client"]


class DaskExecutor:
    """Cells on a Dask cluster (see the module docstring).

    Args:
        address: the scheduler's address (``tcp://host:8786``); None starts a local cluster.
        workers: the local cluster's worker processes (default: the CPU count).
        debug: re-raise a task's exception instead of recording it.
        connect_timeout: seconds to wait for the scheduler.

    Raises:
        RunError: Dask is not installed, or the scheduler cannot be reached (one line, naming the
            address).
    """

    name = "dask"

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 debug: bool = False, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        spec = "dask" + (f":{address}" if address else "")
        require_dask(spec)
        import dask
        from distributed import Client, LocalCluster

        self.debug = debug
        self.cluster: Any = None
        self._restarts: list[threading.Thread] = []
        self._restarted: set[str] = set()  # addresses of the workers this executor restarted
        if address is None:
            with dask.config.set(LOCAL_CONFIG), _sigint_ignored():
                self.cluster = LocalCluster(n_workers=workers or default_workers(),
                                            threads_per_worker=1, processes=True, host="127.0.0.1",
                                            dashboard_address="127.0.0.1:0",
                                            silence_logs=logging.CRITICAL)
            address = self.cluster.scheduler_address
            timeout: float = max(connect_timeout, 30.0)
        else:
            timeout = connect_timeout
        try:
            self.client = _connect(Client, address, timeout)
        except Exception as e:  # noqa: BLE001 - every way of not reaching a scheduler, said once
            if self.cluster is not None:
                self.cluster.close()
            reason = " ".join(str(e).split()) or type(e).__name__
            if isinstance(e, (OSError, TimeoutError)):
                what = f"cannot connect to the Dask scheduler at {address} within {timeout:g} s"
            else:  # e.g. a web server there: its reply read as a Dask frame of exabytes
                what = (f"the server at {address} did not answer as a Dask scheduler "
                        f"({type(e).__name__})")
            raise SchedulerUnreachable(f"argument executor={spec!r}: {what} ({reason}); start one "
                                       "(dask-scheduler) or check the address", argument="executor",
                                       value=spec, expected="the address of a running Dask scheduler"
                                       ) from None
        self.address = address
        self.workers = self._threads()

    def _threads(self) -> int:
        """Worker threads of the cluster now (at least one)."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a scheduler that does not answer: keep the last count
            return max(1, getattr(self, "workers", 1))

    def map(self, tasks: Iterable[Task]) -> Iterator[CellResult]:
        """Submit the tasks to the cluster, a window at a time; yield each result as it arrives.

        A cell failed with ``KilledWorker`` among others is held back and, once every other cell
        is done, run again alone: only if its workers die then too is it recorded as failed.
        """
        from distributed import as_completed

        client = self.client
        source = iter(tasks)
        exhausted = False
        done = as_completed(loop=client.loop)
        # key: cell, arguments, losses, and for a cell run alone (suspected of killing its
        # workers) how often they died among other cells; None for a cell among others
        in_flight: dict[str, tuple[Cell, tuple[Any, ...], int, str | None]] = {}
        suspects: collections.deque[tuple[Cell, tuple[Any, ...], int, str]] = collections.deque()
        shared: dict[Any, Any] = {}
        self.workers = self._threads()

        def shared_once(kind: str, obj: Any) -> Any:
            # one upload per object (the tasks of a problem checkpoint share theirs): keyed by the
            # object itself, never by the cell's labels, which need not tell objects apart (a
            # training study's cells of one preset each carry their seed's problem); the object is
            # kept with its future, so that its id stays its own. A task that returns the object,
            # rather than client.scatter: the scheduler computes it again if the worker holding it
            # dies, whereas scattered data would be lost with it
            key = (kind, id(obj))
            if key not in shared:
                shared[key] = (obj, client.submit(held, obj, pure=False,
                                                  key=f"sbn-bench-{kind}-{uuid.uuid4().hex[:8]}"))
            return shared[key][1]

        def submit_more() -> None:
            nonlocal exhausted
            while not exhausted and len(in_flight) < WINDOW_PER_THREAD * self.workers:
                try:
                    cell, ctx = next(source)
                except StopIteration:
                    exhausted = True
                    break
                problem = shared_once("problem", ctx.problem)
                reference = None if ctx.reference is None else shared_once("reference",
                                                                         ctx.reference)
                config = shared_once("config", ctx.config)
                submit(cell, (cell, problem, reference, config, recipe_of(ctx), self.debug), 0,
                       None)
            if exhausted and not in_flight and suspects:  # the cluster is ours alone now
                submit(*suspects.popleft())

        def submit(cell: Cell, args: tuple[Any, ...], losses: int, died: str | None) -> None:
            fut = client.submit(run_on_worker, *args, pure=False,
                                key=f"sbn-bench-{cell.id}-{uuid.uuid4().hex[:8]}")
            in_flight[fut.key] = (cell, args, losses, died)
            done.add(fut)

        try:
            submit_more()
            for fut in self._completed(done, in_flight):
                cell, args, losses, died = in_flight.pop(fut.key)
                try:
                    outcome = self._outcome(fut, cell)
                except _Lost as e:
                    if losses + 1 < MAX_LOSSES:  # not the cell's fault: run it again
                        submit(cell, args, losses + 1, died)
                        continue
                    outcome = CellResult(cell, "failure", [failure_row(
                        cell, WORKER_STAGE, f"the result of this cell was lost {MAX_LOSSES} times "
                                            f"before it reached the client (its worker left the "
                                            f"cluster each time; last: {e})")])
                except _Killed as e:
                    if died is None:  # perhaps a bystander of the cell that killed its workers
                        suspects.append((cell, args, 0, str(e)))
                        submit_more()
                        continue
                    outcome = CellResult(cell, "failure", [failure_row(
                        cell, WORKER_STAGE, f"the Dask worker measuring this cell died {died} among "
                                            f"other cells, then {e} when the cell ran alone on the "
                                            "cluster: killed, out of memory, or the estimator ended "
                                            "the process; the cell is recorded as failed")])
                yield outcome
                if len(in_flight) < self.workers:
                    self.workers = self._threads()  # workers may have joined (adaptive clusters)
                submit_more()
        finally:
            if in_flight:
                client.cancel([f for f in done.futures if f.key in in_flight])
            shared.clear()

    def _completed(self, done: Any, in_flight: Mapping[str, Any]) -> Iterator[Any]:
        """The futures of ``done`` as they finish (futures added meanwhile included).

        Raises:
            RunError: the cluster has had no worker for :data:`NO_WORKERS_TIMEOUT_S` seconds
                while tasks were waiting (the scheduler keeps them forever otherwise).
        """
        alone_since: float | None = None
        last_look = 0.0
        while not done.is_empty():
            if done.has_ready():
                alone_since = None
                yield next(done)
                continue
            now = time.monotonic()
            if now - last_look >= 1.0:
                last_look = now
                if self._has_workers():
                    alone_since = None
                elif alone_since is None:
                    alone_since = now
                elif now - alone_since >= NO_WORKERS_TIMEOUT_S:
                    raise RunError(
                        f"the Dask cluster at {self.address} has had no worker for "
                        f"{NO_WORKERS_TIMEOUT_S:g} s while {len(in_flight)} cell(s) waited; the "
                        "finished cells are saved: start workers (or check the cluster) and rerun "
                        "the same command to resume")
            time.sleep(POLL_S)

    def _has_workers(self) -> bool:
        """Whether the scheduler has at least one worker now (False when it does not answer)."""
        try:
            return bool(self.client.nthreads())
        except Exception:  # noqa: BLE001 - a scheduler that does not answer has no usable worker
            return False

    def _outcome(self, fut: Any, cell: Cell) -> CellResult:
        """The result of a finished task, a ``worker`` failure for a failed one.

        Raises:
            _Lost: the task's result was lost before it reached the client (its worker left the
                cluster, e.g. restarted after another cell's timeout): to be run again.
            _Killed: the task failed with ``KilledWorker`` (its workers died as often as the
                scheduler allows); the message says how often and on which worker last.
        """
        from distributed.scheduler import KilledWorker

        if fut.status in ("lost", "cancelled"):
            raise _Lost(f"the task ended as {fut.status!r}")
        if fut.status == "finished":
            try:
                result, restart = fut.result(timeout=RESULT_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - e.g. the worker holding it just left
                raise _Lost(f"{type(e).__name__}: {e}") from None
            if restart is not None:
                self._restart(restart)
            return result
        exc = fut.exception() if fut.status == "error" else None
        if isinstance(exc, KilledWorker):
            tries = getattr(exc, "allowed_failures", None)
            what = f"{tries + 1} times" if isinstance(tries, int) else "repeatedly"
            last = getattr(exc, "last_worker", None)
            if getattr(last, "address", last) in self._restarted:
                # it died with a worker this executor restarted for another cell's time limit:
                # not the cell's fault, so it runs again (at most MAX_LOSSES times)
                raise _Lost(f"its worker {getattr(last, 'address', last)} was restarted after "
                            "another cell's time limit")
            where = f" (last on {getattr(last, 'address', last)})" if last is not None else ""
            raise _Killed(f"{what}{where}")
        else:
            if self.debug and exc is not None:
                raise exc
            message = (f"the Dask task failed on its worker: {type(exc).__name__}: {exc}"
                       if exc is not None else f"the Dask task ended as {fut.status!r}")
        return CellResult(cell, "failure", [failure_row(cell, WORKER_STAGE, message)])

    def _restart(self, address: str) -> None:
        """Restart a worker through its nanny, in the background (the run goes on meanwhile; a
        worker that does not come back is the cluster's loss, not the run's). Cells that die with
        it are run again (:meth:`_outcome`)."""
        self._restarted.add(address)
        def restart() -> None:
            try:
                self.client.restart_workers([address], timeout=RESTART_TIMEOUT_S,
                                            raise_for_error=False)
            except Exception:  # noqa: BLE001 - no nanny, or the client closed meanwhile
                pass

        t = threading.Thread(target=restart, name=f"sbn-bench restart {address}", daemon=True)
        t.start()
        self._restarts.append(t)

    def close(self) -> None:
        """Close the client, and the local cluster if this executor started one."""
        for t in self._restarts:
            t.join(RESTART_TIMEOUT_S)
        try:
            self.client.close(timeout=10)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=20)
                self.cluster = None


__all__ = ["CONNECT_TIMEOUT_S", "DASK_EXTRA", "DaskExecutor", "LOCAL_ALLOWED_FAILURES", "held",
           "require_dask", "run_on_worker"]
