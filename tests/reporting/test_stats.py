"""cxrjax.reporting.stats against values computed by hand (closed forms of Student's t)."""

import math

import pytest

from cxrjax.reporting import stats

T975_DF2 = 4.302652729911275  # two-sided 95% critical value, 2 degrees of freedom (tables)


def test_mean_ci_hand_computed():
    m = stats.mean_ci([0.8, 0.9, 0.85])
    # mean 0.85; sd = sqrt((0.05^2 + 0.05^2 + 0) / 2) = 0.05; half = t * sd / sqrt(3)
    half = T975_DF2 * 0.05 / math.sqrt(3)
    assert m.n == 3
    assert m.mean == pytest.approx(0.85)
    assert m.sd == pytest.approx(0.05)
    assert (m.low, m.high) == (pytest.approx(0.85 - half), pytest.approx(0.85 + half))
    assert m.half_width == pytest.approx(0.124207, abs=1e-6)


def test_mean_ci_drops_failed_runs_and_single_run_has_no_interval():
    m = stats.mean_ci([0.5, float("nan")])
    assert m.n == 1 and m.mean == 0.5 and math.isnan(m.low) and math.isnan(m.sd)
    assert stats.mean_ci([]).n == 0


def test_welch_df2_closed_form():
    # b has zero variance, so Welch's df = n_a - 1 = 2, where the t CDF has a closed form:
    # two-sided p = 1 - |t| / sqrt(2 + t^2).
    r = stats.welch_test([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    t = -3.0 / math.sqrt(1.0 / 3.0)
    assert r.test == "welch"
    assert r.diff == pytest.approx(-3.0)
    assert r.t == pytest.approx(t)
    assert r.df == pytest.approx(2.0)
    assert r.p == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))
    assert r.p == pytest.approx(0.035098, abs=1e-6)
    half = T975_DF2 * math.sqrt(1.0 / 3.0)
    assert (r.ci_low, r.ci_high) == (pytest.approx(-3 - half), pytest.approx(-3 + half))


def test_welch_satterthwaite_df_and_scipy_agree():
    from scipy.stats import ttest_ind

    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]
    r = stats.welch_test(a, b)
    va, vb = 1.0 / 3, (5.0 / 3) / 4  # var/n for each group
    assert r.t == pytest.approx(-3.5 / math.sqrt(va + vb))
    assert r.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 3))
    assert r.df == pytest.approx(4.959, abs=1e-3)
    assert r.p == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)


def test_paired_closed_form():
    # differences 0.05, 0.02, 0.05: mean 0.04, sd sqrt(0.0003), se 0.01, t = 4, df = 2
    r = stats.paired_test([0.90, 0.80, 0.85], [0.85, 0.78, 0.80])
    assert r.test == "paired"
    assert r.diff == pytest.approx(0.04)
    assert r.t == pytest.approx(4.0)
    assert r.df == 2
    assert r.p == pytest.approx(1 - 4 / math.sqrt(18))
    assert (r.ci_low, r.ci_high) == (pytest.approx(0.04 - T975_DF2 * 0.01), pytest.approx(0.04 + T975_DF2 * 0.01))


def test_degenerate_cases_are_decided_not_nan():
    same = stats.welch_test([0.25, 0.25, 0.25], [0.25, 0.25, 0.25])
    assert same.p == 1.0 and same.t == 0.0
    apart = stats.welch_test([0.25, 0.25, 0.25], [0.30, 0.30, 0.30])
    assert apart.p == 0.0 and apart.t == -math.inf
    assert stats.paired_test([0.5, 0.6], [0.5, 0.6]).p == 1.0
    assert math.isnan(stats.welch_test([0.5], [0.6, 0.7]).p)
    with pytest.raises(ValueError):
        stats.paired_test([0.1, 0.2], [0.1])


def test_holm_adjustment():
    adj = stats.holm([0.01, 0.04, 0.03, float("nan")])
    # sorted 0.01, 0.03, 0.04 over m = 3 tests: 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert adj[:3] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    assert math.isnan(adj[3])


