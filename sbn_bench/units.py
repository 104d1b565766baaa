"""Sizes in bytes: parsing (``"512MiB"``), formatting (``"1.5 MiB (1,572,864 bytes)"``) and the short
spelling of option defaults (``"4GiB"``). One copy, used by the reference's size guard, the runner's
memory planner, the configuration and the command line. Imports nothing of sbn_bench but its errors.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext

from sbn_bench.errors import ArgumentError

SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
              "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
              "tib": 2**40}
"""Units of :func:`parse_size`, lower case: SI (``kb``, ``mb``, …) and binary (``kib``, ``mib``, …)."""

_BINARY = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def parse_size(value: int | str, argument: str = "size") -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GB"``, ``"1e9"``.

    Raises:
        ArgumentError: naming ``argument`` and the value (not a size, or under one byte).
    """
    expected = "bytes (an integer) or a size such as '512MiB', '2GB'"
    if isinstance(value, bool):
        raise ArgumentError(f"{argument}={value!r} is not a size; expected {expected}",
                            argument=argument, value=value, expected=expected)
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([+-]?[0-9.eE+-]+)\s*([A-Za-z]*)\s*", str(value))
        unit = m.group(2).lower() if m else ""
        try:
            if m is None or unit not in SIZE_UNITS:
                raise ValueError
            with localcontext() as ctx:  # exact: as many digits as the text has, and the unit's
                ctx.prec = len(m.group(1)) + 20
                exact = Decimal(m.group(1)) * SIZE_UNITS[unit]
            if not math.isfinite(float(exact)):  # "1e999" is infinite: not a size either
                raise ValueError
        except (ArithmeticError, ValueError):
            raise ArgumentError(f"{argument}={value!r} is not a size; expected {expected}",
                                argument=argument, value=value, expected=expected) from None
        if exact >= 1 and exact != exact.to_integral_value():  # "1.5" was taken as 1 byte
            raise ArgumentError(f"{argument}={value!r} is not a whole number of bytes; expected "
                                f"{expected}", argument=argument, value=value, expected=expected)
        n = int(exact)  # below one byte ("0.5" is 0): refused next
    if n < 1:
        raise ArgumentError(f"{argument}={value!r} must be at least 1 byte", argument=argument,
                            value=value, expected="at least 1 byte")
    return n


def format_count(n: int | float) -> str:
    """A count of any size with four significant digits: ``"1.153e+18"``, ``"4.495e+307"``, also for
    integers beyond float range (``2**2000``), which ``f"{n:.4g}"`` cannot format."""
    try:
        return f"{float(n):.4g}"
    except OverflowError:
        return f"{Decimal(n):.4g}"


def _three_digits(v: float) -> str:
    """Three significant digits, without an exponent below a million (``1000 → "1,000"``, not
    ``"1e+03"``)."""
    return f"{v:,.0f}" if 1000 <= abs(v) < 1e6 else f"{v:.3g}"


def format_bytes(n: float) -> str:
    """``"1.5 MiB (1,572,864 bytes)"``; below 1 KiB ``"17 bytes"``; sizes of any magnitude."""
    if n >= 2**60:
        return f"{format_gib(n)} ({format_count(int(n))} bytes)"
    for unit, size in _BINARY[1:]:
        if n >= size:
            return f"{_three_digits(n / size)} {unit} ({int(n):,} bytes)"
    return f"{int(n):,} byte" + ("" if int(n) == 1 else "s")


def format_gib(n: float) -> str:
    """``"4 GiB"``: a size in GiB with three significant digits (the reference's limits); sizes of
    any magnitude (``"3.81e+599 GiB"``, ``"inf GiB"``)."""
    if isinstance(n, float) and not math.isfinite(n):
        return f"{n} GiB"
    try:
        return f"{_three_digits(n / 2**30)} GiB"
    except OverflowError:
        return f"{Decimal(int(n)) / Decimal(2**30):.3g} GiB"


def size_text(n: int) -> str:
    """``4294967296 → "4GiB"``: the largest binary unit that divides ``n`` (option defaults)."""
    for unit, size in _BINARY:
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)
