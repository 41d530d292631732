"""How every report and message writes a number: one set of plain-text formats (significant digits,
SI counts, FLOPs with their unit, percentages with intervals, fitted constants with their flags). The
HTML around them lives in report/page.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def finite(v: Any) -> bool:
    """Whether `v` is a real, finite number (not a bool, None or text)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def number(v: Any, digits: int = 4) -> str:
    """A float for reading: `digits` significant digits, exponents as `1.39e10` (not `1.39e+10`)."""
    if not finite(v):
        return "" if v is None else str(v)
    s = f"{v:.{digits}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def count(v: Any) -> str:
    """A count with SI suffix: parameters 205,312 -> `205k`, 6,712,000 -> `6.71M`."""
    if not finite(v):
        return "" if v is None else str(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:g}"


def flops(v: Any) -> str:
    """Compute as `1.39e10 (13.9 GFLOP)`: the exponent for comparing, the unit for reading."""
    if not finite(v):
        return "" if v is None else str(v)
    for div, unit in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if abs(v) >= div:
            return f"{number(v, 3)} ({v / div:.3g} {unit})"
    return number(v, 3)


def integer(v: Any) -> str:
    """An exact integer with thousands separators: 13,866,762,240."""
    if not finite(v):
        return "" if v is None else str(v)
    return f"{round(v):,}"


def percent(v: Any, interval: Sequence[float] | None = None, digits: int = 3) -> str:
    """A fraction (an error, an accuracy) as `12.3%`, with its interval as `12.3% [11.0, 13.5]`."""
    if not finite(v):
        return "" if v is None else str(v)
    s = f"{100 * v:.{digits}g}%"
    if interval:
        s += f" [{100 * interval[0]:.{digits}g}, {100 * interval[1]:.{digits}g}]"
    return s


def percent_spread(mean: Any, std: Any = None) -> str:
    """A mean accuracy and its spread over seeds, in percent: `81.2 ± 1.3`."""
    if not finite(mean):
        return ""
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if finite(std) else "")


def with_interval(v: Any, interval: Sequence[float] | None = None, flags: Sequence[str] = ()) -> str:
    """A fitted constant as `0.35 [0.33, 0.37]`, plus flags such as `(at bound)`."""
    s = number(v)
    if interval:
        s += f" [{number(interval[0], 3)}, {number(interval[1], 3)}]"
    return s + "".join(f" ({f})" for f in flags)


def auto(v: Any) -> str:
    """The default cell text: floats with 4 significant digits, integers exact, None empty."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return integer(v)
    if isinstance(v, float):
        return number(v)
    return str(v)
