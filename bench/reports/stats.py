"""Statistics of protocol v3: multiplicity corrections, paired effects, equivalence, power, and the
Friedman / Nemenyi comparison of many methods over many columns.

Per-seed metrics are ``{seed: metric}`` dicts; the paired functions use the seeds both dicts share
(d_s = first[s] - second[s], n shared seeds, mean d̄, sample sd s_d with ddof = 1).

* Holm (1979), Scand. J. Statist. 6:65-70, step-down: with the m p-values sorted, p_(1) <= ... <= p_(m),
  adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
* Benjamini & Hochberg (1995), JRSS B 57:289-300, step-up q-values:
  q_(i) = min_{j >= i} min(1, m p_(j) / j)  (``scipy.stats.false_discovery_control(method="bh")``).
  In both, None entries pass through and do not count in m.
* Paired difference: d̄ ± t_{(1+level)/2, n-1} s_d / sqrt(n); two-sided p = 2 P(T_{n-1} > |d̄| / (s_d / sqrt(n)))
  (``scipy.stats.ttest_1samp`` on the d_s, the same as ``ttest_rel``). If every d_s is the same: s_d = 0, CI = [d̄, d̄], p = 0 if d̄ != 0 else 1
  (as ``bench.reports.tables.paired_p``).
* TOST, Schuirmann (1987), J. Pharmacokin. Biopharm. 15:657-680: for H0 |mu_d| >= margin,
  p_lower = P(T_{n-1} > (d̄ + margin) / se), p_upper = P(T_{n-1} < (d̄ - margin) / se), se = s_d / sqrt(n),
  p = max(p_lower, p_upper); equivalence within ±margin is declared when p < alpha. s_d = 0: p = 0 if
  |d̄| < margin else 1.
* Minimum detectable effect of the two-sided paired t-test at n seeds (e.g. Cohen 1988, ch. 2; the exact
  power of the t-test): with df = n - 1, t* = t_{1-alpha/2, df} and noncentrality lambda = sqrt(n) delta / sigma_d,
  power(delta) = P(T'_{df,lambda} > t*) + P(T'_{df,lambda} < -t*) (``scipy.stats.nct``; both tails counted);
  the MDE is the delta with power(delta) = power (``scipy.optimize.brentq``). At alpha = 0.05, power = 0.8 this
  gives 3.264 sigma_d at n = 3, 1.682 at 5, 0.996 at 10: the audit's quoted "3.26, 1.68, 1.00" are these values
  rounded (leaving out the opposite tail changes them by < 1e-6). The normal approximation
  (z_{1-alpha/2} + z_power) / sqrt(n) gives 1.62, 1.25, 0.89 and the t-quantile shortcut
  (t_{1-alpha/2,df} + t_{power,df}) / sqrt(n) gives 3.10, 1.66, 0.99: neither matches.
* Friedman (1937) / Demšar (2006), JMLR 7:1-30, section 3.2.2: scores[method][column], k methods, N columns;
  ranks within each column, 1 = best, ties averaged (``scipy.stats.rankdata``); mean rank R_j;
  chi2_F = 12 N / (k (k + 1)) [sum_j R_j^2 - k (k + 1)^2 / 4] on k - 1 degrees of freedom
  (``scipy.stats.friedmanchisquare``, which also divides by the tie correction
  1 - sum(t^3 - t) / (N (k^3 - k))). Nemenyi critical difference CD = q_alpha sqrt(k (k + 1) / (6 N)) with
  q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2) (Demšar's Table 5a: 1.960, 2.343, ... for k = 2, ...).
  Two methods differ when their mean ranks differ by at least CD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import optimize, stats

VERDICTS = ("worse", "equivalent", "inconclusive", "n/a")


def _check(pvalues: Sequence[float | None]) -> list[tuple[int, float]]:
    """(index, p) of the entries that are not None; a NaN or a p outside [0, 1] raises ValueError."""
    out = []
    for i, p in enumerate(pvalues):
        if p is None:
            continue
        if not 0.0 <= p <= 1.0:  # also catches NaN
            raise ValueError(f"p-value {p!r} at index {i} is not in [0, 1]")
        out.append((i, float(p)))
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order; None entries pass through."""
    present = sorted(_check(pvalues), key=lambda item: item[1])
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (index, p) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[index] = running
    return out


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg q-values, in the input order; None entries pass through."""
    present = _check(pvalues)
    out: list[float | None] = [None] * len(pvalues)
    if not present:
        return out
    q = stats.false_discovery_control([p for _, p in present], method="bh")
    for (index, _), value in zip(present, q):
        out[index] = float(value)
    return out


def _differences(first: dict[int, float], second: dict[int, float]) -> np.ndarray:
    seeds = sorted(set(first) & set(second))
    return np.array([first[s] - second[s] for s in seeds], dtype=float)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of first - second over the shared seeds, its sample sd, t-based CI and two-sided p."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p: float | None


def paired_difference(
    first: dict[int, float], second: dict[int, float], level: float = 0.95
) -> PairedDifference | None:
    """Paired difference first - second over the shared seeds; None with fewer than 2 shared seeds."""
    d = _differences(first, second)
    n = len(d)
    if n < 2:
        return None
    mean = float(d.mean())
    if d.max() == d.min():
        return PairedDifference(n, mean, 0.0, mean, mean, 0.0 if mean != 0 else 1.0)
    result = stats.ttest_1samp(d, 0.0)  # the same as ttest_rel(first, second) on the shared seeds
    ci = result.confidence_interval(level)
    return PairedDifference(n, mean, float(d.std(ddof=1)), float(ci.low), float(ci.high), float(result.pvalue))


def tost_paired(first: dict[int, float], second: dict[int, float], margin: float) -> float | None:
    """TOST p for the paired difference first - second lying within ±margin (small p: equivalent);
    None with fewer than 2 shared seeds."""
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    d = _differences(first, second)
    n = len(d)
    if n < 2:
        return None
    mean = float(d.mean())
    if d.max() == d.min():
        return 0.0 if abs(mean) < margin else 1.0
    se = float(d.std(ddof=1)) / math.sqrt(n)
    p_lower = stats.t.sf((mean + margin) / se, n - 1)  # H0: mu_d <= -margin
    p_upper = stats.t.cdf((mean - margin) / se, n - 1)  # H0: mu_d >= +margin
    return float(max(p_lower, p_upper))


def _power(effect: float, n: int, alpha: float) -> float:
    """Exact power of the two-sided one-sample (paired) t-test at effect = delta / sigma_d."""
    df = n - 1
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    # lower tail as sf(t*, df, -nc) (T' is symmetric in -nc): nct.cdf(-t*, ...) returns NaN at large nc
    return float(stats.nct.sf(t_crit, df, nc) + stats.nct.sf(t_crit, df, -nc))


@cache
def mde_sd_units(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable mean paired difference at n seeds, in units of sigma_d (see the module docstring)."""
    if n < 2:
        raise ValueError(f"the paired t-test needs n >= 2 seeds, got {n}")
    if not 0 < alpha < power < 1:
        raise ValueError(f"need 0 < alpha < power < 1, got alpha={alpha}, power={power}")
    high = 1.0
    while _power(high, n, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda e: _power(e, n, alpha) - power, 0.0, high, xtol=1e-10))


