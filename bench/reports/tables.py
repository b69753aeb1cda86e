"""Result store (or W&B) -> pandas -> paper-style tables (md, LaTeX, CSV); plots are
bench.reports.plots, the rank summary bench.reports.ranks.

Table layout: one row per pruner label (the suite's ``as:`` names) under a ``dense`` reference
row (the dense model's metric of the same (task, seed)s); one column per (task, pattern,
sparsity). A cell is ``mean ± std`` over seeds (sample std, ddof=1; no std with one seed), with
``(n=k)`` when fewer seeds than planned are finished. The best mean of each column is bold
(ties: all of them; the dense row and reference controls such as ``nomask`` do not compete). A dagger marks a best that is separated
from the runner-up beyond seed noise: a *paired* t-test over the seeds both finished (every
pruner of a seed starts from that seed's dense checkpoint, so seed-to-seed variation of the
dense model cancels in the per-seed differences), two-sided p < 0.05, computed only with >= 2
shared seeds (never with one seed); ``≈`` marks a row that is not the best but within noise of it
(the same paired test against the best gives p >= 0.05). A double dagger marks cells
whose achieved sparsity differs from the target by more than 0.0005, listed in a footnote. A
section sign marks cells in which some seed *collapsed* (row flag ``collapsed``: test metric
within 1 point of the task's trivial predictor), with the count per cell in a footnote.
Higher is better for every metric except those in ``LOWER_IS_BETTER``.

**Marks of protocol v3** (``marks="v3"``, the default; ``"v2"`` renders the v2 marks above, which
the committed leaderboard-v2 tables were made with). Every competing cell that is not a column's
best is compared with that best over their shared seeds (bench.reports.stats): the paired
difference (cell - best) with its 95% CI, its two-sided paired p, and that p Holm-corrected over
every such comparison of the table (the family: all (cell, best) pairs of all columns). Marks:

* ``†`` on the best: the runner-up's Holm-adjusted p < 0.05 (the best is separated from every other
  cell of its column, since the runner-up is the closest);
* ``≡`` on a cell: equivalent to the best within ± ``margin`` metric points (paired TOST, p < 0.05)
  and not separated from it;
* ``?`` on a cell: inconclusive -- neither separated from the best after Holm nor equivalent
  within the margin. "Not separated" is not "equal": only ``≡`` says equal;
* no mark: separated from the best (worse, Holm-adjusted p < 0.05); cells with fewer than 2
  shared seeds are not tested and get no mark.

``‡`` and ``§`` are as in v2. The CSV gives every figure: ``diff_to_best``, ``ci_low``,
``ci_high``, ``p_vs_best``, ``p_holm``, ``tost_p``, ``verdict``, and per column the minimum
detectable effect of its best-vs-runner-up comparison at 80 % power (``mde``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.runs.record import ResultStore

ROW_FIELDS = (
    "run_id",
    "task",
    "family",
    "pruner",
    "pattern",
    "target_sparsity",
    "achieved_sparsity",
    "weight_sparsity",
    "seed",
    "metric_name",
    "metric",
    "val_metric",
    "dense_metric",
    "dense_val_metric",
    "wall_s",
    "collapsed",
    "flops_dense",
)
# optional, added by the speed measurements when present (latency_ratio_*: bench.deploy.ort_speed.runtime_fields)
SPEED_FIELDS = ("latency_ms", "flops_masked", "latency_ratio_ort", "latency_ratio_ov")
COST_FIELDS = ("flops_kept", "latency_ratio_ort", "latency_ratio_ov")  # the --cost view, mean over seeds
LOWER_IS_BETTER = {"error", "loss", "latency_ms"}
ALPHA = 0.05
MARGIN = 0.5  # the equivalence margin (metric points) of the v3 marks
MARKS = ("v3", "v2")
# a row off its target by more is marked ‡ (a FLOPs-budget row: by more than one unit, its dearest)
SPARSITY_TOLERANCE = 5e-4
KEYS = ["label", "task", "pattern", "sparsity"]


# -- rows -> DataFrame -----------------------------------------------------------------------
def frame_from_rows(rows: Iterable[dict[str, Any]], suite) -> pd.DataFrame:
    """One DataFrame row per finished cell of ``suite`` (rows of other runs are dropped).

    ``label``/``task``/``pattern``/``sparsity`` come from the suite's cell (the row's run_id),
    the numbers from the row. ``frame.attrs['dropped']`` counts rows that matched no cell.
    """
    cells: dict[str, list] = {}
    for cell in suite.placed():  # a run that fills several columns (nomask) gives a record in each
        cells.setdefault(cell.run_id, []).append(cell)
    records, dropped = [], 0
    for row in rows:
        if row.get("run_id") not in cells:
            dropped += 1
            continue
        for cell in cells[row["run_id"]]:
            records.append(_record(row, cell))
    columns = (
        KEYS
        + [f for f in ROW_FIELDS + SPEED_FIELDS if f not in KEYS]
        + ["kept_by_layer", "track", "sparsity_tolerance", "method_version", "dense_epochs"]
    )
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame = frame.drop_duplicates(["run_id", "task", "pattern", "sparsity"])
    for name in (
        "metric",
        "dense_metric",
        "achieved_sparsity",
        "target_sparsity",
        "sparsity",
        "sparsity_tolerance",
        "flops_dense",
    ) + SPEED_FIELDS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame.attrs["dropped"] = dropped
    return frame


def _record(row: dict[str, Any], cell) -> dict[str, Any]:
    record = {field: row.get(field) for field in ROW_FIELDS}
    record.update({field: _speed_value(row, field) for field in SPEED_FIELDS})
    layers = (row.get("audit") or {}).get("layers") or []  # kept fraction per layer (allocation figure)
    record["sparsity_tolerance"] = SPARSITY_TOLERANCE
    record["method_version"] = row.get("method_version") or 1  # rows before versions: 1
    record["dense_epochs"] = (row.get("budget") or {}).get("dense_epochs")  # the reference's recipe
    source = cell.spec.allocation if isinstance(cell.spec.allocation, dict) else {}
    if source.get("policy") == "from":  # a transplant keeps its source's per-layer counts (checked when
        record["sparsity_tolerance"] = math.inf  # it starts), not the column's target by its own measure
    elif row.get("budget_kind") == "flops":  # the target counts FLOPs: the achieved sparsity it is held to
        record["achieved_sparsity"] = row.get("achieved_flops_sparsity")
        # exact to within one unit (protocol v3): the dearest unit's share of the covered FLOPs
        covered = (row.get("audit") or {}).get("flops_covered")
        dearest = max((entry.get("flops_per_unit") or 0 for entry in layers), default=0)
        if covered and dearest:
            record["sparsity_tolerance"] = max(SPARSITY_TOLERANCE, dearest / covered)
    record["kept_by_layer"] = {
        entry["layer"]: entry["kept_units"] / entry["units"] for entry in layers if entry.get("units")
    }
    record.update(
        track=track_of(cell.spec.allocation),
        label=cell.label,
        task=cell.spec.task,
        pattern=cell.spec.pattern,
        sparsity=cell.spec.sparsity,
        seed=cell.spec.seed,
    )
    return record


TRACKS = {  # allocation policy -> the protocol's track (docs/suites.md, "Tracks")
    "uniform": "criterion",
    "global": "allocation",
    "from": "allocation",  # the transplant control sits beside the method whose counts it keeps
}
TRACK_NOTES = {
    "criterion": "criterion track: every layer keeps the same fraction of its units (uniform allocation), "
    "so a column compares which units each method ranks best",
    "allocation": "allocation track: one global ranking under the protocol's allocation rule at the same budget, "
    "so a column scores the whole method, its allocation included; a transplant row (allocation from another "
    "run) keeps that run's per-layer counts with its own selection",
}


def track_of(allocation) -> str:
    """The track of a cell's allocation rule (a dict or policy name); '' for v1 cells (no rule)."""
    if allocation is None:
        return ""
    policy = allocation.get("policy", "global") if isinstance(allocation, dict) else str(allocation).split(":")[0]
    return TRACKS.get(policy, "")


