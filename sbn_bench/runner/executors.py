"""Where cells run (STYLE 15: the manager decides what to measure, an executor where).

An :class:`Executor` takes ``(cell, context)`` tasks and yields :class:`CellResult` objects as they
finish; the manager (:func:`sbn_bench.runner.run`) writes them, in any order (the tables are
assembled in the run's cell order). The results are independent of the executor: a cell's numbers
depend only on its cell and context (:func:`measure_cell`), computed with the run's ``threads``
torch threads wherever it runs, so ``metrics.csv`` is byte-identical whichever executor ran it.

The executors, by their spelling (``--executor``, TOML ``executor``):

==================  ===========================================================================
``auto``            (the default) ``processes`` with one worker per CPU when the machine has
                    more than one, the run is large enough to repay starting them and the
                    program is the ``sbn-bench`` command (:func:`resolve_auto`), else
                    ``serial``
``serial``          every cell in this process, one after the other
``processes[:N]``   N worker processes on this machine (default: the CPU count);
                    :mod:`~sbn_bench.runner.process_executor`
``dask[:ADDRESS]``  a Dask cluster: the scheduler at ADDRESS (``tcp://host:8786``), or a local
                    cluster of N worker processes for ``dask`` / ``dask:N``;
                    :mod:`~sbn_bench.runner.dask_executor` (``pip install "sbn-bench[dask]"``)
==================  ===========================================================================

A new executor is one class with ``name``, ``workers``, ``map`` and ``close``, and one entry in
:data:`EXECUTORS` (its spelling and a factory); :func:`check_executor` validates a spelling before
any work and :func:`make_executor` builds it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from sbn_bench.runner.cells import CellResult, Task, measure_cell
from sbn_bench.runner.dask_executor import DaskExecutor, require_dask
from sbn_bench.runner.memory import RunError
from sbn_bench.runner.process_executor import ProcessExecutor
from sbn_bench.runner.worker import default_workers, main_allows_processes

__all__ = ["AUTO_MIN_WORK", "EXECUTORS", "Executor", "ExecutorKind", "SerialExecutor", "Task",
           "check_executor", "make_executor", "parse_executor", "resolve_auto"]

AUTO_MIN_WORK = 2 * 10**9
"""Least work (estimates × data points × network parameters, summed over a run's statistics cells:
``samples`` estimates per Monte-Carlo cell, every path per exact-mode cell) for which ``auto``
starts worker processes: a few seconds of cells on the paper net (81 parameters), measured as the
break-even with the 2-3 s the workers take to start on a 2-core machine (a smaller run, e.g. the
test suite's, finishes serially before they would have)."""


def resolve_auto(work: int | None = None, cells: int | None = None) -> str:
    """The executor ``auto`` stands for: ``processes:N`` with N the CPUs this process may use
    (at most ``cells``, the statistics cells to run) when N ≥ 2, ``work`` (estimates × data
    points × parameters over those cells; None: unknown, taken as large) reaches
    :data:`AUTO_MIN_WORK` and the program is the ``sbn-bench`` command or an interactive session
    (:func:`main_allows_processes`); else ``serial``. Results do not depend on it (every executor
    gives the same numbers)."""
    n = default_workers() if cells is None else min(default_workers(), cells)
    if n < 2 or (work is not None and work < AUTO_MIN_WORK) or not main_allows_processes():
        return "serial"
    return f"processes:{n}"


class Executor(Protocol):
    """Runs cells and yields their results."""

    name: str
    workers: int
    """How many cells run at once (the ETA divides the mean cell time by it)."""

    def map(self, tasks: Iterable[Task]) -> Iterator[CellResult]:
        """Measure every task; yield each result once it is done (in any order). Tasks are pulled
        from ``tasks`` lazily, so building a context (a reference gradient) can wait until its
        first cell is due."""
        ...

    def close(self) -> None:
        """Release workers; pending tasks are cancelled."""
        ...


class SerialExecutor:
    """Every cell in this process, one after the other, in the order given."""

    name = "serial"
    workers = 1

    def __init__(self, *, debug: bool = False) -> None:
        self.debug = debug

    def map(self, tasks: Iterable[Task]) -> Iterator[CellResult]:
        for cell, context in tasks:
            yield measure_cell(cell, context, debug=self.debug)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ExecutorKind:
    """One executor: its ``name``, how its argument is written (``syntax``, for errors and help),
    ``parse`` (the text after ``name:``, or None, to the factory's keyword arguments; raises
    ``ValueError`` with what is expected), ``check`` (what must hold on this machine before any
    work, e.g. an installed extra) and ``factory``."""

    name: str
    syntax: str
    parse: Callable[[str | None], dict[str, object]]
    factory: Callable[..., Executor]
    check: Callable[[str], None] | None = None


def _no_argument(arg: str | None) -> dict[str, object]:
    if arg is not None:
        raise ValueError("takes no argument")
    return {}


MAX_WORKERS = 1024
"""Most worker processes ``processes:N`` or ``dask:N`` may start on one machine."""


def _workers(arg: str | None) -> dict[str, object]:
    if arg is None:
        return {"workers": default_workers()}
    if not re.fullmatch(r"[0-9]+", arg.strip()) or not 1 <= int(arg) <= MAX_WORKERS:
        raise ValueError(f"N={arg!r} must be a number of workers in 1..{MAX_WORKERS}")
    return {"workers": int(arg)}


ADDRESS = re.compile(r"(?:(tcp|tls|ucx|ws|wss|inproc)://)?(\[[^\s\[\]/]+\]|[^\s:/\[\]]+)(?::(\d+))?")


def _dask(arg: str | None) -> dict[str, object]:
    if arg is None:
        return {"address": None}
    arg = arg.strip()
    if re.fullmatch(r"[0-9]+", arg):  # dask:N, a local cluster of N workers
        return {"address": None, **_workers(arg)}
    m = ADDRESS.fullmatch(arg)
    if m is None or (m.group(3) is None and m.group(1) is None):
        raise ValueError(f"ADDRESS={arg!r} is not a scheduler address such as tcp://host:8786")
    host = m.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"ADDRESS={arg!r} has host {host!r}, not an IPv6 address in "
                             "brackets such as [::1]") from None
    elif re.fullmatch(r"[0-9.]+", host):
        # digits alone are no host name (a top-level domain is never numeric): dask:2:3 is a
        # typo. ipaddress refuses leading zeros (01.2.3.4), which resolvers read as octal.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"ADDRESS={arg!r} has host {host!r}, neither an IPv4 address nor a "
                             "name") from None
    if m.group(3) is not None and not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"ADDRESS={arg!r} has port {m.group(3)}, outside 1..65535")
    return {"address": arg if m.group(1) else f"tcp://{arg}"}


