"""Where cells run (STYLE 15: the manager decides what to measure, an executor where).

An :class:`Executor` takes ``(cell, context)`` tasks and yields :class:`CellResult` objects as they
finish; the manager (:func:`sbn_bench.runner.run`) writes them. The results are independent of the
executor: a cell's numbers depend only on its cell and context (:func:`measure_cell`).

A new executor is one class with ``map`` and ``close``; :func:`make_executor` builds one from its
spelling (``"serial"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from sbn_bench.errors import ArgumentError
from sbn_bench.runner.cells import Cell, CellContext, CellResult, measure_cell

Task = tuple[Cell, CellContext]


class Executor(Protocol):
    """Runs cells and yields their results."""

    name: str

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

    def __init__(self, *, debug: bool = False) -> None:
        self.debug = debug

    def map(self, tasks: Iterable[Task]) -> Iterator[CellResult]:
        for cell, context in tasks:
            yield measure_cell(cell, context, debug=self.debug)

    def close(self) -> None:
        pass


EXECUTORS = ("serial",)
"""The executors :func:`make_executor` knows."""


def check_executor(spec: str) -> str:
    """The executor's name when ``spec`` names one (``"serial"``), checked before any work.

    Raises:
        ArgumentError: an unknown spec, naming the valid ones.
    """
    name = spec.split(":", 1)[0]
    if name not in EXECUTORS or (name == "serial" and spec != "serial"):
        raise ArgumentError(f"argument executor={spec!r} is unknown; expected one of "
                            f"{', '.join(EXECUTORS)}", argument="executor", value=spec,
                            expected=f"one of {', '.join(EXECUTORS)}")
    return name


def make_executor(spec: str = "serial", *, debug: bool = False) -> Executor:
    """The executor a spec names (``"serial"``).

    Raises:
        ArgumentError: an unknown spec, naming the valid ones.
    """
    check_executor(spec)
    return SerialExecutor(debug=debug)