def tracks_in(frame: pd.DataFrame) -> list[str]:
    """The tracks of a frame's rows, in order of first appearance ('' = v1 rows)."""
    return list(dict.fromkeys(frame["track"].fillna(""))) if "track" in frame else [""]


def _speed_value(row: dict[str, Any], field: str) -> Any:
    """A speed figure at the top level of a row, or one level down (e.g. row["speed"]["latency_ms"])."""
    if row.get(field) is not None:
        return row[field]
    return next((v[field] for v in row.values() if isinstance(v, dict) and v.get(field) is not None), None)


def rows_from_store(suite, store: ResultStore | None = None) -> pd.DataFrame:
    """The frame of the store's rows; rows of the local store (``store`` None) gain the runtime
    latencies measured since (runs/speed/, bench.deploy.ort_speed.with_runtime_fields), a rows
    file given as ``store`` is read as it is."""
    return frame_from_rows(_stored_rows(store), suite)


def _stored_rows(store: ResultStore | None):
    from bench.deploy.ort_speed import with_runtime_fields

    return with_runtime_fields(ResultStore().rows()) if store is None else store.rows()


def suite_rows(suite, store: ResultStore | None = None) -> list[dict[str, Any]]:
    """The complete store rows (per-layer audit, provenance, every metric) of ``suite``'s finished
    cells (the local store's with their runtime latencies, :func:`rows_from_store`), in the suite's
    cell order, each with its cell's ``label`` and allocation rule (rows
    written before rows recorded it take their cell's, which their run id hashes): what
    ``smartbench table --raw`` commits next to a table, and what ``--rows`` reads back."""
    from bench.core.select import Allocation
    from bench.runs.registry import get_pruner_class

    rows = {row.get("run_id"): row for row in _stored_rows(store)}
    out = []
    for cell in suite.cells:
        if cell.run_id in rows:
            allocation = Allocation.from_value(cell.spec.allocation)
            recorded = allocation is not None and not get_pruner_class(cell.spec.pruner).keeps_all
            out.append(
                {"label": cell.label, **({"allocation": allocation.to_dict()} if recorded else {}), **rows[cell.run_id]}
            )
    return out


