"""Approaches 1 and 2 of Hoffmann et al. (2022) on (N, C, error) points grouped by model size.

Each size's points, sorted by compute, form its curve; its error at a budget C is interpolated
linearly in (log C, log error) between its two nearest points (no extrapolation beyond its own ends).

* Approach 1 (envelope): at log-spaced budgets, the size whose curve reaches the lowest error (budgets
  where that is the smallest or largest size reaching them are left out: the optimum may lie beyond).
* Approach 2 (IsoFLOP profiles): at each budget, error against log N over the sizes that reach it,
  a parabola fitted by least squares near the lowest error (that size and 3 either side); its
  vertex is the optimum only when the lowest observed error is not at the smallest or largest size
  tried, the parabola opens upward and its vertex lies inside the sizes fitted ("edge" otherwise:
  the optimum may lie beyond the sizes, and the profile is not used).

Both then fit log N* = a log C + const; a's interval is a percentile bootstrap (envelope: its
(C, N*) pairs resampled; IsoFLOP: each profile's points resampled and the parabolas refitted).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vitscale.scaling.fitting import Bootstrap, check_level, percentile_interval

BOOTSTRAP = Bootstrap(samples=200)  # the slope's interval: 200 resamples at 90%

#: The fewest sizes an IsoFLOP profile needs: three for a parabola (its minimum then must be the middle one).
MIN_SIZES = 3


def curves(N: Any, C: Any, error: Any) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """{size: (log C, log error) sorted by compute}, the mean error where a size has the same C twice."""
    N, C, e = (np.asarray(v, dtype=float) for v in (N, C, error))
    out = {}
    for n in np.unique(N):
        m = N == n
        lc, inv = np.unique(np.log(C[m]), return_inverse=True)
        le = np.bincount(inv, weights=np.log(e[m])) / np.bincount(inv)
        out[float(n)] = (lc, le)
    return out


def at_budget(curves_: dict[float, tuple[np.ndarray, np.ndarray]], C: float) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, errors) of the curves that reach budget C, each interpolated at C."""
    lc = np.log(C)
    ns, es = [], []
    for n, (x, y) in curves_.items():
        if x[0] <= lc <= x[-1]:
            ns.append(n)
            es.append(np.exp(np.interp(lc, x, y)))
    return np.array(ns), np.array(es)


def default_budgets(curves_: dict[float, tuple[np.ndarray, np.ndarray]], n: int = 24) -> np.ndarray:
    """n log-spaced budgets over the compute that curves cover."""
    lo = min(x[0] for x, _ in curves_.values())
    hi = max(x[-1] for x, _ in curves_.values())
    return np.exp(np.linspace(lo, hi, n + 2)[1:-1])


def profile(N: np.ndarray, e: np.ndarray, window: int = 3) -> dict[str, Any]:
    """Parabola of error in log N over the lowest-error size and up to `window` sizes either side
    (a parabola only describes the profile near its minimum); {"N_opt", "error_opt", "edge", "why",
    "coef", "fitted"} with "N_opt" None when the minimum is at an edge."""
    order = np.argsort(N)
    x, e = np.log(np.asarray(N, dtype=float)[order]), np.asarray(e, dtype=float)[order]
    i = int(np.argmin(e))
    lo, hi = max(i - window, 0), min(i + window + 1, len(x))
    if hi - lo < 3:
        lo, hi = max(0, min(lo, len(x) - 3)), max(hi, min(3, len(x)))
    out: dict[str, Any] = {"fitted": [float(np.exp(x[lo])), float(np.exp(x[hi - 1]))]}
    out |= {"N_opt": None, "error_opt": None, "edge": True}
    if np.unique(x[lo:hi]).size < 3:
        return out | {"coef": None, "why": "fewer than 3 distinct sizes near the minimum"}
    coef = np.polyfit(x[lo:hi], e[lo:hi], 2)
    out["coef"] = coef.tolist()
    if i in (0, len(x) - 1):
        return out | {"why": f"the lowest error is at the {'smallest' if i == 0 else 'largest'} size tried"}
    if coef[0] <= 0:
        return out | {"why": "the profile does not curve upward: no minimum"}
    v = -coef[1] / (2 * coef[0])
    if not x[lo] < v < x[hi - 1]:
        return out | {"why": "the parabola's minimum lies outside the sizes fitted"}
    return out | {"N_opt": float(np.exp(v)), "error_opt": float(np.polyval(coef, v)), "edge": False, "why": ""}