def mde(sigma_d: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable mean paired difference of the two-sided paired t-test at n seeds, in sigma_d's units."""
    return sigma_d * mde_sd_units(n, alpha, power)


def seeds_needed(
    sigma_d: float, margin: float, alpha: float = 0.05, power: float = 0.8, minimum: int = 3, cap: int = 10
) -> tuple[int, bool]:
    """Smallest n in [minimum, cap] with mde(sigma_d, n) <= margin, and True; (cap, False) if cap does not reach it."""
    for n in range(minimum, cap + 1):
        if mde(sigma_d, n, alpha, power) <= margin:
            return n, True
    return cap, False


@dataclass(frozen=True)
class Friedman:
    """Friedman test over the columns every method has, the mean ranks (1 = best) and Nemenyi's CD."""

    statistic: float
    p: float
    mean_ranks: dict[str, float]
    cd: float
    n_columns: int
    n_methods: int


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's q_alpha for k methods: the studentized range quantile at infinite df over sqrt(2)."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def friedman(scores: dict[str, dict[str, float]], higher_is_better: bool = True, alpha: float = 0.05) -> Friedman:
    """Friedman test and Nemenyi CD on scores[method][column]. Only the columns every method has (with a
    number, not NaN) are used, the others are dropped; ``n_columns`` says how many were kept. If every kept
    column is a complete tie, the statistic is 0 and p is 1 (scipy returns NaN there)."""
    methods = list(scores)
    k = len(methods)
    if k < 3:
        raise ValueError(f"the Friedman test needs at least 3 methods, got {k}: {methods}")
    shared = set.intersection(*(set(scores[m]) for m in methods))
    columns = sorted(c for c in shared if all(scores[m][c] == scores[m][c] for m in methods))
    if not columns:
        raise ValueError(f"no column is shared (with a number) by all methods {methods}")
    table = np.array([[scores[m][c] for m in methods] for c in columns], dtype=float)  # N x k
    if higher_is_better:
        table = -table  # rank 1 = best = smallest after the sign flip
    ranks = np.vstack([stats.rankdata(row, method="average") for row in table])
    n_columns = len(columns)
    if all(row.max() == row.min() for row in table):
        statistic, p = 0.0, 1.0
    else:
        result = stats.friedmanchisquare(*table.T)
        statistic, p = float(result.statistic), float(result.pvalue)
    cd = nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_columns))
    mean_ranks = {m: float(r) for m, r in zip(methods, ranks.mean(axis=0))}
    return Friedman(statistic, p, mean_ranks, cd, n_columns, k)


