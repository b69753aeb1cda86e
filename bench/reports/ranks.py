"""Across columns: each pruner's mean rank with a bootstrap CI, and one pruner's win/tie/loss
count against every other (``smartbench table NAME --summary``).

* Rank: within a column (task, pattern, sparsity), the competing labels (not ``dense``, not the
  reference controls such as ``nomask``) are ranked by their mean over seeds, 1 = best, ties get
  the average rank (``scipy.stats.rankdata``). A label's mean rank is over the columns it has;
  its 95% CI is the percentile interval of the mean over 2000 bootstrap resamples of those
  columns. Each label draws from its own numpy generator, seeded by (0, CRC-32 of the label), over
  its columns in sorted order: the CI depends on the label's ranks only, not on the order of the
  store's rows nor on which other labels are in the frame.
* Per column: best and runner-up, their paired p (separated: the table's dagger), the random
  control's rank and the collapsed cells -- the figures a leaderboard's reading quotes.
* Win/tie/loss of ``reference`` (default ``smart``) against each other label, per shared column:
  a paired t-test over the seeds both finished (bench.reports.tables.paired_p); p < 0.05 decides
  win or loss by the sign of the mean difference, else tie. Columns with fewer than 2 shared
  seeds cannot be tested: they are counted apart ("untested", with the sign of the difference).

**Protocol v3** (``marks="v3"``, the default; ``"v2"`` gives the above, as committed for
leaderboard-v2):

* the per-column p is the table's Holm-adjusted one (bench.reports.tables, v3 marks);
* win/loss: ``reference``'s paired p against each label in each shared column, Holm-corrected
  over all of ``reference``'s comparisons; a comparison that is not separated is ``equivalent``
  (paired TOST within ± margin) or ``inconclusive`` -- there is no "tie";
* across columns, in place of the bootstrap over correlated columns: the Friedman test over the
  columns every competing label has, mean ranks over those, and the Nemenyi critical difference
  (Demšar 2006; bench.reports.stats.friedman, figure bench.reports.cd_diagram).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from bench.reports.tables import ALPHA, LOWER_IS_BETTER, _by_seed, paired_p, reference_labels

BOOTSTRAP = 2000
COLUMN = ["task", "pattern", "sparsity"]


def competing(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of pruners that compete (reference controls that keep every unit left out)."""
    return frame[~frame["label"].isin(reference_labels(frame))]


