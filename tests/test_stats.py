"""bench.reports.stats and bench.reports.cd_diagram against hand-worked numbers and published tables."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from bench.reports.cd_diagram import cd_figure
from bench.reports.stats import (
    benjamini_hochberg,
    friedman,
    holm,
    mde,
    mde_sd_units,
    nemenyi_groups,
    nemenyi_q,
    paired_difference,
    seeds_needed,
    tost_paired,
    verdict,
)

# d = first - second on the shared seeds 0..3 = [0.5, 1.0, 2.0, 0.5]: mean 1, sd sqrt(0.5); seed 9 is not shared
FIRST = {0: 1.0, 1: 2.0, 2: 4.0, 3: 3.5}
SECOND = {0: 0.5, 1: 1.0, 2: 2.0, 3: 3.0, 9: 7.0}
# two nearly equal series: d = [-0.01, 0.03, -0.02, 0.02, -0.04], mean -0.004, sd ~0.029
CLOSE_A = {0: 80.00, 1: 80.05, 2: 79.97, 3: 80.02, 4: 79.99}
CLOSE_B = {0: 80.01, 1: 80.02, 2: 79.99, 3: 80.00, 4: 80.03}


def test_holm_hand_worked():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, None, 0.04, 0.03, 0.005]) == pytest.approx([0.03, None, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([None, None]) == [None, None]
    with pytest.raises(ValueError):
        holm([0.1, float("nan")])


def test_benjamini_hochberg_hand_worked():
    # sorted 0.02, 0.03, 0.04, 0.2 (m = 4) -> m p / i = 0.08, 0.06, 0.0533, 0.2 -> min from the top: .0533 .0533 .0533 .2
    q = benjamini_hochberg([0.02, None, 0.03, 0.2, 0.04])
    assert q == pytest.approx([0.16 / 3, None, 0.16 / 3, 0.2, 0.16 / 3])
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([None]) == [None]


def test_paired_difference_by_hand():
    result = paired_difference(FIRST, SECOND)
    n, mean, sd = 4, 1.0, math.sqrt(0.5)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)  # t_{0.975,3} = 3.1824
    assert (result.n, result.mean, result.sd) == (n, pytest.approx(mean), pytest.approx(sd))
    assert (result.ci_low, result.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert result.ci_low == pytest.approx(-0.1252, abs=1e-4) and result.ci_high == pytest.approx(2.1252, abs=1e-4)
    assert result.p == pytest.approx(2 * stats.t.sf(mean / (sd / math.sqrt(n)), n - 1))
    assert result.p == pytest.approx(stats.ttest_rel([1.0, 2.0, 4.0, 3.5], [0.5, 1.0, 2.0, 3.0]).pvalue)
    narrow = paired_difference(FIRST, SECOND, level=0.5)
    assert narrow.ci_high - narrow.ci_low < result.ci_high - result.ci_low


def test_paired_difference_degenerate_and_too_few():
    constant = paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert (constant.sd, constant.ci_low, constant.ci_high, constant.p) == (0.0, 1.0, 1.0, 0.0)
    assert paired_difference({0: 2.0, 1: 3.0}, {0: 2.0, 1: 3.0}).p == 1.0
    assert paired_difference({0: 2.0, 1: 3.0}, {1: 2.0, 2: 3.0}) is None


def test_tost_by_hand_and_equivalence():
    d = [0.5, 1.0, 2.0, 0.5]
    expected = max(
        stats.ttest_1samp(d, -3.0, alternative="greater").pvalue, stats.ttest_1samp(d, 3.0, alternative="less").pvalue
    )
    assert tost_paired(FIRST, SECOND, 3.0) == pytest.approx(expected)
    assert tost_paired(CLOSE_A, CLOSE_B, 0.5) < 0.001  # equal with small noise: equivalent at a wide margin
    assert tost_paired(CLOSE_A, CLOSE_B, 0.01) > 0.05  # not at a margin below the noise
    shifted = {s: v - 5.0 + (0.1 if s % 2 else -0.1) for s, v in CLOSE_A.items()}
    for margin in (0.5, 1.0, 4.0):
        assert tost_paired(CLOSE_A, shifted, margin) > 0.5  # a large shift is never equivalent
    assert tost_paired({0: 1.0, 1: 2.0}, {0: 0.875, 1: 1.875}, 0.2) == 0.0  # sd 0, |mean| < margin
    assert tost_paired({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5}, 0.2) == 1.0
    assert tost_paired({0: 1.0}, {0: 1.0}, 0.2) is None


def test_mde_exact_noncentral_t():
    # exact two-sided noncentral-t MDE; the audit quoted 3.26, 1.68, 1.00 (these, rounded)
    assert mde_sd_units(3) == pytest.approx(3.264, abs=0.01)
    assert mde_sd_units(5) == pytest.approx(1.682, abs=0.01)
    assert mde_sd_units(10) == pytest.approx(0.996, abs=0.01)
    assert mde(0.5, 5) == pytest.approx(0.5 * mde_sd_units(5))
    # at the MDE the power is the target: P(|T'| > t*) with T' noncentral t, df = n - 1, nc = sqrt(n) mde
    # (both tails counted: at a power near alpha the opposite tail matters)
    n, t_crit = 5, stats.t.ppf(0.975, 4)
    for power in (0.8, 0.1):
        nc = math.sqrt(n) * mde_sd_units(n, power=power)
        assert stats.nct.sf(t_crit, n - 1, nc) + stats.nct.cdf(-t_crit, n - 1, nc) == pytest.approx(power, abs=1e-6)
    assert mde_sd_units(5, power=0.9) > mde_sd_units(5) > mde_sd_units(5, alpha=0.1)
    with pytest.raises(ValueError):
        mde_sd_units(1)


def test_seeds_needed_monotone_and_cap():
    assert seeds_needed(1.0, 1.7) == (5, True)  # mde(1, 4) ~ 2.1 > 1.7 >= mde(1, 5) ~ 1.68
    assert seeds_needed(1.0, 10.0) == (3, True)  # never below the minimum
    assert seeds_needed(1.0, 0.5) == (10, False)  # even 10 seeds only reach ~1.0
    assert seeds_needed(1.0, 0.5, cap=40)[1] is True
    needed = [seeds_needed(1.0, margin)[0] for margin in (4.0, 3.0, 2.0, 1.5, 1.2, 1.0, 0.9)]
    assert needed == sorted(needed) and needed[0] == 3 and needed[-1] == 10


SCORES = {
    "a": {"c1": 0.9, "c2": 0.8, "c3": 0.7, "c4": 0.95, "extra": 1.0},  # "extra" is not shared: dropped
    "b": {"c1": 0.8, "c2": 0.8, "c3": 0.6, "c4": 0.90},
    "c": {"c1": 0.7, "c2": 0.6, "c3": 0.65, "c4": 0.85},
}


def test_friedman_ranks_statistic_and_cd():
    result = friedman(SCORES)
    # ranks per column (1 = best): c1 a1 b2 c3; c2 a1.5 b1.5 c3 (tie); c3 a1 c2 b3; c4 a1 b2 c3
    assert result.mean_ranks == pytest.approx({"a": 1.125, "b": 2.125, "c": 2.75})
    assert (result.n_columns, result.n_methods) == (4, 3)
    columns = ["c1", "c2", "c3", "c4"]
    scipy_result = stats.friedmanchisquare(*([SCORES[m][c] for c in columns] for m in "abc"))
    assert result.statistic == pytest.approx(scipy_result.statistic)
    assert result.p == pytest.approx(scipy_result.pvalue)
    # by hand: 12N/(k(k+1)) (sum R^2 - k(k+1)^2/4) = 5.375, over the tie correction 1 - 6/(4*24) = 0.9375
    assert result.statistic == pytest.approx(5.375 / 0.9375)
    assert result.cd == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), abs=0.002)
    lower = friedman(SCORES, higher_is_better=False)
    assert lower.mean_ranks == pytest.approx({"a": 2.875, "b": 1.875, "c": 1.25})
    assert lower.statistic == pytest.approx(result.statistic)


def test_friedman_needs_three_methods():
    with pytest.raises(ValueError, match="at least 3 methods"):
        friedman({"a": SCORES["a"], "b": SCORES["b"]})
    with pytest.raises(ValueError, match="no column"):
        friedman({"a": {"x": 1.0}, "b": {"y": 1.0}, "c": {"x": 2.0}})


def test_nemenyi_q_matches_demsar_table_5():
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]  # k = 2..10, alpha = 0.05
    for k, q in zip(range(2, 11), table):
        assert nemenyi_q(k) == pytest.approx(q, abs=0.002), k


def test_nemenyi_groups():
    ranks = {"e": 5.0, "a": 1.0, "c": 2.9, "b": 1.5, "d": 3.2}
    # from a: b, c within 2 (d at 2.2 is not); from b: c, d; from c: c, d (inside b's); from d: e
    assert nemenyi_groups(ranks, 2.0) == [["a", "b", "c"], ["b", "c", "d"], ["d", "e"]]
    assert nemenyi_groups({"x": 1.0, "y": 4.0, "z": 4.5}, 1.0) == [["x"], ["y", "z"]]
    assert nemenyi_groups({"x": 1.0, "y": 3.0}, 2.0) == [["x"], ["y"]]  # a difference of exactly CD separates
    assert nemenyi_groups({"x": 1.0, "y": 2.0, "z": 3.0}, 5.0) == [["x", "y", "z"]]


def test_verdict():
    best = {0: 80.0, 1: 81.0, 2: 82.0, 3: 80.5}
    worse = {s: v - 5.0 + (0.2 if s % 2 else -0.2) for s, v in best.items()}
    close = {s: v + (0.02 if s % 2 else -0.03) for s, v in best.items()}
    noisy = {s: v + (1.5 if s % 2 else -1.0) for s, v in best.items()}
    assert verdict(best, worse, 0.001, margin=0.5) == "worse"
    assert verdict(best, close, 0.8, margin=0.5) == "equivalent"
    assert verdict(best, close, 0.01, margin=0.5) == "worse"  # separated beats equivalent
    assert verdict(best, noisy, 0.9, margin=0.5) == "inconclusive"  # not separated, yet not equal either
    assert verdict(best, close, None, margin=0.5) == "equivalent"
    assert verdict(best, {0: 80.0, 7: 1.0}, None, margin=0.5) == "n/a"


def test_cd_figure_draws_names_groups_and_p():
    import matplotlib.pyplot as plt

    scores = {
        m: {f"c{j}": float(10 * i + j % 3) for j in range(6)} for i, m in enumerate(["pdp", "smart", "awg", "random"])
    }
    scores["random"] = {c: v - 25.0 for c, v in scores["random"].items()}  # ranks: smart 2, awg 1, pdp 3, random 4
    result = friedman(scores)
    fig = cd_figure(result, "quick")
    try:
        ax = fig.axes[0]
        texts = [t.get_text() for t in ax.texts]
        for name in scores:
            assert name in texts
        assert f"{result.mean_ranks['awg']:.2f}" in texts
        assert any(t.startswith("CD = ") for t in texts)
        assert "Friedman p = " in ax.get_title() and "quick" in ax.get_title()
        bars = [line for line in ax.lines if line.get_linewidth() == 4]
        assert len(bars) == sum(len(g) > 1 for g in nemenyi_groups(result.mean_ranks, result.cd))
    finally:
        plt.close(fig)


def test_plateau_compares_the_last_fifth_gain_with_the_seed_spread():
    from bench.reports.stats import plateau

    curves = {0: {8: 80.0, 10: 80.5}, 1: {8: 79.0, 10: 81.5}, 2: {8: 81.0, 10: 82.0}}
    result = plateau(curves, 10)
    assert result.gains == {0: 0.5, 1: 2.5, 2: 1.0} and result.finals == {0: 80.5, 1: 81.5, 2: 82.0}
    assert result.mean_gain == pytest.approx(4.0 / 3) and result.spread == pytest.approx(0.7637626, abs=1e-6)
    assert not result.converged  # 1.33 points gained in the last 20% > 0.76 between seeds
    flat = plateau({0: {8: 80.4, 10: 80.5}, 1: {8: 81.5, 10: 81.5}, 2: {8: 81.8, 10: 82.0}}, 10)
    assert flat.converged and flat.mean_gain == pytest.approx(0.1)
    assert plateau({0: {13: 1.0, 16: 2.0}, 1: {13: 1.0, 16: 3.0}}, 16).gains == {0: 1.0, 1: 2.0}  # 16 - round(3.2)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        plateau({0: {8: 1.0, 10: 1.0}}, 10)
    with pytest.raises(ValueError, match="needs epochs 8 and 10"):
        plateau({0: {10: 1.0}, 1: {8: 1.0, 10: 1.0}}, 10)
