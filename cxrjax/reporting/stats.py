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

Beside each t-test, a test that assumes no normality (Bouthillier et al., MLSys 2021,
"Accounting for variance in machine learning benchmarks", recommend reporting the
spread of a difference and the probability of improvement, not only a p-value):

* paired: the **exact sign-flip permutation test** of the mean per-seed difference
  (:func:`sign_flip_test`; all 2^n sign patterns, so its smallest possible p is
  2/2^n: 0.25 with 3 seeds, 0.002 with 10), a **percentile bootstrap** interval of the
  mean difference (:func:`bootstrap_mean_ci`) and the share of seeds on which A beats B
  (:func:`prob_improvement`);
* unpaired: the **two-sample permutation test** of the difference of means
  (:func:`permutation_test`), a bootstrap interval resampling each side
  (:func:`bootstrap_diff_ci`) and P(A > B) over all pairs of runs.

:func:`compare_runs` bundles them for one claim; the decision after Holm uses the
t-test's p (paired t for paired claims, Welch's for unpaired), the permutation p stands
beside it. Resampling is seeded, so a report is reproducible.

A claim of NO difference ("dropout alone changes nothing") is tested for equivalence
within a stated margin (:func:`equivalence_test`: two one-sided tests, TOST; Schuirmann,
J. Pharmacokinet. Biopharm. 1987), not by a difference test that fails to reject: a
non-significant difference is absence of evidence, and with few seeds it is the likely
outcome whatever the truth.

scipy (a hard dependency of scikit-learn) provides the Student t distribution.
"""

from __future__ import annotations

import functools
import itertools
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
    lengths); ``[ci_low, ci_high]`` its confidence interval; ``se`` its standard error
    (NaN below two runs a side); ``test`` is "welch" or "paired".
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
    se: float = float("nan")


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _finite_pairs(a: Sequence[float], b: Sequence[float], caller: str) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float arrays without the pairs that have a non-finite member
    (a failed run); ValueError naming ``caller`` when their lengths differ."""
    if len(a) != len(b):
        raise ValueError(f"{caller} needs equal lengths, got {len(a)} and {len(b)}")
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(xb)
    return xa[keep], xb[keep]


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
    return TestResult("welch", diff, t, df, p, lo, hi, na, nb, se)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TestResult:
    """Paired t-test on ``a[i] - b[i]``; pairs with a non-finite member are dropped."""
    xa, xb = _finite_pairs(a, b, "paired_test")
    d = xa - xb
    n = int(d.size)
    nan = float("nan")
    if n < 2:
        diff = float(d.mean()) if n else nan
        return TestResult("paired", diff, nan, nan, nan, nan, nan, n, n)
    diff = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    t, p, lo, hi = _two_sided(diff, se, float(n - 1), confidence)
    return TestResult("paired", diff, t, float(n - 1), p, lo, hi, n, n, se)


# --------------------------------------------------------------------------- resampling

# Exact enumeration up to these sizes (2^16 sign patterns; C(20, 10) = 184756 splits of
# two groups of 10 seeds), seeded Monte Carlo above them.
EXACT_SIGN_FLIP_MAX_N = 16
EXACT_PERMUTATION_MAX = 200_000
RESAMPLES = 10_000  # Monte Carlo permutations and bootstrap resamples
SEED = 0


@dataclass(frozen=True)
class PermutationResult:
    """A two-sided permutation test of a mean difference.

    ``p``: twice the smaller one-sided p (capped at 1; scipy's convention), counted over
    every arrangement when ``exact``, else over ``resamples`` seeded random ones with the
    observed one added (p = (k + 1) / (R + 1), never 0). ``floor``: the smallest p the
    test can give (exact sign flips: 2/2^n), below which no difference can go however
    large it is. ``arrangements``: how many were counted.
    """

    test: str  # "sign-flip" (paired) | "permutation" (two independent samples)
    p: float
    floor: float
    exact: bool
    arrangements: int
    n: int  # pairs (sign-flip) or runs in all (permutation)