def provenance_markdown(rows: list[dict[str, Any]], suite_name: str) -> str:
    """Where a table's rows come from: rows per (git sha, dirty tree), per platform (cpu, torch,
    threads, device) and the span of their finish times -- the provenance a committed table states."""
    from collections import Counter

    from bench.reports.provenance import version_lines

    code, platform, finished = Counter(), Counter(), []
    for row in rows:
        prov = row.get("provenance") or {}
        sha = str(prov.get("git_sha") or "?")[:7]
        if prov.get("git_tags"):
            sha += f" (tag {', '.join(prov['git_tags'])})"
        code[(sha, bool(prov.get("git_dirty")))] += 1
        cpu = " ".join(str(v) for v in (prov.get("cpu_model") or prov.get("cpu"), prov.get("cpu_capability")) if v)
        platform[(cpu, prov.get("torch"), prov.get("threads"), row.get("device"))] += 1
        if prov.get("finished_at"):
            finished.append(prov["finished_at"])
    lines = [f"### {suite_name}: provenance of the {len(rows)} rows", ""]
    lines += [
        f"- {n} row(s) at {sha}" + (" (uncommitted changes)" if dirty else "") for (sha, dirty), n in code.most_common()
    ]
    diffs = Counter(str((row.get("provenance") or {}).get("git_diff_sha256"))[:12] for row in rows)
    lines += [f"- {n} row(s) with uncommitted changes of diff hash {h}" for h, n in diffs.most_common() if h != "None"]
    lines += version_lines(rows)
    lines += [
        f"- {n} row(s) on {cpu}, torch {torch}, {threads} thread(s), device {device}"
        for (cpu, torch, threads, device), n in platform.most_common()
    ]
    if finished:
        lines.append(f"- finished between {min(finished)} and {max(finished)}")
    wall = sum(float(row.get("wall_s") or 0.0) for row in rows)
    lines.append(f"- worker time {wall / 3600:.2f} h (the rows' wall_s summed; dense models not counted)")
    return "\n".join(lines) + "\n"


def wandb_rows(api, project: str, group: str) -> list[dict[str, Any]]:
    """Summary fields of every W&B run of ``group`` and of ``<group>-tune`` (what
    bench.runs.record.log_wandb wrote): a suite's seed-``tune.seed`` cells with the tuned config
    are the winning tuning trials themselves (same run id), logged in the tuning group."""
    rows = []
    for run in [*api.runs(project, filters={"group": group}), *api.runs(project, filters={"group": f"{group}-tune"})]:
        summary = getattr(run.summary, "_json_dict", None)
        summary = dict(summary if isinstance(summary, dict) else run.summary)
        summary.setdefault("run_id", getattr(run, "id", None))
        rows.append(summary)
    return rows


def rows_from_wandb(suite, project: str | None, api=None) -> pd.DataFrame:
    """The same DataFrame as :func:`rows_from_store`, from the W&B public API."""
    from bench.core.errors import ConfigError

    if not project:
        raise ConfigError("--project", "W&B project (ENTITY/PROJECT) required with --from wandb")
    if api is None:
        import wandb

        try:
            api = wandb.Api()
            rows = wandb_rows(api, project, suite.name)
        except Exception as err:  # noqa: BLE001 — no API key, no network, unknown project...
            raise ConfigError(
                "--from wandb", f"cannot read W&B project '{project}': {type(err).__name__}: {err}"
            ) from None
        return frame_from_rows(rows, suite)
    return frame_from_rows(wandb_rows(api, project, suite.name), suite)


# -- statistics -------------------------------------------------------------------------------
def welch_p(mean1: float, std1: float, n1: int, mean2: float, std2: float, n2: int) -> float | None:
    """Two-sided p of Welch's t-test; None with fewer than 2 seeds on either side."""
    if n1 < 2 or n2 < 2:
        return None
    se2 = std1**2 / n1 + std2**2 / n2
    if se2 == 0:
        return 0.0 if mean1 != mean2 else 1.0
    from scipy.stats import ttest_ind_from_stats

    return float(ttest_ind_from_stats(mean1, std1, n1, mean2, std2, n2, equal_var=False).pvalue)


def paired_p(first: dict[int, float], second: dict[int, float]) -> float | None:
    """Two-sided p of the paired t-test over the seeds both have (``{seed: metric}``); None with
    fewer than 2 shared seeds. Identical differences on every seed: 0 if they are not 0, else 1."""
    seeds = sorted(set(first) & set(second))
    if len(seeds) < 2:
        return None
    diffs = [first[s] - second[s] for s in seeds]
    if max(diffs) == min(diffs):
        return 0.0 if diffs[0] != 0 else 1.0
    from scipy.stats import ttest_rel

    return float(ttest_rel([first[s] for s in seeds], [second[s] for s in seeds]).pvalue)


