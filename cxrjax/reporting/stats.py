"""Seed statistics for experiment grids: mean with a t confidence interval, Welch's and
the paired t-test, and Holm's correction for many comparisons.

Why these tests: each cell of a grid is trained with a handful of seeds (3 by default),
so the spread between seeds is the noise that a difference between two cells has to beat.

* Two cells whose networks differ (BatchNorm placement, dropout, channel order, model)
  get different initial weights from the same seed, so their runs are independent
  samples: we use **Welch's unequal-variance t-test** (no assumption that the two cells
  are equally noisy; a cell stuck at the majority-class rate has almost no spread while a
  learning cell has a lot).
* Two cells that train the *same* network and differ only in a training option (early
  stopping on/off) start from identical weights and see identical batches for a given
  seed, so run k of one cell is paired with run k of the other: we use the **paired
  t-test** on the per-seed differences, which removes the shared seed-to-seed noise.

Both are two-sided. Because a grid asks many questions at once, the report also gives
Holm-adjusted p-values (family-wise error control, valid under any dependence).

Degenerate cases are handled explicitly instead of returning NaN: when the standard
error of a difference is exactly zero (e.g. two cells that always predict the majority
class), an equal difference gives p = 1 and an unequal one p = 0 -- the difference is
then not noise at all. With fewer than two runs per side no test is possible (p = NaN).

Also Cramér's V, the association of two categorical variables (class and source in
evaluation's source probe).

scipy (a hard dependency of scikit-learn) provides the Student t distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _sps

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with a two-sided t confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    sd: float  # sample standard deviation (ddof=1); NaN when n < 2
    n: int

    @property
    def half_width(self) -> float:
        return self.high - self.mean


@dataclass(frozen=True)
class TestResult:
    """A two-sided test of ``mean(a) - mean(b) == 0``.

    ``diff`` is mean(a) - mean(b) (paired: mean of a_i - b_i, the same number for equal
    lengths); ``[ci_low, ci_high]`` its confidence interval; ``test`` is "welch" or
    "paired".
    """

    test: str
    diff: float
    t: float
    df: float
    p: float
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided critical value of Student's t with ``df`` degrees of freedom."""
    return float(_sps.t.ppf(0.5 + confidence / 2.0, df))


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and t-based confidence interval; non-finite values (failed runs) are dropped."""
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return MeanCI(nan, nan, nan, nan, 0)
    mean = float(x.mean())
    if n < 2:
        nan = float("nan")
        return MeanCI(mean, nan, nan, nan, n)
    sd = float(x.std(ddof=1))
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, sd, n)


def _two_sided(diff: float, se: float, df: float, confidence: float) -> tuple[float, float, float, float]:
    """(t, p, ci_low, ci_high) for an estimate ``diff`` with standard error ``se``."""
    if se == 0.0:
        t = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0.0 else 0.0
        return t, p, diff, diff
    t = diff / se
    p = float(2.0 * _sps.t.sf(abs(t), df))
    half = t_quantile(df, confidence) * se
    return t, p, diff - half, diff + half


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TestResult:
    """Welch's t-test with Welch-Satterthwaite degrees of freedom."""
    xa, xb = _clean(a), _clean(b)
    na, nb = int(xa.size), int(xb.size)
    nan = float("nan")
    if na < 2 or nb < 2:
        diff = float(xa.mean() - xb.mean()) if na and nb else nan
        return TestResult("welch", diff, nan, nan, nan, nan, nan, na, nb)
    va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
    diff = float(xa.mean() - xb.mean())
    se = float(math.sqrt(va + vb))
    if se == 0.0:
        df = float(na + nb - 2)
    else:
        df = float((va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)))
    t, p, lo, hi = _two_sided(diff, se, df, confidence)
    return TestResult("welch", diff, t, df, p, lo, hi, na, nb)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TestResult:
    """Paired t-test on ``a[i] - b[i]``; pairs with a non-finite member are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired_test needs equal lengths, got {len(a)} and {len(b)}")
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(xb)
    d = xa[keep] - xb[keep]
    n = int(d.size)
    nan = float("nan")
    if n < 2:
        diff = float(d.mean()) if n else nan
        return TestResult("paired", diff, nan, nan, nan, nan, nan, n, n)
    diff = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    t, p, lo, hi = _two_sided(diff, se, float(n - 1), confidence)
    return TestResult("paired", diff, t, float(n - 1), p, lo, hi, n, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def cramers_v(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cramér's V of two categorical variables (0: independent, 1: each determines the
    other), from their contingency table without bias correction; NaN when either has
    a single category or there are no observations."""
    a_codes = np.unique(np.asarray(a), return_inverse=True)[1].reshape(-1)
    b_codes = np.unique(np.asarray(b), return_inverse=True)[1].reshape(-1)
    n = a_codes.size
    if n == 0 or a_codes.max() == 0 or b_codes.max() == 0:
        return float("nan")
    table = np.zeros((a_codes.max() + 1, b_codes.max() + 1), np.float64)
    np.add.at(table, (a_codes, b_codes), 1.0)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (n * (min(table.shape) - 1)))