def _permutation_p(null: np.ndarray, observed: float, exact: bool) -> float:
    """Two-sided p of ``observed`` against the ``null`` statistics (scipy's tolerance for
    ties: values within 100 ulps of the observed one count as at least as extreme)."""
    gamma = abs(observed) * 100 * np.finfo(np.float64).eps
    adjust = 0 if exact else 1
    greater = (np.count_nonzero(null >= observed - gamma) + adjust) / (null.size + adjust)
    less = (np.count_nonzero(null <= observed + gamma) + adjust) / (null.size + adjust)
    return float(min(1.0, 2.0 * min(greater, less)))


def sign_flip_test(
    d: Sequence[float],
    *,
    exact_max_n: int = EXACT_SIGN_FLIP_MAX_N,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PermutationResult:
    """Paired permutation test of ``mean(d) == 0`` for per-seed differences ``d``.

    Under the null hypothesis A and B are exchangeable within a seed, so every
    difference is as likely to have the other sign: the mean is compared with its value
    under all 2^n sign patterns (exact, for n <= ``exact_max_n``), else under
    ``resamples`` random ones drawn with ``seed``. Non-finite differences are dropped.
    """
    x = _clean(d)
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return PermutationResult("sign-flip", nan, nan, True, 0, 0)
    dist = _sign_flip_null(x, exact_max_n=exact_max_n, resamples=resamples, seed=seed)
    p = _permutation_p(dist.null, dist.observed, dist.exact)
    return PermutationResult("sign-flip", p, dist.floor, dist.exact, dist.null.size, n)


@dataclass(frozen=True)
class _Null:
    """A permutation test's statistic under the null (every arrangement when ``exact``),
    the observed value and the two-sided floor of its p."""

    null: np.ndarray
    observed: float
    exact: bool
    floor: float


def _sign_flip_null(
    x: np.ndarray, *, exact_max_n: int = EXACT_SIGN_FLIP_MAX_N, resamples: int = RESAMPLES, seed: int = SEED
) -> _Null:
    """The mean of ``x`` (finite, n >= 1) under all 2^n sign patterns, or ``resamples``
    random ones drawn with ``seed`` above ``exact_max_n``."""
    n = int(x.size)
    observed = float(x.mean())
    if n <= exact_max_n:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        return _Null(signs @ x / n, observed, True, 2.0 / 2**n)
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, n))
    return _Null(signs @ x / n, observed, False, max(2.0 / 2**n, 2.0 / (resamples + 1)))


@functools.lru_cache(maxsize=4)
def _combinations(n: int, k: int) -> np.ndarray:
    """Every k-subset of range(n) as rows of a read-only int array (cached: a report tests
    many pairs of cells with the same numbers of seeds)."""
    out = np.array(list(itertools.combinations(range(n), k)), dtype=np.intp).reshape(-1, k)
    out.setflags(write=False)
    return out


def permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    exact_max: int = EXACT_PERMUTATION_MAX,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PermutationResult:
    """Two-sample permutation test of ``mean(a) - mean(b) == 0`` (independent samples).

    Under the null hypothesis the labels A/B are exchangeable: the difference is compared
    with its value under every split of the pooled runs into groups of the same sizes
    (exact when there are at most ``exact_max`` splits), else under ``resamples`` random
    ones drawn with ``seed``. Non-finite values (failed runs) are dropped.
    """
    xa, xb = _clean(a), _clean(b)
    na, nb = int(xa.size), int(xb.size)
    n = na + nb
    if na == 0 or nb == 0:
        nan = float("nan")
        return PermutationResult("permutation", nan, nan, True, 0, n)
    dist = _two_sample_null(xa, xb, exact_max=exact_max, resamples=resamples, seed=seed)
    p = _permutation_p(dist.null, dist.observed, dist.exact)
    return PermutationResult("permutation", p, dist.floor, dist.exact, dist.null.size, n)