def test_cramers_v_hand_computed_and_against_scipy():
    import numpy as np
    from scipy.stats.contingency import association

    # 2x2 table [[3, 1], [1, 3]]: phi = (3*3 - 1*1) / sqrt(4 * 4 * 4 * 4) = 0.5 = V
    a = [0, 0, 0, 0, 1, 1, 1, 1]
    b = ["x", "x", "x", "y", "x", "y", "y", "y"]
    assert stats.cramers_v(a, b) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 200), rng.integers(0, 4, 200)
    table = np.zeros((3, 4), np.int64)
    np.add.at(table, (a, b), 1)
    assert stats.cramers_v(a, b) == pytest.approx(association(table, method="cramer", correction=False))
    assert stats.cramers_v(a, a) == pytest.approx(1.0)
    assert math.isnan(stats.cramers_v([1, 1, 1], [0, 1, 2]))


# ---------------------------------------------------------------- resampling tests


def test_sign_flip_exact_n3_floor_and_hand_count():
    # d = (1, 2, 3): mean 2 is the largest of the 8 sign patterns' means, and only its
    # full flip reaches -2, so p = 2/8 = 0.25, which is also the floor 2/2^3.
    r = stats.sign_flip_test([1.0, 2.0, 3.0])
    assert (r.exact, r.arrangements, r.n) == (True, 8, 3)
    assert r.p == pytest.approx(0.25) and r.floor == pytest.approx(0.25)
    # d = (1, 2, -3): mean 0; every pattern is at least as extreme -> p = 1
    assert stats.sign_flip_test([1.0, 2.0, -3.0]).p == pytest.approx(1.0)
    # d = (3, 1, -1): the 8 sign patterns' sums +-3 +-1 +-1 are 5, 3, 3, 1, -1, -3, -3, -5;
    # observed sum 3; at least 3: {5, 3, 3} = 3/8 -> p = 2 * 3/8 = 0.75
    assert stats.sign_flip_test([3.0, 1.0, -1.0]).p == pytest.approx(0.75)
    # d = (3, 2, 1, -1): sums 5 observed; >= 5 among 16: 7 (3+2+1+1), 5 (3+2+1-1), 5 (3+2-1+1) = 3/16
    assert stats.sign_flip_test([3.0, 2.0, 1.0, -1.0]).p == pytest.approx(2 * 3 / 16)


@pytest.mark.parametrize("d", [[0.02, 0.05, -0.01, 0.04, 0.03], [0.1, -0.2, 0.05, 0.07, 0.0, 0.01]])
def test_sign_flip_matches_scipy_paired_permutation(d):
    import numpy as np
    from scipy.stats import permutation_test

    a = np.asarray(d) + 0.5
    b = np.full(len(d), 0.5)
    ref = permutation_test(
        (a, b), lambda x, y: np.mean(x - y), permutation_type="samples", n_resamples=np.inf, vectorized=False
    )
    assert stats.sign_flip_test(d).p == pytest.approx(ref.pvalue)


def test_sign_flip_monte_carlo_above_the_exact_limit_is_seeded():
    d = [0.01 * (i % 5 - 1) for i in range(20)]
    r = stats.sign_flip_test(d, exact_max_n=16, resamples=2000, seed=3)
    assert not r.exact and r.arrangements == 2000
    assert r.floor == pytest.approx(2 / 2001)
    assert r.p == stats.sign_flip_test(d, exact_max_n=16, resamples=2000, seed=3).p
    exact = stats.sign_flip_test(d, exact_max_n=20)
    assert exact.exact and r.p == pytest.approx(exact.p, abs=0.03)


