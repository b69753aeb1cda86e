"""The paper's claims, one verdict each, from a suite's rows (issue 33: ``smartbench table NAME --claims``).

SMART's paper claims that SMART beats PDP, PaS, AWG and AC/DC on block, channel and N:M pruning,
across classification, detection and segmentation. Each claim "SMART beats X on G" is read off
the columns of group G -- a pattern kind (block, channel, N:M: every task) or a task family
(detection, segmentation: every pattern) -- on one protocol track at a time (tracks never mix):

* per column (task, pattern, sparsity) where both have >= 2 shared seeds: the paired difference
  SMART - X over the seeds (oriented so that > 0 means SMART is better, also for lower-is-better
  metrics), its 95 % t interval, the paired t-test's p, and the TOST p for |difference| < margin;
* Holm over every distinct (column, X) test of the track (a test counts once even when its column
  belongs to two groups, e.g. block and segmentation);
* a column's outcome: ``SMART`` (separated, SMART ahead), ``X`` (separated, X ahead),
  ``equivalent`` (not separated, TOST p < alpha: equal within the margin) or ``inconclusive``;
  and the MDE its seeds reach (80 % power, from the sd of the paired differences);
* the claim's verdict over its columns:

  - **supported**: SMART ahead in every column of the group;
  - **partly supported**: SMART ahead in some columns, X in none (the others not separated);
  - **not supported**: X ahead in some column, or SMART equivalent to X in every column (equal
    within the margin is not "beats");
  - **not distinguishable at this power**: no column separates and not every column is equivalent;
  - **no column**: the suite has no column of the group where both ran (e.g. no N:M column where
    the ViT task carries no signal).

"Not distinguishable" is not "equal": only ``equivalent`` columns say equal, and the MDE says what
the seeds could have detected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.reports import stats as st

SUBJECT = "smart"
BASELINES = ("pdp", "pas", "awg", "acdc")
GROUPS = ("block", "channel", "N:M", "detection", "segmentation")
ALPHA = 0.05
LOWER_IS_BETTER = {"error", "loss", "latency_ms"}


def pattern_kind(pattern: str) -> str:
    """block:RxC -> block, channel -> channel, nm:N:M -> N:M, anything else as it is."""
    if pattern.startswith("block"):
        return "block"
    if pattern.startswith("nm:"):
        return "N:M"
    return pattern


def task_family(task: str) -> str:
    """The task's family (classification, detection, segmentation); 'unknown' for unregistered tasks."""
    from bench.tasks.registry import load_tasks

    cls = load_tasks().get(task)
    return getattr(cls, "family", "unknown") if cls is not None else "unknown"


@dataclass
class ColumnTest:
    """SMART against one baseline in one column (module docstring)."""

    task: str
    pattern: str
    sparsity: float
    n: int
    diff: float  # SMART - X, > 0: SMART better
    ci_low: float
    ci_high: float
    p: float
    tost_p: float
    mde: float
    p_holm: float = math.nan
    outcome: str = ""

    @property
    def column(self) -> str:
        return f"{self.task} · {self.pattern} · {self.sparsity:g}"


@dataclass
class Claim:
    track: str
    group: str
    baseline: str
    tests: list[ColumnTest] = field(default_factory=list)
    verdict: str = "no column"

    @property
    def text(self) -> str:
        on = {"detection": "on det", "segmentation": "on seg"}.get(self.group, f"on {self.group}")
        return f"SMART beats {BASELINE_NAMES.get(self.baseline, self.baseline)} {on}"


BASELINE_NAMES = {"pdp": "PDP", "pas": "PaS", "awg": "AWG", "acdc": "AC/DC"}


def _seeds(frame: pd.DataFrame, label: str, column: tuple) -> dict[int, float]:
    from bench.reports.tables import _by_seed  # the tables' own {seed: metric} of a label in a column

    return _by_seed(frame, label, *column)


def column_test(frame: pd.DataFrame, column: tuple, baseline: str, margin: float, subject: str) -> ColumnTest | None:
    """The paired comparison of ``subject`` and ``baseline`` in ``column`` (None: < 2 shared seeds)."""
    ours, theirs = _seeds(frame, subject, column), _seeds(frame, baseline, column)
    rows = frame[(frame["task"] == column[0]) & (frame["pattern"] == column[1]) & (frame["sparsity"] == column[2])]
    sign = -1.0 if rows["metric_name"].iloc[0] in LOWER_IS_BETTER else 1.0
    if sign < 0:
        ours, theirs = theirs, ours  # SMART - X where higher is better = X - SMART where lower is better
    diff = st.paired_difference(ours, theirs)
    if diff is None:
        return None
    tost = st.tost_paired(ours, theirs, margin)
    d = np.array([ours[s] - theirs[s] for s in sorted(set(ours) & set(theirs))])
    mde = st.mde(float(d.std(ddof=1)), len(d)) if d.max() != d.min() else 0.0
    return ColumnTest(*column, diff.n, diff.mean, diff.ci_low, diff.ci_high, diff.p, tost, mde)