def _by_seed(frame: pd.DataFrame, label: str, task: str, pattern: str, sparsity: float) -> dict[int, float]:
    rows = frame[
        (frame["label"] == label)
        & (frame["task"] == task)
        & (frame["pattern"] == pattern)
        & (frame["sparsity"] == sparsity)
    ]
    return {int(seed): float(metric) for seed, metric in zip(rows["seed"], rows["metric"]) if metric == metric}


def summarize(frame: pd.DataFrame, suite=None, marks: str = "v3", margin: float = MARGIN) -> pd.DataFrame:
    """Per (label, task, pattern, sparsity): mean, std, n, expected n, achieved sparsity, best,
    separated (the dagger), p_value; plus the dense reference rows (label 'dense'). ``marks``: the
    v3 statistics (module docstring: Holm, TOST within ``margin``) or the v2 ones."""
    if marks not in MARKS:
        from bench.core.errors import ConfigError

        raise ConfigError("--marks", f"{marks!r} is not one of {', '.join(MARKS)}")
    if {"flops_masked", "flops_dense"} <= set(frame):
        frame = frame.assign(flops_kept=frame["flops_masked"] / frame["flops_dense"])
    for name in COST_FIELDS:
        if name not in frame:
            frame[name] = math.nan
    grouped = frame.groupby(KEYS, sort=False)
    stats = grouped.agg(
        **{name: (name, "mean") for name in COST_FIELDS},
        metric_name=("metric_name", "first"),
        mean=("metric", "mean"),
        std=("metric", "std"),
        n=("metric", "count"),
        achieved_sparsity=("achieved_sparsity", "mean"),
        sparsity_tolerance=("sparsity_tolerance", "max"),
        collapsed=("collapsed", lambda flags: int(sum(bool(f) for f in flags if f is not None and f == f))),
    ).reset_index()
    references = reference_labels(frame)
    stats["reference"] = stats["label"].isin(references)  # nomask: a reference row like dense
    planned = _planned_seeds(suite, frame)
    stats["expected_n"] = [planned.get(tuple(k), n) for k, n in zip(stats[KEYS].itertuples(index=False), stats["n"])]
    stats["best"], stats["separated"], stats["p_value"], stats["within_noise"] = False, False, math.nan, False
    for column, ranked in _ranked_columns(stats):
        top = ranked["mean"].iloc[0]
        stats.loc[column.index[column["mean"] == top], "best"] = True
        if marks != "v2":  # v3: _v3_marks below
            continue
        a = ranked.iloc[0]
        where = (a["task"], a["pattern"], a["sparsity"])
        if len(ranked) >= 2 and ranked["mean"].iloc[1] != top:
            b = ranked.iloc[1]
            p = paired_p(_by_seed(frame, a["label"], *where), _by_seed(frame, b["label"], *where))
            if p is not None:
                stats.loc[ranked.index[0], "p_value"] = p
                stats.loc[ranked.index[0], "separated"] = p < ALPHA
        best_seeds = _by_seed(frame, a["label"], *where)
        for index, row in ranked.iloc[1:].iterrows():  # not the best, but not separable from it
            p = paired_p(best_seeds, _by_seed(frame, row["label"], *where))
            if row["mean"] != top and p is not None and p >= ALPHA:
                stats.loc[index, "within_noise"] = True
    for name in V3_FIELDS:
        stats[name] = "" if name == "verdict" else math.nan
    if marks == "v3":
        _v3_marks(frame, stats, margin)
    dense = _dense_rows(frame, stats)
    return pd.concat([dense, stats], ignore_index=True)


V3_FIELDS = ("diff_to_best", "ci_low", "ci_high", "p_vs_best", "p_holm", "tost_p", "verdict", "mde")