@pytest.mark.parametrize(
    "a, b", [([0.8, 0.9, 0.85], [0.5, 0.6, 0.55, 0.7]), ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 3.0, 8.0, 9.0, 10.0])]
)
def test_permutation_test_matches_scipy_exact(a, b):
    import numpy as np
    from scipy.stats import permutation_test

    ref = permutation_test(
        (a, b), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent", n_resamples=np.inf
    )
    r = stats.permutation_test(a, b)
    assert r.exact and r.arrangements == math.comb(len(a) + len(b), len(a))
    assert r.p == pytest.approx(ref.pvalue)


def test_permutation_test_hand_counted_and_floor():
    # a = (3, 4), b = (1, 2): 6 splits; the observed split gives the largest difference
    # (+2) and its mirror the smallest (-2): p = 2 * 1/6, the floor 2/C(4, 2).
    r = stats.permutation_test([3.0, 4.0], [1.0, 2.0])
    assert r.p == pytest.approx(1 / 3) and r.floor == pytest.approx(1 / 3)
    mc = stats.permutation_test([3.0, 4.0], [1.0, 2.0], exact_max=1, resamples=4000, seed=1)
    assert not mc.exact and mc.p == pytest.approx(1 / 3, abs=0.05)


def test_bootstrap_mean_ci_hand_cases_and_scipy():
    import numpy as np
    from scipy.stats import bootstrap

    assert stats.bootstrap_mean_ci([0.1, 0.1, 0.1]) == (pytest.approx(0.1), pytest.approx(0.1))
    assert all(math.isnan(x) for x in stats.bootstrap_mean_ci([0.1]))
    d = [0.02, 0.05, -0.01, 0.04, 0.03, 0.06, 0.00, 0.02, 0.05, 0.01]
    low, high = stats.bootstrap_mean_ci(d, resamples=20000, seed=0)
    assert (low, high) == stats.bootstrap_mean_ci(d, resamples=20000, seed=0)  # seeded
    ref = bootstrap((d,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(1))
    assert low == pytest.approx(ref.confidence_interval.low, abs=2e-3)
    assert high == pytest.approx(ref.confidence_interval.high, abs=2e-3)
    assert low < np.mean(d) < high


def test_bootstrap_diff_ci_brackets_the_difference():
    a, b = [0.8, 0.82, 0.79, 0.85], [0.6, 0.62, 0.58]
    low, high = stats.bootstrap_diff_ci(a, b)
    diff = sum(a) / 4 - sum(b) / 3
    assert low < diff < high
    # the extremes of the resampled means bound the interval
    assert low >= min(a) - max(b) and high <= max(a) - min(b)


def test_prob_improvement_paired_and_unpaired():
    # paired: seeds 0..3 -> a wins, tie, loses, wins -> (1 + 0.5 + 0 + 1) / 4
    assert stats.prob_improvement([2, 1, 0, 3], [1, 1, 1, 2], paired=True) == pytest.approx(0.625)
    # unpaired: a = (1, 3), b = (2, 3): pairs (1,2) 0, (1,3) 0, (3,2) 1, (3,3) 0.5 -> 1.5 / 4
    assert stats.prob_improvement([1, 3], [2, 3], paired=False) == pytest.approx(0.375)
    assert stats.prob_improvement([1, float("nan")], [0, 5], paired=True) == 1.0  # nan pair dropped
    with pytest.raises(ValueError):
        stats.prob_improvement([1, 2], [1], paired=True)


def test_compare_runs_paired_uses_ttest_rel_and_sign_flip():
    from scipy.stats import ttest_rel

    a = [0.90, 0.80, 0.85, 0.88, float("nan")]
    b = [0.85, 0.78, 0.80, 0.86, 0.70]
    r = stats.compare_runs(a, b, paired=True)
    assert r.paired and r.test == "paired"
    assert r.p == pytest.approx(ttest_rel(a[:4], b[:4]).pvalue)
    assert r.difference == pytest.approx(0.035)
    assert r.permutation.test == "sign-flip" and r.permutation.p == pytest.approx(2 / 16)  # all 4 positive
    assert r.permutation.floor == pytest.approx(2 / 16)
    assert r.prob_improvement == 1.0
    assert r.ci_low <= r.difference <= r.ci_high


def test_compare_runs_unpaired_uses_welch_and_permutation():
    from scipy.stats import ttest_ind

    a, b = [0.8, 0.9, 0.85], [0.5, 0.6, 0.55, 0.7]
    r = stats.compare_runs(a, b, paired=False)
    assert not r.paired and r.test == "welch"
    assert r.p == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert r.permutation.test == "permutation" and r.permutation.p == pytest.approx(2 / 35)
    assert r.prob_improvement == 1.0


# ------------------------------------------------------------------------- equivalence
def test_equivalence_paired_matches_two_one_sided_scipy_tests():
    from scipy import stats as sps

    a = [0.61, 0.55, 0.70, 0.58, 0.66, 0.52]
    b = [0.60, 0.57, 0.66, 0.59, 0.63, 0.55]
    d = [x - y for x, y in zip(a, b, strict=True)]
    for margin in (0.02, 0.05, 0.1):
        e = stats.equivalence_test(a, b, paired=True, margin=margin)
        lower = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = sps.ttest_1samp(d, margin, alternative="less").pvalue
        assert (e.test, e.margin) == ("paired", margin)
        assert e.p == pytest.approx(max(lower, upper), rel=1e-9)
        # permutation TOST: one-sided exact sign-flip tests of d + margin > 0 and d - margin < 0
        shifted = [[x + margin for x in d], [x - margin for x in d]]
        perm = [
            sps.permutation_test((s,), lambda x: x.mean(), permutation_type="samples", alternative=alt).pvalue
            for s, alt in zip(shifted, ("greater", "less"), strict=True)
        ]
        assert e.p_permutation == pytest.approx(max(perm))
        assert e.floor == pytest.approx(1 / 2**6)
    # the wider the margin, the stronger the evidence of equivalence
    ps = [stats.equivalence_test(a, b, paired=True, margin=m).p for m in (0.02, 0.05, 0.1)]
    assert ps[0] > 0.05 > ps[1] > ps[2]


def test_equivalence_welch_matches_scipy_and_degenerate_cases():
    from scipy import stats as sps

    a, b = [0.50, 0.56, 0.53, 0.61], [0.49, 0.52, 0.57]
    e = stats.equivalence_test(a, b, paired=False, margin=0.08)
    lower = sps.ttest_ind([x + 0.08 for x in a], b, equal_var=False, alternative="greater").pvalue
    upper = sps.ttest_ind([x - 0.08 for x in a], b, equal_var=False, alternative="less").pvalue
    assert e.test == "welch" and e.p == pytest.approx(max(lower, upper), rel=1e-9)
    perm = [
        sps.permutation_test(
            ([x + s for x in a], b), lambda x, y: x.mean() - y.mean(), permutation_type="independent", alternative=alt
        ).pvalue
        for s, alt in ((0.08, "greater"), (-0.08, "less"))
    ]
    assert e.p_permutation == pytest.approx(max(perm))
    # Two cells stuck at the majority rate in every seed: exactly equal, so equivalent for
    # any margin (p 0), while the difference test says p = 1; equal but shifted by more
    # than the margin: not equivalent (p 1).
    same = stats.equivalence_test([0.25] * 5, [0.25] * 5, paired=True, margin=0.05)
    assert same.p == 0.0 and same.p_permutation == pytest.approx(1 / 32)
    assert stats.compare_runs([0.25] * 5, [0.25] * 5, paired=True).p == 1.0
    assert stats.equivalence_test([0.35] * 5, [0.25] * 5, paired=True, margin=0.05).p == 1.0
    assert math.isnan(stats.equivalence_test([0.5], [0.4], paired=True, margin=0.05).p)
    assert math.isnan(stats.equivalence_test([0.5, 0.6], [0.4], paired=False, margin=0.05).p)
    with pytest.raises(ValueError, match="positive margin"):
        stats.equivalence_test(a, b, paired=False, margin=0.0)
