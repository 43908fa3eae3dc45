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
