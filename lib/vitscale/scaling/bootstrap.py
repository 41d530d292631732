"""How a scaling fit's intervals are resampled, as one record: the allocation approaches, the
backtests and the frontier laws take it instead of three loose parameters each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bootstrap:
    """Percentile intervals at `level` from `samples` refits on resampled points (0: no interval), the
    resamples drawn from `seed`."""

    samples: int = 100
    level: float = 0.9
    seed: int = 0