def _slope(logc: np.ndarray, logn: np.ndarray) -> tuple[float, float]:
    a, c = np.polyfit(logc, logn, 1)
    return float(a), float(c)


def envelope(N: Any, C: Any, error: Any, *, budgets: Any = None, boot: Bootstrap = BOOTSTRAP) -> dict[str, Any]:
    """Approach 1: the best size at each budget and a, the slope of log N* against log C (its interval: `boot`)."""
    check_level(boot.level)
    cv = curves(N, C, error)
    budgets = default_budgets(cv) if budgets is None else np.asarray(budgets, dtype=float)
    pts = []
    for c in budgets:
        ns, es = at_budget(cv, c)
        i = int(np.argmin(es)) if len(ns) >= 3 else -1
        if 0 <= i and ns.min() < ns[i] < ns.max():  # the best size at an edge may not be the best size
            pts.append((float(c), float(ns[i]), float(es[i])))
    out: dict[str, Any] = {"budgets": [p[0] for p in pts], "N_opt": [p[1] for p in pts], "error": [p[2] for p in pts]}
    if len(pts) < 3 or len({p[1] for p in pts}) < 2:
        return out | {"a": None, "interval": None, "note": "fewer than 3 budgets or a single best size: no slope"}
    lc, ln = np.log(out["budgets"]), np.log(out["N_opt"])
    a, c0 = _slope(lc, ln)
    rng = np.random.default_rng(boot.seed)
    slopes = []
    for _ in range(boot.samples):
        idx = rng.integers(0, len(lc), len(lc))
        if np.unique(lc[idx]).size >= 2:
            slopes.append(_slope(lc[idx], ln[idx])[0])
    interval = percentile_interval(np.array(slopes), boot.level) if slopes else None
    return out | {"a": a, "intercept": c0, "interval": interval}


def isoflop(N: Any, C: Any, error: Any, *, budgets: Any = None, boot: Bootstrap = BOOTSTRAP) -> dict[str, Any]:
    """Approach 2: a profile per budget (sizes, errors, parabola, optimum or the reason it is an edge)
    and a, the slope of log N* against log C over the profiles with an interior optimum (its interval: `boot`)."""
    check_level(boot.level)
    cv = curves(N, C, error)
    budgets = default_budgets(cv) if budgets is None else np.asarray(budgets, dtype=float)
    profiles = []
    for c in budgets:
        ns, es = at_budget(cv, c)
        if len(ns) < MIN_SIZES:
            profiles.append({"C": float(c), "N": ns.tolist(), "error": es.tolist(), "N_opt": None, "edge": None,
                             "why": f"only {len(ns)} size(s) reach this budget (need {MIN_SIZES})"})  # fmt: skip
            continue
        profiles.append({"C": float(c), "N": ns.tolist(), "error": es.tolist(), **profile(ns, es)})
    good = [p for p in profiles if p["N_opt"] is not None]
    out: dict[str, Any] = {"profiles": profiles, "budgets": [p["C"] for p in good], "N_opt": [p["N_opt"] for p in good]}
    out["edges"] = [p["C"] for p in profiles if p["edge"]]
    if len(good) < 2:
        return out | {"a": None, "interval": None, "note": f"{len(good)} profile(s) with an interior minimum: no slope"}
    a, c0 = _slope(np.log(out["budgets"]), np.log(out["N_opt"]))
    rng = np.random.default_rng(boot.seed)
    slopes = []
    for _ in range(boot.samples):
        lc, ln = [], []
        for p in good:
            ns, es = np.array(p["N"]), np.array(p["error"])
            idx = rng.integers(0, len(ns), len(ns))
            if np.unique(ns[idx]).size < 3:
                continue
            q = profile(ns[idx], es[idx])
            if q["N_opt"] is not None:
                lc.append(np.log(p["C"]))
                ln.append(np.log(q["N_opt"]))
        if len(set(lc)) >= 2:
            slopes.append(_slope(np.array(lc), np.array(ln))[0])
    interval = percentile_interval(np.array(slopes), boot.level) if slopes else None
    return out | {"a": a, "intercept": c0, "interval": interval}