def _v3_marks(frame: pd.DataFrame, stats: pd.DataFrame, margin: float) -> None:
    """Protocol v3's statistics (module docstring), in place: every non-best competing cell against
    its column's best, Holm over the table; ``separated`` / ``within_noise`` take the v3 meaning
    (the best separated after Holm / the cell equivalent within ``margin``)."""
    from bench.reports import stats as st

    stats["separated"], stats["within_noise"], stats["p_value"] = False, False, math.nan
    tests: list[tuple[int, float]] = []
    seeds_of: dict[int, tuple[dict, dict]] = {}
    runner_up: dict[int, int] = {}  # index of a column's best -> index of its runner-up
    for _, ranked in _ranked_columns(stats):
        best = ranked.iloc[0]
        where = (best["task"], best["pattern"], best["sparsity"])
        best_seeds = _by_seed(frame, best["label"], *where)
        others = [i for i in ranked.index if not ranked.loc[i, "best"]]
        if others and len(others) == len(ranked) - 1:  # a tie for best: no best is separated
            runner_up[ranked.index[0]] = others[0]
        for index in others:
            seeds = _by_seed(frame, stats.loc[index, "label"], *where)
            diff = st.paired_difference(seeds, best_seeds)
            if diff is None:
                continue
            stats.loc[index, ["diff_to_best", "ci_low", "ci_high", "p_vs_best"]] = [
                diff.mean,
                diff.ci_low,
                diff.ci_high,
                diff.p,
            ]
            stats.loc[index, "tost_p"] = st.tost_paired(seeds, best_seeds, margin)
            tests.append((index, diff.p))
            seeds_of[index] = (best_seeds, seeds)
        if ranked.index[0] in runner_up and others[0] in seeds_of:
            sd = float(np.std([a - b for a, b in _paired(*seeds_of[others[0]])], ddof=1))
            stats.loc[ranked.index[0], "mde"] = st.mde(sd, len(_paired(*seeds_of[others[0]])))
    for (index, _), adjusted in zip(tests, st.holm([p for _, p in tests]), strict=True):
        stats.loc[index, "p_holm"] = adjusted
        verdict = st.verdict(*seeds_of[index], adjusted, margin, ALPHA)
        stats.loc[index, "verdict"] = verdict
        stats.loc[index, "within_noise"] = verdict == "equivalent"
    for best, second in runner_up.items():
        adjusted = stats.loc[second, "p_holm"]
        if not pd.isna(adjusted):
            stats.loc[best, "p_value"] = adjusted
            stats.loc[best, "separated"] = bool(adjusted < ALPHA)


def _ranked_columns(stats: pd.DataFrame):
    """(column's competing rows, the same ranked best first) per (task, pattern, sparsity) that has
    any competing row (reference controls such as nomask left out)."""
    for _, idx in stats.groupby(["task", "pattern", "sparsity"], sort=False).groups.items():
        column = stats.loc[idx]
        column = column[~column["reference"]]
        if not column.empty:
            lower = column["metric_name"].iloc[0] in LOWER_IS_BETTER
            yield column, column.sort_values("mean", ascending=lower)


def _paired(first: dict[int, float], second: dict[int, float]) -> list[tuple[float, float]]:
    return [(first[s], second[s]) for s in sorted(set(first) & set(second))]


def reference_labels(frame: pd.DataFrame) -> set[str]:
    """Labels of reference controls that keep every unit (``nomask``): they do not compete."""
    return {label for label, pruner in frame[["label", "pruner"]].drop_duplicates().values if _keeps_all(pruner)}


def _keeps_all(pruner: str) -> bool:
    """True for a reference control that keeps every unit (``nomask``); unknown names: False."""
    from bench.core.errors import ConfigError
    from bench.runs.registry import get_pruner_class

    try:
        return bool(get_pruner_class(str(pruner)).keeps_all)
    except ConfigError:
        return False


def _std(row) -> float:
    return 0.0 if pd.isna(row["std"]) else float(row["std"])


def _planned_seeds(suite, frame: pd.DataFrame) -> dict[tuple, int]:
    if suite is None:
        return {}
    seeds: dict[tuple, set[int]] = {}  # distinct seeds: a label on both tracks plans each seed once per track
    for cell in suite.placed():
        key = (cell.label, cell.spec.task, cell.spec.pattern, cell.spec.sparsity)
        seeds.setdefault(key, set()).add(cell.spec.seed)
    return {key: len(s) for key, s in seeds.items()}