def _two_sample_null(
    xa: np.ndarray,
    xb: np.ndarray,
    *,
    exact_max: int = EXACT_PERMUTATION_MAX,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> _Null:
    """``mean(a) - mean(b)`` (finite, both non-empty) under every split of the pooled
    values into groups of their sizes, or ``resamples`` random ones above ``exact_max``."""
    na, nb = int(xa.size), int(xb.size)
    n = na + nb
    pooled = np.concatenate([xa, xb])
    total = float(pooled.sum())
    observed = float(xa.mean() - xb.mean())
    splits = math.comb(n, na)
    if splits <= exact_max:
        sums = pooled[_combinations(n, na)].sum(axis=1)
        return _Null(sums / na - (total - sums) / nb, observed, True, 2.0 / splits)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(pooled, (resamples, 1)), axis=1)
    null = perms[:, :na].mean(axis=1) - perms[:, na:].mean(axis=1)
    return _Null(null, observed, False, max(2.0 / splits, 2.0 / (resamples + 1)))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_mean_ci(
    d: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (e.g. per-seed differences):
    ``resamples`` resamples with replacement drawn with ``seed``. (NaN, NaN) below 2 values."""
    x = _clean(d)
    if x.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    return _percentiles(means, confidence)


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)`` for independent samples:
    each side resampled on its own. (NaN, NaN) with fewer than 2 values on a side."""
    xa, xb = _clean(a), _clean(b)
    if xa.size < 2 or xb.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ma = xa[rng.integers(0, xa.size, size=(resamples, xa.size))].mean(axis=1)
    mb = xb[rng.integers(0, xb.size, size=(resamples, xb.size))].mean(axis=1)
    return _percentiles(ma - mb, confidence)


def prob_improvement(a: Sequence[float], b: Sequence[float], *, paired: bool) -> float:
    """P(A > B), ties counted half. Paired: the share of seeds on which ``a[i] > b[i]``
    (pairs with a non-finite member dropped); unpaired: the share of all (a, b) pairs of
    runs with a > b (the AUC / common-language effect size). NaN without data."""
    if paired:
        xa, xb = _finite_pairs(a, b, "prob_improvement(paired=True)")
    else:
        xa, xb = _clean(a)[:, None], _clean(b)[None, :]
    wins = (xa > xb).astype(np.float64) + 0.5 * (xa == xb)
    return float(wins.mean()) if wins.size else float("nan")


@dataclass(frozen=True)
class Difference:
    """Everything said about ``A - B`` for one claim (:func:`compare_runs`).

    ``t_test``: the paired t-test (paired) or Welch's (unpaired); its ``p`` decides
    significance. ``permutation``: the sign-flip test (paired) or the two-sample
    permutation test (unpaired), beside it. ``[ci_low, ci_high]``: percentile bootstrap
    interval of the mean difference. ``prob_improvement``: P(A > B).
    """

    paired: bool
    t_test: TestResult
    permutation: PermutationResult
    ci_low: float
    ci_high: float
    prob_improvement: float

    @property
    def difference(self) -> float:
        return self.t_test.diff

    @property
    def p(self) -> float:
        return self.t_test.p

    @property
    def test(self) -> str:
        return self.t_test.test


def compare_runs(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Difference:
    """The tests of ``A - B`` for one claim. ``paired``: ``a[i]`` and ``b[i]`` come from the
    same seed of the same network (same initial weights and batches); pairs with a
    non-finite member are dropped. Unpaired: two independent samples (failed runs,
    non-finite, dropped on each side)."""
    if paired:
        xa, xb = _finite_pairs(a, b, "compare_runs(paired=True)")
        d = xa - xb
        low, high = bootstrap_mean_ci(d, resamples, seed, confidence)
        return Difference(
            paired=True,
            t_test=paired_test(xa, xb, confidence),
            permutation=sign_flip_test(d, resamples=resamples, seed=seed),
            ci_low=low,
            ci_high=high,
            prob_improvement=prob_improvement(xa, xb, paired=True),
        )
    low, high = bootstrap_diff_ci(a, b, resamples, seed, confidence)
    return Difference(
        paired=False,
        t_test=welch_test(a, b, confidence),
        permutation=permutation_test(a, b, resamples=resamples, seed=seed),
        ci_low=low,
        ci_high=high,
        prob_improvement=prob_improvement(a, b, paired=False),
    )


# --------------------------------------------------------------------------- equivalence

# A "no difference" claim (S4: "dropout alone changes nothing") is not supported by a
# difference test that fails to reject -- that is absence of evidence. It is tested as an
# equivalence: two one-sided tests (TOST; Schuirmann 1987) that the mean difference is
# above -margin and below +margin; p is the larger of the two one-sided p's.


@dataclass(frozen=True)
class Equivalence:
    """TOST of ``|mean(A - B)| < margin`` (:func:`equivalence_test`).

    ``p``: the larger one-sided p of the t-tests (paired t or Welch, as the difference
    test of the same claim) against ``diff <= -margin`` and ``diff >= +margin``.
    ``p_permutation``: the same with one-sided permutation tests (sign flips of the
    per-seed differences shifted by the margin; two-sample permutations of A shifted by
    the margin), whose floor is ``floor``. Small p: the difference lies within the margin.
    """

    margin: float
    p: float
    p_permutation: float
    floor: float
    test: str  # "paired" | "welch"


def _one_sided_p(null: np.ndarray, observed: float, exact: bool, *, greater: bool) -> float:
    """One-sided p of ``observed`` against ``null`` (ties as :func:`_permutation_p`)."""
    gamma = abs(observed) * 100 * np.finfo(np.float64).eps
    adjust = 0 if exact else 1
    hits = np.count_nonzero(null >= observed - gamma) if greater else np.count_nonzero(null <= observed + gamma)
    return float((hits + adjust) / (null.size + adjust))


def _one_sided_t(estimate: float, se: float, df: float) -> float:
    """p of ``estimate > 0`` with standard error ``se`` (se 0: 0 when positive, else 1)."""
    if se == 0.0:
        return 0.0 if estimate > 0.0 else 1.0
    return float(_sps.t.sf(estimate / se, df))


def equivalence_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool,
    margin: float,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Equivalence:
    """Two one-sided tests that ``-margin < mean(A - B) < margin`` (``margin`` > 0, in the
    units of A and B). Paired: on the per-seed differences (pairs with a non-finite member
    dropped); unpaired: Welch's standard error and degrees of freedom. NaN p's with fewer
    than two runs per side."""
    if not margin > 0:
        raise ValueError(f"equivalence_test needs a positive margin, got {margin!r}")
    if paired:
        xa, xb = _finite_pairs(a, b, "equivalence_test(paired=True)")
        test = paired_test(xa, xb)
    else:
        xa, xb = _clean(a), _clean(b)
        test = welch_test(xa, xb)
    if not math.isfinite(test.se):  # fewer than two runs on a side
        nan = float("nan")
        return Equivalence(margin, nan, nan, nan, test.test)
    if paired:
        lower = _sign_flip_null(xa - xb + margin, resamples=resamples, seed=seed)
        upper = _sign_flip_null(xa - xb - margin, resamples=resamples, seed=seed)
    else:
        lower = _two_sample_null(xa + margin, xb, resamples=resamples, seed=seed)
        upper = _two_sample_null(xa - margin, xb, resamples=resamples, seed=seed)
    p = max(_one_sided_t(test.diff + margin, test.se, test.df), _one_sided_t(margin - test.diff, test.se, test.df))
    p_perm = max(
        _one_sided_p(lower.null, lower.observed, lower.exact, greater=True),
        _one_sided_p(upper.null, upper.observed, upper.exact, greater=False),
    )
    return Equivalence(margin, p, p_perm, lower.floor / 2.0, test.test)


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


# ----------------------------------------------------------------------------------------
# Per-example statistics: predictions of one split
# ----------------------------------------------------------------------------------------
# A split's metrics are estimates from a finite sample of images: a 66-image test set
# (DP) carries about +-10 accuracy points. These functions give the interval of one run's
# metrics (stratified bootstrap) and compare two runs' predictions of the SAME examples
# (paired bootstrap, exact McNemar).
#
# The bootstrap is stratified by label: each resample draws, class by class, as many
# examples as the class has, with replacement, so every resample keeps the split's class
# counts (the design of a test set with fixed class sizes, and every class present for
# its ROC curve). The intervals are percentile intervals. A resample's metrics come from
# how many times it drew each example (a count matrix), computed for all resamples at
# once; they equal scikit-learn's accuracy_score, f1_score(average="macro") and
# roc_auc_score (one-vs-rest, macro over the classes with positives and negatives, as
# cxrjax.reporting.metrics.classification_report) on the resampled arrays
# (tests/reporting/test_example_stats.py checks it) -- 2,000 scikit-learn calls per
# metric would cost seconds per split at the end of every run.

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_METRICS = ("accuracy", "macro_f1", "roc_auc_ovr")
_CHUNK_CELLS = 2_000_000  # resamples x examples drawn at a time (memory bound)


def _labels_probs(labels: Sequence[int] | np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs must have shape [examples, classes] with {labels.shape[0]} examples, got {probs.shape}"
        )
    return labels, probs


def stratified_counts(labels: np.ndarray, resamples: int, rng: np.random.Generator):
    """Chunks of float64 [r, N]: how often each resample drew each example, class by class
    with replacement (``sum(chunk, 1) == N``, per class the class's size)."""
    labels = np.asarray(labels, np.int64)
    n = labels.shape[0]
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        draws = np.concatenate([g[rng.integers(0, len(g), size=(r, len(g)))] for g in groups], axis=1)
        flat = (np.arange(r)[:, None] * n + draws).ravel()
        yield np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def _weighted_auc(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row of example weights [r, N] (Mann-Whitney with ties as 1/2)."""
    values, inverse = np.unique(scores, return_inverse=True)
    u = len(values)
    r = weights.shape[0]

    def per_value(mask: np.ndarray) -> np.ndarray:  # [r, u]: weight of the masked examples at each score value
        idx = (np.arange(r)[:, None] * u + inverse[mask][None, :]).ravel()
        return np.bincount(idx, weights=weights[:, mask].ravel(), minlength=r * u).reshape(r, u)

    pos, neg = per_value(positive), per_value(~positive)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each score value
    wins = np.sum(pos * (below + 0.5 * neg), axis=1)
    return wins / (pos.sum(axis=1) * neg.sum(axis=1))


def _weighted_metrics(weights: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, macro-F1 and one-vs-rest macro ROC-AUC (NaN: no class has both positives
    and negatives) of each row of example weights [r, N]."""
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    total = weights.sum(axis=1)
    out = {"accuracy": weights @ (preds == labels).astype(np.float64) / total}
    f1 = []
    for c in range(k):
        tp = weights @ ((labels == c) & (preds == c)).astype(np.float64)
        fp = weights @ ((labels != c) & (preds == c)).astype(np.float64)
        fn = weights @ ((labels == c) & (preds != c)).astype(np.float64)
        denominator = 2 * tp + fp + fn
        f1.append(np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0))
    out["macro_f1"] = np.mean(f1, axis=0)
    aucs = [
        _weighted_auc(weights, labels == c, probs[:, c])
        for c in range(k)
        if (labels == c).any() and (labels != c).any()
    ]
    out["roc_auc_ovr"] = np.mean(aucs, axis=0) if aucs else np.full(weights.shape[0], np.nan)
    return out


def split_metrics(labels: Sequence[int] | np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """accuracy, macro_f1, roc_auc_ovr of the whole split (what the bootstrap resamples)."""
    labels, probs = _labels_probs(labels, probs)
    values = _weighted_metrics(np.ones((1, labels.shape[0])), labels, probs)
    return {name: (float(v[0]) if np.isfinite(v[0]) else None) for name, v in values.items()}


def _percentile(values: np.ndarray, confidence: float) -> tuple[list[float] | None, int]:
    """([low, high] percentile interval of the finite values or None, number skipped)."""
    finite = values[np.isfinite(values)]
    skipped = int(values.size - finite.size)
    if not finite.size:
        return None, skipped
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return [float(low), float(high)], skipped


def bootstrap_ci(
    labels: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, object]:
    """Stratified percentile bootstrap intervals of accuracy, macro-F1 and ROC-AUC (ovr):

    ``{"accuracy": [lo, hi], "macro_f1": [lo, hi], "roc_auc_ovr": [lo, hi] or None,
    "resamples", "seed", "confidence", "skipped_resamples": {metric: n}}``. A resample
    whose ROC-AUC is undefined (no class with both positives and negatives) is skipped
    for that metric and counted; an interval with no defined resample is None.
    """
    labels, probs = _labels_probs(labels, probs)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not labels.shape[0]:
        raise ValueError("bootstrap_ci needs at least one example")
    rng = np.random.default_rng(seed)
    chunks = [_weighted_metrics(c, labels, probs) for c in stratified_counts(labels, resamples, rng)]
    out: dict[str, object] = {}
    skipped = {}
    for name in BOOTSTRAP_METRICS:
        out[name], skipped[name] = _percentile(np.concatenate([c[name] for c in chunks]), confidence)
    settings = {"resamples": int(resamples), "seed": int(seed), "confidence": confidence}
    return {**out, **settings, "skipped_resamples": skipped}


def paired_bootstrap(
    labels: Sequence[int] | np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, object]:
    """Two runs' predictions of the same examples: per metric (:data:`BOOTSTRAP_METRICS`)
    ``{"a", "b", "difference" (a - b), "ci": [lo, hi] of the difference}``, every
    resample drawing the same examples for both (stratified as :func:`bootstrap_ci`), so
    what the two runs share (the hard and the easy images) cancels out of the interval."""
    labels, probs_a = _labels_probs(labels, probs_a)
    _, probs_b = _labels_probs(labels, probs_b)
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"paired_bootstrap: probabilities of different shapes {probs_a.shape} and {probs_b.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in BOOTSTRAP_METRICS}
    for counts in stratified_counts(labels, resamples, rng):
        a, b = _weighted_metrics(counts, labels, probs_a), _weighted_metrics(counts, labels, probs_b)
        for name in BOOTSTRAP_METRICS:
            diffs[name].append(a[name] - b[name])
    point_a, point_b = split_metrics(labels, probs_a), split_metrics(labels, probs_b)
    out: dict[str, object] = {}
    for name in BOOTSTRAP_METRICS:
        ci, skipped = _percentile(np.concatenate(diffs[name]), confidence)
        a, b = point_a[name], point_b[name]
        diff = None if a is None or b is None else a - b
        out[name] = {"a": a, "b": b, "difference": diff, "ci": ci, "skipped_resamples": skipped}
    return {**out, "resamples": int(resamples), "seed": int(seed), "confidence": confidence}


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two classifiers on the same examples: ``b`` examples only A
    got right, ``c`` only B got right; ``p`` two-sided, binomial(b + c, 1/2) on b."""

    b: int
    c: int
    p: float
    n: int  # examples compared

    def to_dict(self) -> dict[str, object]:
        return {"a_right_b_wrong": self.b, "a_wrong_b_right": self.c, "p": self.p, "examples": self.n}


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemar:
    """Exact (binomial) McNemar test on the discordant pairs; no discordant pair: p = 1."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b_.shape:
        raise ValueError(f"mcnemar_exact needs equal lengths, got {a.shape[0]} and {b_.shape[0]}")
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    p = 1.0 if b + c == 0 else float(min(1.0, 2.0 * _sps.binom.cdf(min(b, c), b + c, 0.5)))
    return McNemar(b=b, c=c, p=p, n=int(a.size))


def format_interval(name: str, value: float | None, ci: Sequence[float] | None, n: int | None = None) -> str:
    """``accuracy 0.833 [0.742, 0.909] (n=66: +-8.4 points)``: a metric, its interval and
    the interval's half-width in percentage points, so a small split's noise is shown
    with its number."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{name} n/a"
    text = f"{name} {value:.3f}"
    if ci is not None:
        half = 100.0 * (ci[1] - ci[0]) / 2.0
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}] ({'' if n is None else f'n={n}: '}+-{half:.1f} points)"
    return text