def claims(
    frame: pd.DataFrame,
    margin: float,
    baselines: tuple[str, ...] = BASELINES,
    subject: str = SUBJECT,
    alpha: float = ALPHA,
) -> list[Claim]:
    """Every claim (track x group x baseline) with its column tests and verdict (module docstring)."""
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    frame = frame.assign(track=frame["track"].fillna("") if "track" in frame else "")
    families = {task: task_family(task) for task in dict.fromkeys(frame["task"])}
    out: list[Claim] = []
    for track in dict.fromkeys(frame["track"]):
        part = frame[frame["track"] == track]
        columns = list(dict.fromkeys(zip(part["task"], part["pattern"], part["sparsity"])))
        tests: dict[tuple, ColumnTest] = {}
        for column in columns:
            for baseline in baselines:
                test = column_test(part, column, baseline, margin, subject)
                if test is not None:
                    tests[(column, baseline)] = test
        for test, adjusted in zip(tests.values(), st.holm([t.p for t in tests.values()]), strict=True):
            test.p_holm = adjusted
            test.outcome = _outcome(test, alpha)
        for group in GROUPS:
            in_group = [c for c in columns if group in (pattern_kind(c[1]), families[c[0]])]
            for baseline in baselines:
                claim = Claim(
                    track, group, baseline, [tests[(c, baseline)] for c in in_group if (c, baseline) in tests]
                )
                claim.verdict = _verdict([t.outcome for t in claim.tests])
                out.append(claim)
    return out


def _outcome(test: ColumnTest, alpha: float) -> str:
    if test.p_holm < alpha:
        return "SMART" if test.diff > 0 else "X"
    return "equivalent" if test.tost_p < alpha else "inconclusive"


def _verdict(outcomes: list[str]) -> str:
    if not outcomes:
        return "no column"
    if "X" in outcomes or all(o == "equivalent" for o in outcomes):
        return "not supported"
    if all(o == "SMART" for o in outcomes):
        return "supported"
    if "SMART" in outcomes:
        return "partly supported"
    return "not distinguishable at this power"


def markdown(found: list[Claim], suite_name: str, margin: float) -> str:
    """Per track: one line per claim (verdict and the columns behind it), then every column test."""
    lines = [
        f"# {suite_name}: the paper's claims",
        "",
        f"Paired SMART - X over seeds (> 0: SMART better), 95 % t interval; Holm over every (column, X) test "
        f"of a track; equivalence: paired TOST within ±{margin:g} points; MDE at 80 % power "
        "(bench/reports/verdicts.py states the rules).",
    ]
    for track in dict.fromkeys(c.track for c in found):
        mine = [c for c in found if c.track == track]
        lines += ["", f"## {track} track" if track else "## v1 rows (no allocation rule)", ""]
        lines += ["| claim | verdict | columns: SMART ahead / X ahead / equivalent / inconclusive |", "|---|---|---|"]
        for claim in mine:
            counts = [sum(t.outcome == o for t in claim.tests) for o in ("SMART", "X", "equivalent", "inconclusive")]
            lines.append(
                f"| {claim.text} | {claim.verdict} | "
                + (" / ".join(map(str, counts)) + f" of {len(claim.tests)}" if claim.tests else "-")
                + " |"
            )
        lines += ["", "| column | X | seeds | SMART - X | 95 % CI | p | Holm p | TOST p | MDE | outcome |"]
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        seen = set()
        for claim in mine:
            for t in claim.tests:
                if (t.column, claim.baseline) in seen:
                    continue
                seen.add((t.column, claim.baseline))
                who = BASELINE_NAMES.get(claim.baseline, claim.baseline) if t.outcome == "X" else t.outcome
                lines.append(
                    f"| {t.column} | {BASELINE_NAMES.get(claim.baseline, claim.baseline)} | {t.n} | {t.diff:+.2f} "
                    f"| [{t.ci_low:+.2f}, {t.ci_high:+.2f}] | {t.p:.3g} | {t.p_holm:.3g} | {t.tost_p:.3g} "
                    f"| {t.mde:.2f} | {who} |"
                )
    return "\n".join(lines) + "\n"