def _dense_rows(frame: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """The dense model of each (task, seed) once, repeated under every column of the task; its
    expected n is the most seeds planned for any cell of the task (so it too shows ``(n=k)``)."""
    per_seed = frame.drop_duplicates(["task", "seed"]).groupby("task", sort=False)["dense_metric"]
    dense = per_seed.agg(["mean", "std", "count"])
    planned = stats.groupby("task", sort=False)["expected_n"].max()
    columns = stats[["task", "pattern", "sparsity", "metric_name"]].drop_duplicates(["task", "pattern", "sparsity"])
    rows = [
        {
            "label": "dense",
            **col,
            "mean": dense.loc[col["task"], "mean"],
            "std": dense.loc[col["task"], "std"],
            "n": int(dense.loc[col["task"], "count"]),
            "expected_n": max(int(dense.loc[col["task"], "count"]), int(planned[col["task"]])),
            "achieved_sparsity": 0.0,
            **{name: 1.0 if name == "flops_kept" else math.nan for name in COST_FIELDS},
            "collapsed": 0,
            "best": False,
            "separated": False,
            "p_value": math.nan,
            "within_noise": False,
            "reference": True,
            **{name: "" if name == "verdict" else math.nan for name in V3_FIELDS},
        }
        for col in columns.to_dict("records")
    ]
    return pd.DataFrame(rows, columns=stats.columns)


# -- rendering ------------------------------------------------------------------------------
def row_notes(labels: list[str], suite, frame: pd.DataFrame) -> dict[str, str]:
    """{label: what its row is} for the rows a name alone would not explain: a suite entry renamed
    with ``as:`` (its pruner and options) and pruners that declare a ``table_note`` (controls, our
    reading of a method whose source could not be identified)."""
    from bench.runs.registry import get_pruner_class, load_pruners

    entries = {e.label: e for b in getattr(suite, "blocks", []) for e in b.pruners} if suite is not None else {}
    names = dict(zip(frame["label"], frame["pruner"])) if {"label", "pruner"} <= set(frame) else {}
    known = load_pruners()
    notes = {}
    for label in labels:
        entry = entries.get(label)
        name = entry.name if entry is not None else names.get(label, label)
        parts = []
        if label != name:
            options = ", ".join(f"{k}={v}" for k, v in sorted(entry.options.items())) if entry is not None else ""
            parts.append(name + (f" with {options}" if options else ""))
        note = get_pruner_class(name).table_note if name in known else None
        if name in known and "method_version" in frame and "label" in frame:  # rows of an earlier version
            versions = set(frame.loc[frame["label"] == label, "method_version"].astype(int))
            if len(versions) == 1:
                note = get_pruner_class(name).earlier_table_notes.get(versions.pop(), note)
        if note:
            parts.append(note)
        if parts:
            notes[label] = ": ".join(parts)
    return notes


def dense_mismatches(frame: pd.DataFrame) -> list[str]:
    """(task, seed)s whose rows report more than one dense test metric: their cells did not start
    from one dense checkpoint (a resumed suite whose dense model was retrained on another platform
    -- float kernels differ between CPUs -- or by other code), which the protocol requires."""
    if "dense_metric" not in frame or frame.empty:
        return []
    out = []
    for (task, seed), values in frame.dropna(subset=["dense_metric"]).groupby(["task", "seed"], sort=False)[
        "dense_metric"
    ]:
        distinct = sorted(set(values))
        if len(distinct) > 1:
            out.append(f"{task} seed {seed}: " + " / ".join(f"{v:g}" for v in distinct))
    return out


@dataclass
class Table:
    suite_name: str
    stats: pd.DataFrame
    columns: list[tuple[str, str, float]]
    labels: list[str]
    digits: int = 2
    mixed_dense: list[str] = field(default_factory=list)  # dense_mismatches of the rows
    row_notes: dict[str, str] = field(default_factory=dict)  # label -> what the row is (row_notes())
    cost: bool = False  # also render the cost view (cost_text): FLOPs kept and runtime latency ratios
    marks: str = "v3"  # the statistics behind the marks (module docstring)
    margin: float = MARGIN  # v3: the equivalence margin, metric points
    track: str = ""  # the protocol track of every row (TRACKS), '' for v1 rows; named in the title and notes

    def cell(self, label: str, column: tuple) -> pd.Series | None:
        s = self.stats
        task, pattern, sparsity = column
        match = s[(s["label"] == label) & (s["task"] == task) & (s["pattern"] == pattern) & (s["sparsity"] == sparsity)]
        return None if match.empty else match.iloc[0]

    def text(self, row: pd.Series | None, fmt: str) -> str:
        if row is None or pd.isna(row["mean"]):
            return "–" if fmt == "md" else "--"
        pm = " $\\pm$ " if fmt == "latex" else " ± "
        value = f"{row['mean']:.{self.digits}f}" + (f"{pm}{row['std']:.{self.digits}f}" if row["n"] >= 2 else "")
        if row["best"]:
            value = f"\\textbf{{{value}}}" if fmt == "latex" else f"**{value}**"
        if row["separated"]:
            value += "$^\\dagger$" if fmt == "latex" else "†"
        if self.marks == "v2" and row.get("within_noise", False):
            value += "$^\\approx$" if fmt == "latex" else "≈"
        if self.marks == "v3" and row.get("verdict") == "equivalent":
            value += "$^\\equiv$" if fmt == "latex" else "≡"
        if self.marks == "v3" and row.get("verdict") == "inconclusive":
            value += "$^?$" if fmt == "latex" else "?"
        if self.off_target(row):
            value += "$^\\ddagger$" if fmt == "latex" else "‡"
        if row.get("collapsed", 0):
            value += "$^\\S$" if fmt == "latex" else "§"
        if row["n"] < row["expected_n"]:
            value += f" (n={int(row['n'])})"
        return value

    def cost_text(self, row: pd.Series | None, fmt: str) -> str:
        """``F 0.52 · ORT 0.61 · OV 0.58``: mean FLOPs kept and runtime latency ratios (what is measured)."""
        parts = []
        for name, short in (("flops_kept", "F"), ("latency_ratio_ort", "ORT"), ("latency_ratio_ov", "OV")):
            value = None if row is None else row.get(name)
            if value is not None and not pd.isna(value):
                parts.append(f"{short} {value:.2f}")
        if not parts:
            return "–" if fmt == "md" else "--"
        return (" $\\cdot$ " if fmt == "latex" else " · ").join(parts)

    def cost_notes(self) -> list[str]:
        return [
            "Cost per cell, mean over seeds: F = forward FLOPs per sample of the kept weights ÷ the dense model's "
            "(torch.utils.flop_counter); ORT / OV = latency of the pruned ÷ the dense-shaped exported model at "
            "batch 1 in ONNX Runtime / OpenVINO on the CPU (`smartbench suite speed`), over the seeds measured; "
            "channel runs are exported physically shrunk, the other patterns keep dense shapes (docs/deploy.md)."
        ]

    @staticmethod
    def off_target(row: pd.Series) -> bool:
        if row["label"] == "dense" or bool(row.get("reference", False)):  # references prune nothing by design
            return False
        tolerance = row.get("sparsity_tolerance")
        tolerance = SPARSITY_TOLERANCE if tolerance is None or tolerance != tolerance else tolerance
        return abs(row["achieved_sparsity"] - row["sparsity"]) > tolerance

    def notes(self, fmt: str) -> list[str]:
        metrics = ", ".join(f"{t}: {m}" for t, m in self.stats.drop_duplicates("task")[["task", "metric_name"]].values)
        bold = "bold" if fmt == "latex" else "**bold**"
        if self.marks == "v2":
            notes = [
                f"Metric ({metrics}); mean ± std over seeds, (n=k) where fewer seeds than planned finished; {bold}: "
                f"best per column; †: the best beats the runner-up by a paired t-test over their shared seeds (same "
                f"dense checkpoint per seed), two-sided p < {ALPHA} (>= 2 shared seeds); ≈: not the best, but "
                f"within noise of it (the same paired test against the best gives p >= {ALPHA})."
            ]
        else:
            family = int(self.stats["p_holm"].notna().sum()) if "p_holm" in self.stats else 0
            notes = [
                f"Metric ({metrics}); mean ± std over seeds, (n=k) where fewer seeds than planned finished; {bold}: "
                f"best per column. Every other cell is compared with its column's best by a paired t-test over "
                f"their shared seeds (same dense checkpoint per seed; >= 2 seeds), Holm-corrected over the "
                f"{family} comparisons of this table: †: the best is separated from the runner-up (adjusted "
                f"p < {ALPHA}); ≡: equivalent to the best within ±{self.margin:g} points (paired TOST, p < {ALPHA}); "
                f"?: inconclusive, neither separated from the best nor equivalent to it (not separated is not "
                f"equal); no mark: separated from the best. The CSV has every difference, CI and p."
            ]
        if len(self.stats) and self.stats["collapsed"].fillna(0).astype(int).any():
            notes.append(
                "§: collapsed on k of n seeds -- the test metric is within 1 point of the task's trivial "
                "predictor (majority class, all background, no detections): "
                + "; ".join(
                    f"{r.label} on {r.task} {r.pattern} {r.sparsity:g}: {int(r.collapsed)} of {int(r.n)}"
                    for r in self.stats.itertuples()
                    if r.collapsed
                )
                + "."
            )
        if self.row_notes:
            notes.append("Rows: " + "; ".join(f"{label} = {text}" for label, text in self.row_notes.items()) + ".")
        if self.track in TRACK_NOTES:
            notes.append(TRACK_NOTES[self.track][0].upper() + TRACK_NOTES[self.track][1:] + ".")
        if self.mixed_dense:
            notes.append(
                "WARNING: rows of one (task, seed) report different dense test metrics, so their cells did "
                "not start from the same dense checkpoint (retrained on another platform or by other code): "
                + "; ".join(self.mixed_dense)
                + ". Rerun those cells from one dense model before comparing them."
            )
        off = self.stats[self.stats.apply(self.off_target, axis=1)] if len(self.stats) else self.stats
        for row in off.itertuples():
            notes.append(
                f"‡ {row.label} on {row.task} {row.pattern} {row.sparsity:g}: achieved sparsity "
                f"{row.achieved_sparsity:.4f} (target {row.sparsity:g})."
            )
        return notes

    def render(self, fmt: str) -> str:
        return {"md": self.markdown, "latex": self.latex, "csv": self.csv}[fmt]()

    def markdown(self) -> str:
        text = self._markdown(self.suite_name, self.text, self.notes("md"))
        if self.cost:
            text += "\n" + self._markdown(f"{self.suite_name}: cost", self.cost_text, self.cost_notes())
        return text

    def _markdown(self, title: str, cell_text, notes: list[str]) -> str:
        header = ["pruner"] + [f"{t} · {p} · {s:g}" for t, p, s in self.columns]
        body = [[label] + [cell_text(self.cell(label, col), "md") for col in self.columns] for label in self.labels]
        frame = pd.DataFrame(body, columns=header)
        lines = "\n".join(f"- {n}" for n in notes)
        return f"### {title}\n\n{frame.to_markdown(index=False)}\n\n{lines}\n"

    def latex(self) -> str:
        text = self._latex(self.suite_name, self.text, self.notes("latex"))
        if self.cost:
            text += "\n" + self._latex(f"{self.suite_name}: cost", self.cost_text, self.cost_notes())
        return text

    def _latex(self, title: str, cell_text, notes: list[str]) -> str:
        tasks = _runs([c[0] for c in self.columns])
        patterns = _runs([(c[0], c[1]) for c in self.columns])
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{latex_escape(title)}}}",
            "\\begin{tabular}{l" + "c" * len(self.columns) + "}",
            "\\toprule",
        ]
        for groups, name in ((tasks, lambda key: key), (patterns, lambda key: key[1])):
            cells, rules, start = [], [], 2
            for key, width in groups:
                cells.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(name(key))}}}")
                rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
                start += width
            lines += [" & " + " & ".join(cells) + " \\\\", " ".join(rules)]
        lines.append("pruner & " + " & ".join(f"{c[2]:g}" for c in self.columns) + " \\\\")
        lines.append("\\midrule")
        for i, label in enumerate(self.labels):
            cells = [cell_text(self.cell(label, col), "latex") for col in self.columns]
            lines.append(" & ".join([latex_escape(label)] + cells) + " \\\\")
            if i == 0 and label == "dense":
                lines.append("\\midrule")
        lines += ["\\bottomrule", "\\end{tabular}"]
        symbols = {
            "±": "$\\pm$",
            "†": "$^\\dagger$",
            "‡": "$^\\ddagger$",
            ">=": "$\\geq$",
            "≈": "$\\approx$",
            "≡": "$\\equiv$",
            "÷": "$\\div$",
            " < ": " $<$ ",
            "§": "\\S{}",
        }
        for note in notes:
            text = latex_escape(note)
            for symbol, tex in symbols.items():
                text = text.replace(symbol, tex)
            lines.append("\\par\\smallskip\\footnotesize " + text)
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        columns = KEYS + [
            "metric_name",
            "mean",
            "std",
            "n",
            "expected_n",
            "best",
            "separated",
            "p_value",
            "within_noise",
            "achieved_sparsity",
            "collapsed",
            *COST_FIELDS,
            *(V3_FIELDS if self.marks == "v3" else ()),
        ]
        return self.stats[columns].to_csv(index=False)