def column_ranks(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (column, label): mean metric and rank within the column (1 = best)."""
    from scipy.stats import rankdata

    means = competing(frame).groupby([*COLUMN, "label"], sort=False)["metric"].mean().reset_index()
    metric_of = frame.drop_duplicates("task").set_index("task")["metric_name"]
    parts = []
    for _, part in means.groupby(COLUMN, sort=False):
        lower = metric_of[part["task"].iloc[0]] in LOWER_IS_BETTER
        part = part.copy()
        part["rank"] = rankdata(part["metric"] if lower else -part["metric"], method="average")
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else means.assign(rank=[])


def mean_ranks(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per label: columns, mean rank, 95% bootstrap CI (low, high), sorted best first."""
    ranks = column_ranks(frame).sort_values([*COLUMN, "label"])
    out = []
    for label, part in ranks.groupby("label", sort=False):
        values = part["rank"].to_numpy(float)
        if len(values) >= 2:
            rng = np.random.default_rng([seed, zlib.crc32(str(label).encode())])
            draws = rng.choice(values, size=(BOOTSTRAP, len(values)), replace=True).mean(axis=1)
            low, high = np.percentile(draws, [2.5, 97.5])
        else:
            low = high = float("nan")
        out.append({"label": label, "columns": len(values), "mean_rank": values.mean(), "ci_low": low, "ci_high": high})
    return pd.DataFrame(out, columns=["label", "columns", "mean_rank", "ci_low", "ci_high"]).sort_values(
        ["mean_rank", "label"], ignore_index=True
    )


def verdicts_against(frame: pd.DataFrame, reference: str = "smart", margin: float = 0.5) -> pd.DataFrame:
    """v3: per other label, ``reference``'s win / loss (Holm over all its comparisons),
    equivalent (TOST within ± ``margin``), inconclusive and untested columns."""
    from bench.reports import stats as st

    rows = competing(frame)
    metric_of = frame.drop_duplicates("task").set_index("task")["metric_name"]
    tests: list[tuple[str, float, float, dict, dict]] = []  # (label, p, better-is-positive diff, mine, theirs)
    counts: dict[str, dict[str, int]] = {}
    for label in dict.fromkeys(rows["label"]):
        if label == reference:
            continue
        counts[label] = dict.fromkeys(("columns", "win", "loss", "equivalent", "inconclusive", "untested"), 0)
        for column, _ in rows.groupby(COLUMN, sort=False):
            mine, theirs = _by_seed(rows, reference, *column), _by_seed(rows, label, *column)
            if not set(mine) & set(theirs):
                continue
            counts[label]["columns"] += 1
            diff = st.paired_difference(mine, theirs)
            if diff is None:
                counts[label]["untested"] += 1
                continue
            sign = -1.0 if metric_of[column[0]] in LOWER_IS_BETTER else 1.0
            tests.append((label, diff.p, sign * diff.mean, mine, theirs))
    adjusted = st.holm([p for _, p, _, _, _ in tests])
    for (label, _, better, mine, theirs), p in zip(tests, adjusted, strict=True):
        verdict = st.verdict(mine, theirs, p, margin, ALPHA)  # "worse": separated, whichever the sign
        if verdict == "worse":
            counts[label]["win" if better > 0 else "loss"] += 1
        else:
            counts[label][verdict] += 1
    out = pd.DataFrame([{"against": label, **c} for label, c in counts.items()])
    out.attrs["family"] = len(tests)
    return out


def aggregated(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(the rows whose columns enter the v3 aggregates, the tasks left out): rows whose dense
    reference trained fewer epochs than the task's recipe was measured at a plateau with
    (``Task.dense_plateau_epochs``; the rows' budget ``dense_epochs``) stay in the per-column tables
    and lines but not in the Friedman ranks nor the win/loss counts. Tasks not registered here, or
    not measured, enter."""
    from bench.tasks.registry import load_tasks

    tasks = load_tasks()
    needed = frame["task"].map(lambda t: tasks[t].dense_plateau_epochs if t in tasks else None)
    epochs = frame["dense_epochs"] if "dense_epochs" in frame else pd.Series(None, index=frame.index)
    short = needed.notna() & ~(pd.to_numeric(epochs, errors="coerce") >= pd.to_numeric(needed, errors="coerce"))
    return frame[~short], sorted(set(frame.loc[short, "task"]))


def without_signal(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """(the rows of the columns that carry signal, {"task pattern": why not} for the others): the
    patterns a task declares in ``Task.no_signal`` ("*": all of them) stay out of the v3 aggregates
    (issue 32 item 6)."""
    from bench.tasks.registry import load_tasks

    tasks = load_tasks()
    why: dict[str, str] = {}
    silent = pd.Series(False, index=frame.index)
    for (task, pattern), rows in frame.groupby(["task", "pattern"]).groups.items():
        declared = tasks[task].no_signal if task in tasks else {}
        reason = declared.get(pattern, declared.get("*"))
        if reason:
            why[task if "*" in declared and pattern not in declared else f"{task} {pattern}"] = reason
            silent[rows] = True
    return frame[~silent], dict(sorted(why.items()))


def friedman_ranks(frame: pd.DataFrame):
    """The Friedman test and Nemenyi CD of the competing labels that have the most columns (labels
    run in fewer columns -- an N:M-only method, a channel-only control, an ablation -- are left
    out: the test needs complete blocks), over the columns those share (None with fewer than 3
    such labels or no shared column)."""
    from bench.reports import stats as st

    ranks = column_ranks(frame)
    metric_of = frame.drop_duplicates("task").set_index("task")["metric_name"]
    lower = {t for t, m in metric_of.items() if m in LOWER_IS_BETTER}
    scores: dict[str, dict[str, float]] = {}
    for r in ranks.itertuples():
        value = -r.metric if r.task in lower else r.metric
        scores.setdefault(r.label, {})[f"{r.task} · {r.pattern} · {r.sparsity:g}"] = value
    widest = max((len(v) for v in scores.values()), default=0)
    scores = {label: v for label, v in scores.items() if len(v) == widest}  # the labels in the most columns
    if len(scores) < 3:
        return None
    try:
        return st.friedman(scores)
    except ValueError:
        return None


def win_tie_loss(frame: pd.DataFrame, reference: str = "smart") -> pd.DataFrame:
    """Per other label: win, tie, loss (paired test, >= 2 shared seeds) and untested columns
    (``untested_better`` / ``untested_worse`` / ``untested_equal`` by the mean of the shared seeds)."""
    rows = competing(frame)
    metric_of = frame.drop_duplicates("task").set_index("task")["metric_name"]
    out = []
    for label in dict.fromkeys(rows["label"]):
        if label == reference:
            continue
        counts = dict.fromkeys(("win", "tie", "loss", "untested_better", "untested_worse", "untested_equal"), 0)
        counts["columns"] = 0
        for column, _ in rows.groupby(COLUMN, sort=False):
            mine, theirs = _by_seed(rows, reference, *column), _by_seed(rows, label, *column)
            shared = sorted(set(mine) & set(theirs))
            if not shared:
                continue
            counts["columns"] += 1
            diff = float(np.mean([mine[s] - theirs[s] for s in shared]))
            if metric_of[column[0]] in LOWER_IS_BETTER:
                diff = -diff
            p = paired_p(mine, theirs)
            if p is None:
                counts["untested_better" if diff > 0 else "untested_worse" if diff < 0 else "untested_equal"] += 1
            elif p < ALPHA and diff != 0:
                counts["win" if diff > 0 else "loss"] += 1
            else:
                counts["tie"] += 1
        out.append({"against": label, **counts})
    return pd.DataFrame(out)


def column_summary(frame: pd.DataFrame, marks: str = "v3", margin: float = 0.5) -> pd.DataFrame:
    """Per column: seeds of the best, best and runner-up labels, the paired p between them and
    whether it separates them (the table's dagger), the random control's rank among the
    competing labels, and how many of the column's cells collapsed (any label, any seed)."""
    from bench.reports.tables import summarize

    stats = summarize(frame, marks=marks, margin=margin)
    ranks = column_ranks(frame)
    out = []
    for column, part in stats[~stats["reference"]].groupby(COLUMN, sort=True):  # task, pattern, sparsity
        lower = part["metric_name"].iloc[0] in LOWER_IS_BETTER
        ranked = part.sort_values("mean", ascending=lower)
        in_column = ranks[(ranks[COLUMN] == pd.Series(column, index=COLUMN)).all(axis=1)]
        random = in_column[in_column["label"] == "random"]
        best = ranked.iloc[0]
        out.append(
            {
                **dict(zip(COLUMN, column)),
                "labels": len(ranked),
                "best": best["label"],
                "best_n": int(best["n"]),
                "runner_up": ranked.iloc[1]["label"] if len(ranked) > 1 else None,
                "p_value": best["p_value"],
                "separated": bool(best["separated"]),
                "random_rank": float(random["rank"].iloc[0]) if len(random) else float("nan"),
                "collapsed": int(part["collapsed"].fillna(0).sum()),
            }
        )
    return pd.DataFrame(out)


def summary_markdown(
    frame: pd.DataFrame, suite_name: str, reference: str = "smart", marks: str = "v3", margin: float = 0.5
) -> str:
    """The rank summary, the win/tie/loss table and the per-column summary, as Markdown."""
    if marks == "v3":
        return _summary_v3(frame, suite_name, reference, margin)
    ranks = mean_ranks(frame)
    lines = [
        f"### {suite_name}: mean rank over columns",
        "",
        "| pruner | columns | mean rank | 95% CI |",
        "|---|---|---|---|",
    ]
    for r in ranks.itertuples():
        ci = "–" if np.isnan(r.ci_low) else f"{r.ci_low:.2f}–{r.ci_high:.2f}"
        lines.append(f"| {r.label} | {r.columns} | {r.mean_rank:.2f} | {ci} |")
    lines += [
        "",
        "- Rank 1 = best mean over seeds in a column (ties: average rank; reference controls that keep "
        "every unit, e.g. nomask, do not compete); CI: percentile bootstrap over the columns "
        f"({BOOTSTRAP} resamples, seed 0).",
    ]
    if reference in set(frame["label"]):
        table = win_tie_loss(frame, reference)
        lines += [
            "",
            f"### {suite_name}: {reference} against each pruner",
            "",
            "| against | columns | win | tie | loss | untested (better / worse / equal) |",
            "|---|---|---|---|---|---|",
        ]
        for r in table.itertuples():
            lines.append(
                f"| {r.against} | {r.columns} | {r.win} | {r.tie} | {r.loss} | "
                f"{r.untested_better} / {r.untested_worse} / {r.untested_equal} |"
            )
        lines += [
            "",
            f"- Win/loss: {reference}'s per-seed difference is non-zero by a paired t-test over the seeds "
            f"both finished, two-sided p < {ALPHA}; tie otherwise. Untested: fewer than 2 shared seeds "
            "(the sign of the difference is shown, no claim is made).",
        ]
    lines += _dense_lines(frame, suite_name)
    lines += _column_lines(column_summary(frame, "v2"), suite_name, "(paired test, p < {alpha})", "paired p")
    return "\n".join(lines) + "\n"


def _column_lines(columns: pd.DataFrame, suite_name: str, test: str, p_header: str) -> list[str]:
    """The per-column section: best (seeds), runner-up, their p (``p_header``; † separated by
    ``test``), random's rank and the collapsed cells."""
    if not len(columns):
        return []
    tested = columns[columns["p_value"].notna()]
    lines = [
        "",
        f"### {suite_name}: per column",
        "",
        f"The best is separated from the runner-up {test.format(alpha=ALPHA)} in {int(tested['separated'].sum())} "
        f"of the {len(tested)} columns where they share >= 2 seeds ({len(columns)} columns in all). "
        f"Collapsed cells: {int(columns['collapsed'].sum())}.",
        "",
        f"| column | best (seeds) | runner-up | {p_header} | random's rank | collapsed |",
        "|---|---|---|---|---|---|",
    ]
    for r in columns.itertuples():
        p = "–" if np.isnan(r.p_value) else f"{r.p_value:.3g}" + (" †" if r.separated else "")
        rank = "–" if np.isnan(r.random_rank) else f"{r.random_rank:g} of {r.labels}"
        runner = r.runner_up if isinstance(r.runner_up, str) else "–"
        lines.append(
            f"| {r.task} · {r.pattern} · {r.sparsity:g} | {r.best} ({r.best_n}) | {runner} | {p} | {rank} | "
            f"{r.collapsed} |"
        )
    return lines


def _dense_lines(frame: pd.DataFrame, suite_name: str) -> list[str]:
    dense = frame.dropna(subset=["dense_metric"]).drop_duplicates(["task", "seed"]).sort_values(["task", "seed"])
    lines = []
    if len(dense):
        lines += ["", f"### {suite_name}: dense models", ""]
        for task, part in dense.groupby("task", sort=False):
            values = part["dense_metric"].to_numpy(float)
            per_seed = " / ".join(f"{v:.2f}" for v in values)
            seeds = ", ".join(str(int(s)) for s in part["seed"])
            lines.append(
                f"- {task}: test {part['metric_name'].iloc[0]} {per_seed} (seeds {seeds}; spread "
                f"{values.max() - values.min():.2f})"
            )
    return lines


def _summary_v3(frame: pd.DataFrame, suite_name: str, reference: str, margin: float) -> str:
    lines = []
    columns_frame = frame
    frame, unconverged = aggregated(frame)
    if unconverged:
        lines += [
            f"Left out of the aggregates below (their columns stay in the tables and the per-column lines): "
            f"{', '.join(unconverged)} -- the dense reference is not at a plateau (`Task.dense_plateau_epochs`, "
            "scripts/dense_plateau.py), so a comparison there measures the recipe as much as the pruner.",
            "",
        ]
    frame, silent = without_signal(frame)
    for task, why in silent.items():
        lines += [
            f"Left out of the aggregates below: {task} -- its columns carry no signal (`Task.no_signal`): {why}.",
            "",
        ]
    result = friedman_ranks(frame) if len(frame) else None
    if result is not None:
        from bench.reports.stats import nemenyi_groups

        left = set(competing(frame)["label"]) - set(result.mean_ranks)
        lines += [
            f"### {suite_name}: Friedman test and critical difference",
            "",
            f"Friedman chi-square {result.statistic:.2f}, p = {result.p:.3g}, over the {result.n_columns} columns "
            f"every one of the {result.n_methods} competing pruners has; Nemenyi critical difference at "
            f"alpha {ALPHA}: {result.cd:.2f} ranks (Demšar 2006)."
            + (f" Left out (fewer columns): {', '.join(sorted(left))}." if left else ""),
            "",
            "| pruner | mean rank |",
            "|---|---|",
        ]
        for label, rank in sorted(result.mean_ranks.items(), key=lambda kv: (kv[1], kv[0])):
            lines.append(f"| {label} | {rank:.2f} |")
        groups = [g for g in nemenyi_groups(result.mean_ranks, result.cd) if len(g) > 1]
        lines += [
            "",
            "- Rank 1 = best mean over seeds in a column (ties: average rank; reference controls that keep "
            "every unit, e.g. nomask, do not compete). Pruners whose mean ranks differ by less than the CD "
            "are not separated: " + ("; ".join("{" + ", ".join(g) + "}" for g in groups) or "none") + ".",
        ]
    if len(frame) and reference in set(frame["label"]):
        table = verdicts_against(frame, reference, margin)
        lines += [
            "",
            f"### {suite_name}: {reference} against each pruner",
            "",
            "| against | columns | win | loss | equivalent | inconclusive | untested |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in table.itertuples():
            lines.append(
                f"| {r.against} | {r.columns} | {r.win} | {r.loss} | {r.equivalent} | {r.inconclusive} | {r.untested} |"
            )
        lines += [
            "",
            f"- Win/loss: {reference}'s paired difference over the shared seeds, Holm-corrected over its "
            f"{table.attrs.get('family', 0)} comparisons, adjusted p < {ALPHA}; equivalent: not separated and "
            f"within ±{margin:g} points by a paired TOST (p < {ALPHA}); inconclusive: neither. Untested: fewer "
            "than 2 shared seeds.",
        ]
    lines += _dense_lines(columns_frame, suite_name)
    lines += _column_lines(
        column_summary(columns_frame, "v3", margin), suite_name, "after Holm (adjusted p < {alpha})", "Holm p"
    )
    return "\n".join(lines).lstrip("\n") + "\n"
