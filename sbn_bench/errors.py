"""The errors a user can cause, with one base class that carries what was wrong (STYLE 17).

Every error that is the user's input (a bad argument, file, plugin or folder) is a
:class:`SbnBenchError`: its message is one line naming the argument, the bad value and what was
expected, and the same facts are attributes (:attr:`~SbnBenchError.argument`,
:attr:`~SbnBenchError.value`, :attr:`~SbnBenchError.expected`), so that no caller ever parses a
message back into data. The command line turns exactly these into one ``Error: …`` line; any other
exception is a bug and shows its traceback.

The subclasses also derive from the built-in exception that fits (``ValueError``, ``TypeError``,
``OSError``), so ``except ValueError`` in user code keeps working. They live beside the code that
raises them (:class:`sbn_bench.problems.ProblemError`, :class:`sbn_bench.config.ConfigError`, …);
this module imports nothing of sbn_bench, so every layer can use it.
"""

from __future__ import annotations

from typing import Any


class _Unset:
    """The :attr:`SbnBenchError.value` of an error that records no value (a singleton, falsy,
    written ``UNSET``)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:  # pickles as the singleton (errors travel from worker processes)
        return "_UNSET"


_UNSET: Any = _Unset()


class SbnBenchError(Exception):
    """An error caused by the user's input, with a one-line message.

    Attributes:
        argument: the argument, option, key, file or estimator that is wrong (None when the error
            concerns no single argument).
        value: the bad value (``UNSET`` when not recorded).
        expected: what was expected, in words (None when not recorded).
        detail: the message without its leading ``argument NAME=VALUE`` (None when not recorded),
            for a caller that names the argument its own way (a command-line option).
    """

    UNSET = _UNSET
    usage = True
    """Whether the command line shows this error, when it names an option given there, as that
    option's usage error (exit status 2); False for a failure of the outside world that the
    value merely led to (an unreachable Dask scheduler: exit status 1)."""
    blames: tuple[str, ...] = ()
    """Other settings at fault beside ``argument`` (a ``chunk`` that exceeds the memory budget):
    the command line names the options of those given there too."""

    def __init__(self, message: str, *, argument: str | None = None, value: Any = _UNSET,
                 expected: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(str(message).split()) if "\n" not in str(message) else str(message)
        self.argument = argument
        self.value = value
        self.expected = expected
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class ArgumentError(SbnBenchError, ValueError):
    """A Python argument out of its range (e.g. ``num_samples=0``)."""


def is_out_of_memory(e: BaseException) -> bool:
    """``e`` is running out of memory while allocating: a ``MemoryError``, or torch's
    ``RuntimeError`` ("can't allocate memory", "CUDA out of memory"): the request was too large for
    the machine, not a bug."""
    if isinstance(e, MemoryError):
        return True
    text = " ".join(str(e).split()) if isinstance(e, RuntimeError) else ""
    return "allocate" in text or "out of memory" in text


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters with ``…`` (a value quoted in a message)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _boolean(value: object) -> bool:
    """A bool, Python's or numpy's (``numpy.bool_`` is not a subclass of ``bool``)."""
    return type(value).__name__ in ("bool", "bool_")


def is_integer(value: object) -> bool:
    """An integer of any kind (Python's, numpy's), not a bool."""
    import numbers

    return isinstance(value, numbers.Integral) and not _boolean(value)


EMPTY_FOLDER = "'' is empty; expected a folder path (use '.' for the current folder)"
"""Why an empty output folder is refused wherever one is given (pathlib reads ``''`` as ``.``:
the files would land in the current folder unasked)."""


def plain_int(value: Any) -> Any:
    """``value`` as a Python int when it is an integer of any kind (:func:`is_integer`: NumPy's
    too, which JSON cannot write), else unchanged, for the checks that follow to judge."""
    return int(value) if is_integer(value) and not isinstance(value, int) else value


def check_seed(seed: object, argument: str = "seed", error: type[SbnBenchError] = ArgumentError) -> int:
    """``seed`` as an int, refused (``error``, naming ``argument``) unless a whole number in
    ``[0, 2^63)`` (torch generators take 64-bit signed seeds; a bool is not a seed)."""
    if is_integer(seed) and 0 <= int(seed) < 2**63:  # type: ignore[call-overload]
        return int(seed)  # type: ignore[call-overload]
    raise error(f"argument {argument}={seed!r} must be an integer in [0, 2^63)", argument=argument,
                value=seed, expected="an integer in [0, 2^63)")


def check_whole(value: object, argument: str, minimum: int = 1,
                error: type[SbnBenchError] = ArgumentError, unit: str = "",
                unlimited: bool = False) -> int | float:
    """``value`` as an int, refused (``error``, naming ``argument``) unless a whole number ``≥
    minimum``: an integer of any kind (not a bool) or a whole-valued float such as ``4e9``;
    ``unit`` names what it counts (``"bytes"``). With ``unlimited``, ``inf`` is accepted (no limit)
    and returned as is. ``nan``, ``2.5``, strings and negative values are refused."""
    import math
    import numbers

    if is_integer(value):
        if int(value) >= minimum:  # type: ignore[call-overload]
            return int(value)  # type: ignore[call-overload]
    elif isinstance(value, numbers.Real) and not _boolean(value):
        v = float(value)
        if unlimited and v == math.inf:
            return v
        if math.isfinite(v) and v.is_integer() and v >= minimum:
            return int(v)
    what = f"a whole number{f' of {unit}' if unit else ''} ≥ {minimum}"
    what += " (or inf: no limit)" if unlimited else ""
    raise error(f"argument {argument}={value!r} must be {what}", argument=argument, value=value,
                expected=what)


def check_path(value: object, argument: str, error: type[SbnBenchError] = ArgumentError) -> None:
    """Refuse (``error``, naming ``argument``) a ``value`` that is not a path (``str`` or
    ``os.PathLike``), which pathlib would refuse with a bare ``TypeError``."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise error(f"argument {argument}={value!r} must be a path (str or os.PathLike)",
                    argument=argument, value=value, expected="a str or os.PathLike")