def _runs(keys: list) -> list[tuple[Any, int]]:
    """Consecutive equal keys -> (key, count)."""
    out: list[list] = []
    for key in keys:
        if out and out[-1][0] == key:
            out[-1][1] += 1
        else:
            out.append([key, 1])
    return [(k, n) for k, n in out]


def latex_escape(text: str) -> str:
    specials = {
        "\\": "\\textbackslash{}",
        "_": "\\_",
        "%": "\\%",
        "&": "\\&",
        "#": "\\#",
        "$": "\\$",
        "{": "\\{",
        "}": "\\}",
        "~": "\\textasciitilde{}",
        "^": "\\textasciicircum{}",
    }
    return re.sub(r"[\\_%&#${}~^]", lambda m: specials[m.group()], str(text))


def build_table(
    frame: pd.DataFrame, suite=None, cost: bool = False, marks: str | None = None, margin: float = MARGIN
) -> Table:
    """Statistics + ordering (columns and rows in the suite's order of first appearance); ``cost``:
    markdown and LaTeX also render the cost view (:meth:`Table.cost_text`); ``marks``: the suite's
    (``marks:`` in its file, v3 by default) unless given."""
    marks = marks or getattr(suite, "marks", "v3")
    tracks = tracks_in(frame)
    if len(tracks) > 1:
        from bench.core.errors import ConfigError

        raise ConfigError(
            "--track",
            f"the rows hold the tracks {', '.join(t or 'v1' for t in tracks)}: one table per track (--track NAME)",
        )
    stats = summarize(frame, suite, marks, margin)
    order = [c.column for c in suite.placed()] if suite is not None else []
    order += [tuple(r) for r in frame[["task", "pattern", "sparsity"]].itertuples(index=False)]
    task_rank = {t: i for i, t in enumerate(dict.fromkeys(c[0] for c in order))}
    pattern_rank = {p: i for i, p in enumerate(dict.fromkeys(c[1] for c in order))}
    present = set(map(tuple, stats[["task", "pattern", "sparsity"]].itertuples(index=False)))
    columns = sorted(
        dict.fromkeys(c for c in order if c in present), key=lambda c: (task_rank[c[0]], pattern_rank[c[1]], c[2])
    )
    declared = [e.label for b in getattr(suite, "blocks", []) for e in b.pruners] if suite is not None else []
    cells = [c.label for c in suite.cells] if suite is not None else []
    labels = list(dict.fromkeys(declared + cells + list(frame["label"])))  # the suite's pruner order
    labels = ["dense"] + [label for label in labels if label in set(stats["label"])]
    title = suite.name if suite is not None else "results"
    track = tracks[0] if marks == "v3" else ""  # v2 tables (leaderboard-v2, as committed) name no track
    return Table(
        f"{title} · {track} track" if track else title,
        stats,
        columns,
        labels,
        mixed_dense=dense_mismatches(frame),
        row_notes=row_notes([label for label in labels if label != "dense"], suite, frame),
        cost=cost,
        marks=marks,
        margin=margin,
        track=track,
    )