def _auto(*, debug: bool = False) -> Executor:
    return make_executor(resolve_auto(), debug=debug)


EXECUTORS: dict[str, ExecutorKind] = {k.name: k for k in (
    ExecutorKind("auto", "auto", _no_argument, _auto),
    ExecutorKind("serial", "serial", _no_argument, SerialExecutor),
    ExecutorKind("processes", "processes[:N]", _workers, ProcessExecutor),
    ExecutorKind("dask", "dask[:ADDRESS|:N]", _dask, DaskExecutor, check=require_dask),
)}
"""The executors :func:`make_executor` knows, by name."""


def _choices() -> str:
    return ", ".join(k.syntax for k in EXECUTORS.values())


def _bad_executor(spec: object, detail: str, expected: str) -> RunError:
    """The :class:`RunError` of a bad ``executor`` spelling; ``detail`` follows its value as
    written (`` is unknown; …`` or ``: processes …``)."""
    return RunError(f"argument executor={spec!r}{detail}", argument="executor", value=spec,
                    expected=expected, detail=detail)


def parse_executor(spec: str) -> tuple[ExecutorKind, dict[str, object]]:
    """The executor a spelling names and its factory's arguments (syntax only; nothing is
    started or imported).

    Raises:
        RunError: an unknown name or a bad argument, naming the spelling and the valid ones.
    """
    if not isinstance(spec, str):
        raise _bad_executor(spec, f" must be a string; expected one of {_choices()}",
                            f"one of {_choices()}")
    name, sep, arg = spec.strip().partition(":")
    kind = EXECUTORS.get(name)
    if kind is None:
        raise _bad_executor(spec, f" is unknown; expected one of {_choices()}", f"one of {_choices()}")
    try:
        return kind, kind.parse(arg if sep else None)
    except ValueError as e:
        raise _bad_executor(spec, f": {kind.name} {e}; expected {kind.syntax}", kind.syntax) from None


def check_executor(spec: str) -> str:
    """The executor's name when ``spec`` names a usable one, checked before any work: its
    spelling, and what it needs on this machine (``dask``: Dask installed).

    Raises:
        RunError: an unknown spelling or bad argument (naming the valid ones), or a missing extra
            (naming the command that installs it).
    """
    kind, _ = parse_executor(spec)
    if kind.check is not None:
        kind.check(spec)
    return kind.name


def make_executor(spec: str = "serial", *, debug: bool = False, **options: object) -> Executor:
    """The executor a spelling names, started (``processes`` starts its workers when its first
    task comes; ``dask`` connects to its scheduler, or starts a local cluster, here).

    Args:
        spec: see :data:`EXECUTORS` (``"serial"``, ``"processes:4"``, ``"dask:tcp://host:8786"``).
        debug: re-raise an estimator's exception instead of recording it.
        options: further keyword arguments of the executor's class (e.g. ``connect_timeout=`` of
            :class:`~sbn_bench.runner.dask_executor.DaskExecutor`).

    Raises:
        RunError: see :func:`check_executor`; a scheduler that cannot be reached.
    """
    check_executor(spec)
    kind, kwargs = parse_executor(spec)
    return kind.factory(**kwargs, **options, debug=debug)