def nemenyi_groups(mean_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Maximal groups of methods, contiguous in rank order, whose mean ranks all differ by < cd (best first,
    each group best first). A method that differs from every other is a group of its own, so every method is
    in at least one group; no group is contained in another."""
    order = sorted(mean_ranks, key=lambda m: (mean_ranks[m], m))
    groups = []
    last_end = -1
    for start, method in enumerate(order):
        end = start
        while end + 1 < len(order) and mean_ranks[order[end + 1]] - mean_ranks[method] < cd:
            end += 1
        if end > last_end:  # otherwise contained in the previous group
            groups.append(order[start : end + 1])
            last_end = end
    return groups


def verdict(
    best: dict[int, float], other: dict[int, float], p_adjusted: float | None, margin: float, alpha: float = 0.05
) -> str:
    """How ``other`` stands against the column's ``best`` (per-seed metrics):

    * "n/a": fewer than 2 shared seeds;
    * "worse": separated from the best, the (multiplicity-)adjusted paired p < alpha (this wins even if the
      difference also lies within ±margin: it is small but real);
    * "equivalent": not separated and the TOST p < alpha for the difference within ±margin;
    * "inconclusive": neither. Not separated is not equal: a p >= alpha with few seeds is mostly low power,
      and only the TOST can say "equal within the margin". A None ``p_adjusted`` counts as not separated.
    """
    p_tost = tost_paired(best, other, margin)
    if p_tost is None:
        return "n/a"
    if p_adjusted is not None and p_adjusted < alpha:
        return "worse"
    if p_tost < alpha:
        return "equivalent"
    return "inconclusive"


@dataclass(frozen=True)
class Plateau:
    """A dense recipe's plateau check (protocol v3): per seed, the val gain over the last
    ``fraction`` of its epochs; the seed spread (sample SD of the final val metric); converged when
    the mean gain is below the spread."""

    gains: dict[int, float]  # seed -> val(last epoch) - val(epoch at 1 - fraction)
    finals: dict[int, float]  # seed -> val at the last epoch
    mean_gain: float
    spread: float

    @property
    def converged(self) -> bool:
        return self.mean_gain < self.spread


def tail_start(epochs: int, fraction: float = 0.2) -> int:
    """The epoch the plateau check's tail starts after: ``epochs - round(fraction * epochs)``, at
    least one epoch before the last."""
    return epochs - max(1, round(fraction * epochs))


def plateau(curves: dict[int, dict[int, float]], epochs: int, fraction: float = 0.2) -> Plateau:
    """``curves``: seed -> {epochs done: val metric}, each holding ``epochs`` and
    ``tail_start(epochs, fraction)``; at least 2 seeds (a spread needs them)."""
    if len(curves) < 2:
        raise ValueError("a plateau check needs at least 2 seeds (the seed spread)")
    start = tail_start(epochs, fraction)
    gains, finals = {}, {}
    for seed, curve in sorted(curves.items()):
        if start not in curve or epochs not in curve:
            raise ValueError(f"seed {seed}: the curve needs epochs {start} and {epochs}, has {sorted(curve)}")
        gains[seed], finals[seed] = curve[epochs] - curve[start], curve[epochs]
    mean_gain = float(np.mean(list(gains.values())))
    spread = float(np.std(list(finals.values()), ddof=1))
    return Plateau(gains, finals, mean_gain, spread)
