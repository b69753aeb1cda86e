"""Tables and plots from a synthetic store (rows in the schema bench.runs.run.execute writes)."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from bench.reports.plots import write_plots
from bench.reports.tables import build_table, paired_p, rows_from_store, rows_from_wandb, welch_p
from bench.runs.record import ResultStore
from bench.runs.run import RunSpec
from bench.suites.suite import Cell, Suite

TASK = "fmnist-resnet"
COLUMNS = [("block:1x8", 0.5), ("block:1x8", 0.9), ("channel", 0.5)]
LABELS = [("smart", "smart"), ("smart_adaptive", "smart"), ("magnitude", "magnitude")]
SEEDS = [0, 1, 2]
# metric per (label, pattern, sparsity) and seed; None = that seed has not finished
METRICS = {
    ("smart", "block:1x8", 0.5): [80.0, 81.0, 82.0],  # mean 81, std 1
    ("smart_adaptive", "block:1x8", 0.5): [79.0, 81.5, 79.5],  # mean 80: runner-up; paired diffs 1, -0.5, 2.5
    ("magnitude", "block:1x8", 0.5): [70.0, 71.0, 72.0],
    ("smart", "block:1x8", 0.9): [60.0, 70.0, None],  # mean 65, n=2
    ("smart_adaptive", "block:1x8", 0.9): [50.0, 52.0, 54.0],
    ("magnitude", "block:1x8", 0.9): [40.0, 42.0, 44.0],  # 65 vs 52: t = 1.80, p = 0.29 -> no mark
    ("smart", "channel", 0.5): [75.0, 76.0, 77.0],  # mean 76
    ("smart_adaptive", "channel", 0.5): [76.0, 75.0, 77.0],  # mean 76: tie, both bold
    ("magnitude", "channel", 0.5): [60.0, 61.0, 62.0],
}
DENSE = {0: 90.0, 1: 91.0, 2: 92.0}
PAS_LIKE = ("magnitude", "channel", 0.5)  # its achieved sparsity is off target


def run_id(label, pattern, sparsity, seed):
    return f"{label}-{pattern[0]}{int(sparsity * 10)}-{seed}"


def make_suite() -> Suite:
    suite = Suite("synthetic", Path("synthetic.yaml"), "", blocks=[])
    for pattern, sparsity in COLUMNS:
        for label, pruner in LABELS:
            for seed in SEEDS:
                spec = RunSpec(task=TASK, pruner=pruner, pattern=pattern, sparsity=sparsity, seed=seed)
                suite.cells.append(Cell(spec, label, run_id(label, pattern, sparsity, seed)))
    return suite


def make_row(label, pruner, pattern, sparsity, seed, metric) -> dict:
    achieved = 0.4713 if (label, pattern, sparsity) == PAS_LIKE else sparsity
    return {  # the schema of bench.runs.run.execute (+ suite)
        "run_id": run_id(label, pattern, sparsity, seed),
        "task": TASK,
        "family": "classification",
        "model": "resnet10t",
        "pruner": pruner,
        "pattern": pattern,
        "target_sparsity": sparsity,
        "metric_name": "top1",
        "seed": seed,
        "wall_s": 12.5,
        "pruner_config": {"scope": "global"},
        "budget": {"prune_epochs": 3},
        "provenance": {"git_sha": "x"},
        "metric": metric,
        "val_metric": metric - 1,
        "dense_metric": DENSE[seed],
        "dense_val_metric": DENSE[seed] - 1,
        "achieved_sparsity": achieved,
        "weight_sparsity": achieved,
        "pattern_valid": True,
        "prune_wall_s": 9.0,
        "audit": {
            "layers": [{"layer": "conv", "sparsity": achieved, "units": 10, "kept_units": round(10 * (1 - sparsity))}]
        },
        "suite": "synthetic",
    }


def synthetic_rows() -> list[dict]:
    rows = []
    pruner_of = dict(LABELS)
    for (label, pattern, sparsity), values in METRICS.items():
        for seed, metric in zip(SEEDS, values):
            if metric is not None:
                rows.append(make_row(label, pruner_of[label], pattern, sparsity, seed, metric))
    rows.append({**rows[0], "run_id": "not-in-suite"})  # another suite's row: dropped
    return rows


@pytest.fixture()
def store(tmp_path) -> ResultStore:
    store = ResultStore(tmp_path / "results.jsonl")
    for row in synthetic_rows():
        store.append(row)
    return store


def test_paired_p_pairs_by_seed():
    """The audit's point: a constant per-seed gap is separated even when seeds vary a lot (Welch is not)."""
    smart, pas = {0: 30.0, 1: 25.0, 2: 35.0}, {0: 28.0, 1: 23.5, 2: 33.0}  # seed spread ~5, gap ~2
    assert paired_p(smart, pas) == pytest.approx(ttest_rel([30, 25, 35], [28, 23.5, 33]).pvalue)
    assert paired_p(smart, pas) < 0.05 < welch_p(30, 5, 3, 28.17, 4.75, 3)
    assert paired_p({0: 1.0, 5: 2.0}, {0: 0.0, 1: 0.0}) is None  # one shared seed
    assert paired_p({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}) == 0.0 and paired_p({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}) == 1.0


def test_welch_p_matches_closed_form():
    # t = 1 with df = 2: two-sided p = 1 - 1/sqrt(3) (Student t with 2 df has a closed-form cdf)
    assert welch_p(81.0, 1.0, 2, 80.0, 1.0, 2) == pytest.approx(1 - 1 / math.sqrt(3), rel=1e-9)
    assert welch_p(81.0, 1.0, 3, 71.0, 1.0, 3) < 1e-3  # t = 12.2, df = 4
    assert welch_p(81.0, 1.0, 1, 71.0, 1.0, 3) is None  # one seed: no test
    assert welch_p(5.0, 0.0, 2, 4.0, 0.0, 2) == 0.0 and welch_p(5.0, 0.0, 2, 5.0, 0.0, 2) == 1.0


def test_frame_from_store_selects_suite_rows(store):
    frame = rows_from_store(make_suite(), store)
    assert len(frame) == sum(v is not None for values in METRICS.values() for v in values) == 26
    assert frame.attrs["dropped"] == 1
    assert set(frame["label"]) == {"smart", "smart_adaptive", "magnitude"}  # labels from the suite (as:)


def stats_of(table, label, pattern, sparsity):
    return table.cell(label, (TASK, pattern, sparsity))


def test_bold_mark_and_seed_counts(store):
    suite = make_suite()
    table = build_table(rows_from_store(suite, store), suite)
    assert table.labels == ["dense", "smart", "smart_adaptive", "magnitude"]
    assert table.columns == [(TASK, "block:1x8", 0.5), (TASK, "block:1x8", 0.9), (TASK, "channel", 0.5)]
    best = stats_of(table, "smart", "block:1x8", 0.5)
    assert best["mean"] == pytest.approx(81.0) and best["std"] == pytest.approx(1.0) and best["n"] == 3
    assert best["best"] and not best["separated"]  # paired diffs 1, -0.5, 2.5: t = 1.15, p = 0.37
    assert best["p_value"] == pytest.approx(ttest_rel([80.0, 81.0, 82.0], [79.0, 81.5, 79.5]).pvalue)
    high = stats_of(table, "smart", "block:1x8", 0.9)
    assert high["n"] == 2 and high["expected_n"] == 3 and high["best"]
    assert not high["separated"] and high["p_value"] > 0.05
    assert (
        stats_of(table, "smart", "channel", 0.5)["best"] and stats_of(table, "smart_adaptive", "channel", 0.5)["best"]
    )
    assert not stats_of(table, "magnitude", "channel", 0.5)["best"]
    dense = stats_of(table, "dense", "channel", 0.5)
    assert dense["mean"] == pytest.approx(91.0) and dense["n"] == 3 and not dense["best"]


def test_dagger_when_separated_beyond_seed_noise(store):
    suite = make_suite()
    frame = rows_from_store(suite, store)
    first = (frame["pattern"] == "block:1x8") & (frame["sparsity"] == 0.5)
    frame.loc[first & (frame["label"] == "smart_adaptive"), "metric"] -= 10.0  # runner-up: magnitude, 71 +- 1
    table = build_table(frame, suite)
    best = stats_of(table, "smart", "block:1x8", 0.5)
    assert best["separated"] and best["p_value"] == 0.0  # 10 points better on every seed (Welch: p < 1e-3 too)
    assert "**81.00 ± 1.00**†" in table.render("md")
    assert "\\textbf{81.00 $\\pm$ 1.00}$^\\dagger$" in table.render("latex")
    one_seed = frame[~first | (frame["seed"] == 0)]  # a single seed everywhere in that column: never a mark
    assert not stats_of(build_table(one_seed, suite), "smart", "block:1x8", 0.5)["separated"]


def test_markdown_cells(store):
    suite = make_suite()
    md = build_table(rows_from_store(suite, store), suite).render("md")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| pruner"))
    assert "fmnist-resnet · block:1x8 · 0.5" in header and "fmnist-resnet · channel · 0.5" in header
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| pruner")]
    assert rows[0].startswith("| dense") and "91.00 ± 1.00" in rows[0]
    smart = next(r for r in rows if r.startswith("| smart "))
    assert "**81.00 ± 1.00**" in smart and "**65.00 ± 7.07** (n=2)" in smart and "†" not in smart
    magnitude = next(r for r in rows if r.startswith("| magnitude"))
    assert "61.00 ± 1.00‡" in magnitude
    assert "‡ magnitude on fmnist-resnet channel 0.5: achieved sparsity 0.4713 (target 0.5)." in md
    assert "paired t-test over their shared seeds" in md
    seed0 = [r for r in rows_from_store(suite, store).to_dict("records") if r["seed"] == 0]
    lines = build_table(pd.DataFrame(seed0), suite).render("md").splitlines()
    assert any(line.startswith("| dense") and "90.00 (n=1)" in line for line in lines)  # 3 seeds planned


def test_latex_structure(store, tmp_path):
    suite = make_suite()
    tex = build_table(rows_from_store(suite, store), suite).render("latex")
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule") < tex.index("\\end{tabular}")
    assert "\\begin{tabular}{lccc}" in tex
    assert "smart\\_adaptive" in tex and "smart_adaptive" not in tex.replace("smart\\_adaptive", "")
    assert "\\multicolumn{3}{c}{fmnist-resnet}" in tex and "\\multicolumn{2}{c}{block:1x8}" in tex
    assert "\\textbf{81.00 $\\pm$ 1.00}" in tex and "$^\\ddagger$" in tex
    body = tex[tex.index("\\toprule") : tex.index("\\bottomrule")]
    for line in body.splitlines():
        if line.endswith("\\\\"):
            assert line.count(" & ") == 3 or "\\multicolumn" in line  # label + 3 columns
    if shutil.which("pdflatex"):
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}" + tex + "\\end{document}")
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, capture_output=True)
        assert result.returncode == 0, result.stdout[-2000:]


def test_csv_round_trip(store):
    suite = make_suite()
    text = build_table(rows_from_store(suite, store), suite).render("csv")
    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns[:4]) == ["label", "task", "pattern", "sparsity"]
    row = frame[(frame["label"] == "smart") & (frame["pattern"] == "block:1x8") & (frame["sparsity"] == 0.9)].iloc[0]
    assert row["mean"] == pytest.approx(65.0) and row["n"] == 2 and row["expected_n"] == 3 and bool(row["best"])
    assert len(frame) == 12  # 3 columns x (dense + 3 labels)


def test_plots_with_and_without_speed(store, tmp_path):
    suite = make_suite()
    frame = rows_from_store(suite, store)
    written = write_plots(frame, "synthetic", tmp_path / "plain")
    names = sorted(p.name for p in written)
    assert names == [
        "synthetic-cd.png",  # the critical-difference diagram over the 3 columns
        "synthetic-fmnist-resnet-block_1x8-0.5-allocation.png",
        "synthetic-fmnist-resnet-block_1x8-0.9-allocation.png",
        "synthetic-fmnist-resnet-block_1x8.png",
        "synthetic-fmnist-resnet-channel-0.5-allocation.png",
        "synthetic-fmnist-resnet-channel.png",
    ]
    assert frame["kept_by_layer"].iloc[0] == {"conv": pytest.approx(0.5)}  # from the row's audit
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    frame["latency_ms"] = 10.0 - 5.0 * frame["sparsity"]
    speed = write_plots(frame, "synthetic", tmp_path / "speed")
    assert "synthetic-fmnist-resnet-vs-latency_ms.png" in [p.name for p in speed]
    assert "synthetic-fmnist-resnet-vs-flops_masked.png" not in [p.name for p in speed]


class FakeRun:
    def __init__(self, row):
        self.id = row["run_id"]
        self.summary = {k: v for k, v in row.items() if isinstance(v, (int, float, str, bool))}  # what log_wandb writes


class FakeApi:
    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def runs(self, project, filters=None):
        self.calls.append((project, filters))
        return [FakeRun(r) for r in self.rows if r.get("suite") == filters["group"]]


def test_wandb_source_gives_the_store_frame(store):
    suite = make_suite()
    api = FakeApi(synthetic_rows())
    from_wandb = rows_from_wandb(suite, "me/smartbench", api=api)
    assert api.calls == [("me/smartbench", {"group": "synthetic"}), ("me/smartbench", {"group": "synthetic-tune"})]
    from_store = rows_from_store(suite, store)
    key = ["run_id"]
    assert all(kept == {} for kept in from_wandb["kept_by_layer"])  # W&B logs the audit as a Table, not a summary
    pd.testing.assert_frame_equal(
        from_wandb.sort_values(key).drop(columns="kept_by_layer").reset_index(drop=True),
        from_store.sort_values(key).drop(columns="kept_by_layer").reset_index(drop=True),
        check_dtype=False,
    )
    assert build_table(from_wandb, suite).render("md") == build_table(from_store, suite).render("md")
    assert re.search(r"\*\*81\.00 ± 1\.00\*\*", build_table(from_wandb, suite).render("md"))


def test_table_command_writes_files(tmp_path, runs_dir, capsys):
    import yaml

    from bench.cli.main import main
    from bench.suites.suite import load_and_expand

    gmp_fast = {"name": "gmp", "as": "gmp_fast", "options": {"update_every": 2}}
    spec = {
        "tasks": ["fmnist-tiny"],
        "pruners": ["magnitude", gmp_fast],
        "patterns": ["block:1x8"],
        "sparsities": [0.5, 0.75],
        "seeds": [0, 1],
        "allocation": {"policy": "global", "floor": 0.1},
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(spec))
    suite = load_and_expand(str(path))
    store = ResultStore()
    for i, cell in enumerate(suite.cells[:-1]):  # the last cell has not finished
        row = make_row(cell.label, cell.spec.pruner, cell.spec.pattern, cell.spec.sparsity, cell.spec.seed, 70.0 + i)
        store.append({**row, "run_id": cell.run_id, "task": "fmnist-tiny"})
    out = tmp_path / "tables"
    assert main(["table", str(path), "--format", "latex", "--out", str(out), "--plot"]) == 0
    tex = (out / "mini.tex").read_text()
    assert "gmp\\_fast" in tex and "(n=1)" in tex and "\\bottomrule" in tex
    assert (out / "mini-fmnist-tiny-block_1x8.png").exists()
    assert main(["table", str(path), "--format", "md"]) == 0
    printed = capsys.readouterr().out
    assert "| gmp_fast " in printed and "- Rows: gmp_fast = gmp with update_every=2." in printed
    # --by-task: one table per task (one task here, so the same numbers under the task's name)
    assert main(["table", str(path), "--format", "csv", "--out", str(out)]) == 0
    assert main(["table", str(path), "--format", "csv", "--out", str(out), "--by-task"]) == 0
    assert (out / "mini-fmnist-tiny.csv").read_text() == (out / "mini.csv").read_text()
    assert main(["table", str(path), "--format", "md", "--by-task"]) == 0
    assert "### mini · fmnist-tiny" in capsys.readouterr().out
    # --raw commits the complete rows; --rows regenerates the same table from them without the store
    assert main(["table", str(path), "--format", "md", "--out", str(out), "--raw"]) == 0
    raw = [json.loads(line) for line in (out / "mini.rows.jsonl").read_text().splitlines()]
    assert [r["run_id"] for r in raw] == [c.run_id for c in suite.cells[:-1]]
    assert raw[0]["label"] == suite.cells[0].label and "audit" in raw[0] and raw[0]["provenance"]
    assert all(r["allocation"] == {"policy": "global", "floor": 0.1, "ranking": "raw"} for r in raw)  # the cell's
    table_md = (out / "mini.md").read_text()
    store.path.unlink()
    assert main(["table", str(path), "--format", "md"]) == 1  # the store is empty now
    capsys.readouterr()
    assert main(["table", str(path), "--format", "md", "--rows", str(out / "mini.rows.jsonl")]) == 0
    assert capsys.readouterr().out == table_md
    assert main(["table", str(path), "--rows", str(out / "absent.jsonl")]) == 2
    assert "error: --rows: no such file" in capsys.readouterr().err
    assert main(["table", str(path), "--raw"]) == 2
    assert "error: --raw: needs --out" in capsys.readouterr().err


def test_nomask_control_is_a_reference_row(store):
    """The no-mask control (dense trained on for the same epochs) keeps everything: it is shown,
    but it neither takes the bold best nor gets the achieved-sparsity mark."""
    suite = make_suite()
    frame = rows_from_store(suite, store)
    control = frame[frame["label"] == "smart"].copy()
    control["label"], control["pruner"] = "nomask", "nomask"
    control["metric"], control["achieved_sparsity"] = 99.0, 0.0
    control["run_id"] = control["run_id"] + "-nomask"
    table = build_table(pd.concat([frame, control], ignore_index=True), suite)
    cell = stats_of(table, "nomask", "block:1x8", 0.5)
    assert cell["mean"] == 99.0 and not cell["best"] and cell["reference"]
    assert stats_of(table, "smart", "block:1x8", 0.5)["best"]
    md = table.render("md")
    assert "| nomask" in md and "99.00" in md and "‡ nomask" not in md


def test_within_noise_marks_rows_the_paired_test_cannot_separate_from_the_best(store):
    """The v2 marks (raw paired p; what the committed leaderboard-v2 tables show)."""
    suite = make_suite()
    table = build_table(rows_from_store(suite, store), suite, marks="v2")
    # block 0.5: smart_adaptive's per-seed gaps to smart are 1, -0.5, 2.5 (p = 0.37); magnitude's 10, 10, 10
    assert bool(stats_of(table, "smart_adaptive", "block:1x8", 0.5)["within_noise"])
    assert not bool(stats_of(table, "magnitude", "block:1x8", 0.5)["within_noise"])
    # block 0.9: smart has seeds 0, 1 only; gaps 10, 18 (p = 0.18) and 20, 28 (p = 0.11)
    assert bool(stats_of(table, "magnitude", "block:1x8", 0.9)["within_noise"])
    assert not bool(stats_of(table, "smart", "block:1x8", 0.9)["within_noise"])  # the best itself
    assert "≈" in table.render("md") and "$^\\approx$" in table.render("latex")


def test_mean_ranks_and_win_tie_loss(store):
    from bench.reports.ranks import mean_ranks, summary_markdown, win_tie_loss

    frame = rows_from_store(make_suite(), store)
    ranks = mean_ranks(frame).set_index("label")
    # ranks per column: block 0.5 (1, 2, 3), block 0.9 (1, 2, 3), channel 0.5 (1.5, 1.5, 3: a tie)
    assert ranks.loc["smart", "mean_rank"] == pytest.approx(3.5 / 3)
    assert ranks.loc["smart_adaptive", "mean_rank"] == pytest.approx(5.5 / 3)
    assert ranks.loc["magnitude", "mean_rank"] == 3.0 and ranks.loc["magnitude", "ci_low"] == 3.0
    assert (
        1.0 <= ranks.loc["smart", "ci_low"] <= ranks.loc["smart", "mean_rank"] <= ranks.loc["smart", "ci_high"] <= 1.5
    )
    wtl = win_tie_loss(frame, "smart").set_index("against")
    # against magnitude: constant gaps of 10 and 15 are wins; gaps 20, 28 over 2 seeds are not separated (p = 0.11)
    assert wtl.loc["magnitude", ["win", "tie", "loss", "columns"]].tolist() == [2, 1, 0, 3]
    assert wtl.loc["smart_adaptive", ["win", "tie", "loss"]].tolist() == [0, 3, 0]
    text = summary_markdown(frame, "synthetic", marks="v2")
    assert "| magnitude | 3 | 2 | 1 | 0 | 0 / 0 / 0 |" in text
    assert "- fmnist-resnet: test top1 90.00 / 91.00 / 92.00 (seeds 0, 1, 2; spread 2.00)" in text
    # per column (scipy.stats.ttest_rel): block 0.5 smart vs smart_adaptive, diffs 1, -0.5, 2.5: p = 0.368;
    # block 0.9, 2 shared seeds (60, 70 vs 50, 52): p = 0.177; channel 0.5 is a tie of means (no test)
    assert "in 0 of the 2 columns where they share >= 2 seeds (3 columns in all). Collapsed cells: 0." in text
    assert "| fmnist-resnet · block:1x8 · 0.5 | smart (3) | smart_adaptive | 0.368 | – | 0 |" in text
    assert "| fmnist-resnet · block:1x8 · 0.9 | smart (2) | smart_adaptive | 0.177 | – | 0 |" in text
    alone = frame[(frame["label"] == "smart") | (frame["pattern"] != "channel")]  # one competing label
    assert "| fmnist-resnet · channel · 0.5 | smart (3) | – | – | – | 0 |" in summary_markdown(
        alone, "synthetic", marks="v2"
    )
    as_random = frame.assign(label=frame["label"].replace("magnitude", "random"))
    assert "| fmnist-resnet · channel · 0.5 | smart (3) | smart_adaptive | – | 3 of 3 | 0 |" in summary_markdown(
        as_random, "synthetic", marks="v2"
    )


def test_v3_summary_friedman_and_holm_verdicts(store):
    """Friedman over the 3 columns all 3 labels have (ranks 1, 2, 3 / 1, 2, 3 / 1.5, 1.5, 3), the
    Nemenyi CD, and smart's verdicts against each label Holm-corrected over its 6 comparisons."""
    from scipy.stats import friedmanchisquare

    from bench.reports.ranks import friedman_ranks, summary_markdown, verdicts_against

    frame = rows_from_store(make_suite(), store)
    result = friedman_ranks(frame)
    means = {
        label: [np.mean([v for v in METRICS[(label, p, s)] if v is not None]) for p, s in COLUMNS]
        for label, _ in LABELS
    }
    assert result.statistic == pytest.approx(friedmanchisquare(*[[-m for m in v] for v in means.values()]).statistic)
    assert result.mean_ranks == pytest.approx({"smart": 3.5 / 3, "smart_adaptive": 5.5 / 3, "magnitude": 3.0})
    assert result.cd == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 3)), abs=2e-3)
    verdicts = verdicts_against(frame, "smart").set_index("against")
    assert verdicts.attrs["family"] == 6
    # magnitude: p = 0 at block 0.5 and channel (constant gaps) -> 2 wins; block 0.9 (p 0.105 x 4) inconclusive
    assert verdicts.loc["magnitude", ["win", "loss", "equivalent", "inconclusive"]].tolist() == [2, 0, 0, 1]
    # smart_adaptive: nothing separated; channel 0.5 (diffs -1, 1, 0: mean 0, sd 1) not within +-0.5 by TOST
    assert verdicts.loc["smart_adaptive", ["win", "loss"]].tolist() == [0, 0]
    text = summary_markdown(frame, "synthetic")
    assert "over the 3 columns every one of the 3 competing pruners has" in text
    assert "| magnitude | 3 | 2 | 0 | 0 | 1 | 0 |" in text and "Holm p" in text


def test_a_task_whose_dense_reference_is_not_at_a_plateau_stays_out_of_the_v3_aggregates(store, monkeypatch):
    """Rows whose dense reference trained fewer epochs than the task's plateau recipe
    (Task.dense_plateau_epochs): no Friedman ranks nor win/loss over their columns, which keep their
    per-column lines; at or above it, or unmeasured: they enter."""
    from bench.reports.ranks import aggregated, summary_markdown
    from bench.tasks.registry import load_tasks

    frame = rows_from_store(make_suite(), store)
    (task,) = set(frame["task"])
    assert aggregated(frame)[1] == [] and len(aggregated(frame)[0]) == len(frame)
    monkeypatch.setattr(load_tasks()[task], "dense_plateau_epochs", 8)
    assert aggregated(frame)[1] == [task]  # these synthetic rows record no budget: not known to be at 8
    frame["dense_epochs"] = 8  # what a real row's budget gives
    assert aggregated(frame)[1] == [] and len(aggregated(frame)[0]) == len(frame)
    monkeypatch.setattr(load_tasks()[task], "dense_plateau_epochs", 9)
    kept, out = aggregated(frame)
    assert out == [task] and kept.empty
    text = summary_markdown(frame, "synthetic")
    assert (
        f"Left out of the aggregates below (their columns stay in the tables and the per-column lines): {task}" in text
    )
    assert "Friedman" not in text and "against each pruner" not in text
    assert "Holm p" in text  # the per-column summary is still there


def test_a_task_without_signal_stays_out_of_the_v3_aggregates(store, monkeypatch):
    """Task.no_signal (issue 32 item 6): the declared patterns' columns keep their per-column lines,
    the summary says why they are not in the Friedman ranks nor the win/loss counts; "*" declares
    every pattern. fmnist-vit declares 2:4 and 1:4, not 1:8 (the v3 column pilot)."""
    from bench.reports.ranks import summary_markdown, without_signal
    from bench.tasks.registry import load_tasks

    assert set(load_tasks()["fmnist-vit"].no_signal) == {"nm:2:4", "nm:1:4"}
    frame = rows_from_store(make_suite(), store)
    (task,) = set(frame["task"])
    pattern = sorted(set(frame["pattern"]))[0]
    assert without_signal(frame)[1] == {} and "Friedman" in summary_markdown(frame, "synthetic")
    monkeypatch.setattr(load_tasks()[task], "no_signal", {"nm:2:4": "another pattern"})
    kept, why = without_signal(frame)
    assert len(kept) == len(frame) and why == {}
    monkeypatch.setattr(load_tasks()[task], "no_signal", {pattern: "every pruner within the noise"})
    kept, why = without_signal(frame)
    assert kept.equals(frame[frame["pattern"] != pattern]) and len(kept) < len(frame)
    assert why == {f"{task} {pattern}": "every pruner within the noise"}
    text = summary_markdown(frame, "synthetic")
    assert f"Left out of the aggregates below: {task} {pattern} -- its columns carry no signal" in text
    assert "Holm p" in text
    monkeypatch.setattr(load_tasks()[task], "no_signal", {"*": "data-limited"})
    kept, why = without_signal(frame)
    assert kept.empty and why == {task: "data-limited"}
    text = summary_markdown(frame, "synthetic")
    assert f"Left out of the aggregates below: {task} -- its columns carry no signal" in text
    assert "Friedman" not in text and "Holm p" in text


def test_mean_rank_ci_ignores_row_order_and_other_labels():
    """A store rewritten in another order (rows replaced in place vs appended) gives the same
    summary; a label's CI does not move when another label joins or leaves the frame."""
    from bench.reports.ranks import mean_ranks

    rng = np.random.default_rng(3)
    rows = [
        {
            "task": "t",
            "pattern": "block:1x8",
            "sparsity": s,
            "label": label,
            "pruner": label,
            "seed": seed,
            "metric_name": "top1",
            "metric": base + rng.normal(),
        }
        for s in np.linspace(0.3, 0.95, 20).round(4)
        for label, base in (("a", 80.0), ("b", 80.3), ("c", 79.7), ("d", 80.6), ("f", 80.1))
        for seed in range(3)
    ]
    frame = pd.DataFrame(rows)
    first = mean_ranks(frame).set_index("label")
    assert first["ci_low"].lt(first["ci_high"]).any()  # the ranks vary over the columns: a real interval
    shuffled = mean_ranks(frame.sample(frac=1.0, random_state=7).reset_index(drop=True)).set_index("label")
    pd.testing.assert_frame_equal(first, shuffled.loc[first.index])
    # a label that is last everywhere leaves the others' ranks, and so their CIs, as they were
    last = frame[frame["label"] == "d"].assign(label="e", metric=0.0)
    joined = mean_ranks(pd.concat([last, frame], ignore_index=True)).set_index("label")
    pd.testing.assert_frame_equal(first, joined.loc[first.index])


def test_one_seed_columns_are_untested_not_won():
    from bench.reports.ranks import win_tie_loss

    frame = pd.DataFrame(
        [
            {
                "label": lab,
                "pruner": lab,
                "task": TASK,
                "pattern": "channel",
                "sparsity": 0.5,
                "seed": 0,
                "metric": m,
                "metric_name": "top1",
            }
            for lab, m in (("smart", 70.0), ("pas", 60.0))
        ]
    )
    row = win_tie_loss(frame).iloc[0]
    assert (row["win"], row["untested_better"]) == (0, 1)


def test_pareto_and_allocation_figures(store, tmp_path):
    from bench.reports.plots import STYLES, pareto_front, style

    assert pareto_front([(0.5, 70.0), (0.4, 72.0), (0.6, 71.0), (0.4, 60.0)]) == [(0.4, 72.0)]
    assert pareto_front([(0.2, 50.0), (0.5, 60.0), (0.9, 80.0)]) == [(0.2, 50.0), (0.5, 60.0), (0.9, 80.0)]
    assert style("smart")["color"] == STYLES["smart"][0] and style("my-pruner") == style("my-pruner")
    frame = rows_from_store(make_suite(), store)
    frame["flops_dense"] = 100.0
    frame["flops_masked"] = 100.0 * (1 - frame["sparsity"])
    frame["kept_by_layer"] = [{"a": 1 - s, "b": 0.5} for s in frame["sparsity"]]
    names = sorted(p.name for p in write_plots(frame, "synthetic", tmp_path / "all"))
    assert "synthetic-fmnist-resnet-pareto-flops.png" in names
    assert "synthetic-fmnist-resnet-channel-0.5-allocation.png" in names
    assert sum(n.endswith("-allocation.png") for n in names) == 3  # one per column


def test_rows_follow_the_suites_pruner_order(store):
    """A label whose first cell comes late (srste: N:M columns only) still sits where the suite lists it."""
    from types import SimpleNamespace

    from bench.suites.suite import PrunerEntry

    suite = make_suite()
    order = [
        PrunerEntry("magnitude", "magnitude"),
        PrunerEntry("smart", "smart_adaptive"),
        PrunerEntry("smart", "smart"),
    ]
    suite.blocks = [SimpleNamespace(pruners=order)]
    table = build_table(rows_from_store(suite, store), suite)
    assert table.labels == ["dense", "magnitude", "smart_adaptive", "smart"]


def test_rows_from_two_dense_models_of_one_seed_are_flagged(store):
    """A resumed suite whose dense model was retrained elsewhere: the table says so, naming where."""
    suite = make_suite()
    frame = rows_from_store(suite, store)
    assert "WARNING" not in build_table(frame, suite).render("md")  # one dense model per (task, seed)
    first = frame.index[frame["seed"] == 1][0]
    frame.loc[first, "dense_metric"] = DENSE[1] + 0.37
    md = build_table(frame, suite).render("md")
    assert "WARNING: rows of one (task, seed) report different dense test metrics" in md
    assert f"{TASK} seed 1: {DENSE[1]:g} / {DENSE[1] + 0.37:g}" in md


def test_rows_that_a_name_would_not_explain_are_noted():
    from bench.reports.tables import row_notes

    frame = pd.DataFrame(
        {"label": ["awg", "random", "smart_fast", "magnitude"], "pruner": ["awg", "random", "smart", "magnitude"]}
    )
    notes = row_notes(["awg", "random", "smart_fast", "magnitude"], None, frame)
    assert notes["awg"].startswith("our W-Gates reading") and "could not be identified" in notes["awg"]
    assert notes["random"].startswith("control: random unit scores")
    assert notes["smart_fast"] == "smart" and "magnitude" not in notes


def test_provenance_summary_counts_rows_per_code_version_and_platform():
    from bench.reports.tables import provenance_markdown

    def row(sha, dirty, model, when):
        prov = {"git_sha": sha, "git_dirty": dirty, "cpu": "x86_64", "cpu_model": model, "cpu_capability": "AVX512"}
        return {"provenance": {**prov, "torch": "2.14.1", "threads": 1, "finished_at": when}, "device": "cpu"}

    rows = [
        row("abcdef123", False, "Xeon", "2026-12-05T10:00:00Z"),
        row("abcdef123", True, "Xeon", "2026-12-05T09:00:00Z"),
    ]
    rows.append(row("0123456789", False, "EPYC", "2026-12-06T08:00:00Z"))
    text = provenance_markdown(rows, "s")
    assert "### s: provenance of the 3 rows" in text
    assert "- 1 row(s) at abcdef1 (uncommitted changes)" in text and "- 1 row(s) at 0123456" in text
    assert "- 2 row(s) on Xeon AVX512, torch 2.14.1, 1 thread(s), device cpu" in text
    rows[2]["provenance"]["git_tags"] = ["leaderboard-v3"]
    assert "- 1 row(s) at 0123456 (tag leaderboard-v3)" in provenance_markdown(rows, "s")
    assert "- finished between 2026-12-05T09:00:00Z and 2026-12-06T08:00:00Z" in text
    assert "- worker time 0.00 h" in text  # no wall_s in these rows
    rows[0]["wall_s"], rows[1]["wall_s"] = 3600.0, 1800.0
    assert "- worker time 1.50 h (the rows' wall_s summed" in provenance_markdown(rows, "s")


def test_v3_marks_holm_over_the_table_and_tost(store):
    """Every non-best cell against its column's best; Holm over the 5 comparisons of the table:
    raw p 0.368 (smart_adaptive, block 0.5: diffs -1, 0.5, -2.5), 0 (magnitude, block 0.5: -10 on
    every seed), 0.177 and 0.105 (block 0.9 over seeds 0, 1), 0 (magnitude, channel: -15 on every
    seed) -> adjusted 0.368, 0, 0.354, 0.315, 0."""
    suite = make_suite()
    table = build_table(rows_from_store(suite, store), suite)
    adaptive = stats_of(table, "smart_adaptive", "block:1x8", 0.5)
    assert adaptive["diff_to_best"] == pytest.approx(-1.0)
    half = 4.302652729911275 * 1.5 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (adaptive["ci_low"], adaptive["ci_high"]) == pytest.approx((-1 - half, -1 + half))
    assert adaptive["p_vs_best"] == pytest.approx(ttest_rel([79, 81.5, 79.5], [80, 81, 82]).pvalue)
    assert adaptive["p_holm"] == pytest.approx(adaptive["p_vs_best"])  # the largest p: x1
    assert adaptive["verdict"] == "inconclusive"
    assert stats_of(table, "magnitude", "block:1x8", 0.5)["verdict"] == "worse"
    p9 = ttest_rel([40, 42], [60, 70]).pvalue
    assert stats_of(table, "magnitude", "block:1x8", 0.9)["p_holm"] == pytest.approx(3 * p9)
    assert stats_of(table, "magnitude", "channel", 0.5)["verdict"] == "worse"
    for pattern, sparsity in COLUMNS:  # no best is separated after Holm (channel: a tie for best)
        assert not any(bool(stats_of(table, label, pattern, sparsity)["separated"]) for label, _ in LABELS)
    md = table.render("md")
    assert "?" in next(line for line in md.splitlines() if line.startswith("| smart_adaptive "))
    assert "†" not in md.split("\n- ")[0] and "Holm-corrected over the 5 comparisons" in md
    assert "≡" not in md.split("\n- ")[0]
    wide = build_table(rows_from_store(suite, store), suite, margin=5.0)  # TOST p 0.022 within +-5 points
    assert stats_of(wide, "smart_adaptive", "block:1x8", 0.5)["verdict"] == "equivalent"
    assert "**81.00 ± 1.00**" in wide.render("md") and "80.00 ± 1.32≡" in wide.render("md")
    header = table.render("csv").splitlines()[0].split(",")
    assert header[-8:] == ["diff_to_best", "ci_low", "ci_high", "p_vs_best", "p_holm", "tost_p", "verdict", "mde"]
    assert "$^?$" in table.render("latex")


def test_tracks_are_named_and_never_mixed(store):
    """Cells under uniform allocation form the criterion track, global (and transplants) the
    allocation track; a table holds one track and names it in its title and notes."""
    from bench.core.errors import ConfigError
    from bench.reports.tables import frame_from_rows, track_of, tracks_in

    assert [track_of(a) for a in (None, "uniform", {"policy": "global"}, {"policy": "from", "source": "x"})] == [
        "",
        "criterion",
        "allocation",
        "allocation",
    ]
    suite = Suite("tracked", Path("tracked.yaml"), "", blocks=[])
    rows = []
    for policy in ("uniform", "global"):
        for row in synthetic_rows()[:-1]:
            spec = RunSpec(
                task=TASK,
                pruner=row["pruner"],
                pattern=row["pattern"],
                sparsity=row["target_sparsity"],
                seed=row["seed"],
                allocation={"policy": policy, "floor": 0.0},
            )
            label = next(
                lab for (lab, p, s), vals in METRICS.items() if row["run_id"] == run_id(lab, p, s, row["seed"])
            )
            suite.cells.append(Cell(spec, label, f"{policy}-{row['run_id']}"))
            rows.append({**row, "run_id": f"{policy}-{row['run_id']}"})
    frame = frame_from_rows(rows, suite)
    assert tracks_in(frame) == ["criterion", "allocation"]
    with pytest.raises(ConfigError, match="one table per track"):
        build_table(frame, suite)
    table = build_table(frame[frame["track"] == "criterion"], suite)
    md = table.render("md")
    assert (
        md.startswith("### tracked · criterion track") and "Criterion track: every layer keeps the same fraction" in md
    )
    assert "Allocation track" in build_table(frame[frame["track"] == "allocation"], suite).render("md")


def test_a_flops_budget_row_is_held_to_its_target_within_one_unit(tmp_path):
    """``budget: flops`` rows: ‡ only when the achieved FLOPs sparsity is off by more than the dearest
    unit's share of the covered FLOPs (the selection is exact to within one unit); params rows keep
    the fixed tolerance."""

    def notes(name, achieved):
        store = ResultStore(tmp_path / f"{name}.jsonl")
        for row in synthetic_rows():
            if (row["pattern"], row["target_sparsity"], row["pruner"]) == ("channel", 0.5, "smart"):
                row = {**row, "budget_kind": "flops", "achieved_flops_sparsity": achieved[row["seed"] % 2]}
                layer = {**row["audit"]["layers"][0], "flops_per_unit": 5.0}  # one unit: 5 / 1000 = 0.005
                row["audit"] = {**row["audit"], "flops_covered": 1000.0, "layers": [layer]}
            store.append(row)
        return build_table(rows_from_store(make_suite(), store), make_suite()).notes("md")

    assert not any("smart on fmnist-resnet channel 0.5" in note for note in notes("within", (0.501, 0.503)))
    assert "‡ smart on fmnist-resnet channel 0.5: achieved sparsity 0.5200 (target 0.5)." in notes("off", (0.52, 0.52))


def test_a_transplant_row_is_not_held_to_the_columns_target(store):
    """A transplant keeps its source's per-layer counts; a source at matched FLOPs leaves it at another
    unit sparsity than the column's (SMART at block 90% FLOPs: 94.2% of the units), which is no miss."""
    import dataclasses

    suite = make_suite()
    for cell in suite.cells:  # every label a transplant: one track in the table
        cell.spec = dataclasses.replace(cell.spec, allocation={"policy": "from", "source": "abc"})
    rows = [dict(r, achieved_sparsity=0.95) if r["pruner"] == "magnitude" else r for r in store.rows()]
    other = ResultStore(store.path.with_name("transplant.jsonl"))
    for row in rows:
        other.append(row)
    notes = build_table(rows_from_store(suite, other), suite).notes("md")
    assert not any(note.startswith("‡ magnitude") for note in notes)
    assert any(
        note.startswith("‡ magnitude")
        for note in build_table(rows_from_store(make_suite(), other), make_suite()).notes("md")
    )


def test_a_label_on_both_tracks_plans_its_seeds_once_per_track(store):
    """The same label and column on the criterion and the allocation track (two cells per seed):
    a track's table expects 3 seeds, not 6, so complete cells carry no (n=k)."""
    import dataclasses

    suite = make_suite()
    for cell in list(suite.cells):
        suite.cells.append(Cell(dataclasses.replace(cell.spec, allocation="uniform"), cell.label, cell.run_id + "-u"))
    md = build_table(rows_from_store(suite, store), suite).render("md")
    assert "81.00 ± 1.00" in md and "(n=3)" not in md and "(n=2)" in md  # smart block 0.9 has 2 of 3 seeds


def test_drop_figure_zooms_past_collapsed_cells_on_a_log_flops_axis(tmp_path):
    """Two columns (FLOPs kept 0.5 and 0.125): smart drops 1 and 3 points, magnitude 2 and 60 (its
    0.125 cell collapsed on one seed); the axis spans the others' range, not -60, and the collapsed
    cell sits on its lower edge; nomask is a horizontal line; the x axis is logarithmic."""
    import matplotlib.pyplot as plt

    from bench.reports.plots import drop, drop_points, zoom

    records = []
    for label, pruner, drops in (
        ("smart", "smart", (1, 3)),
        ("magnitude", "magnitude", (2, 60)),
        ("nomask", "nomask", (-0.2, -0.2)),
    ):
        for (sparsity, kept), d in zip(((0.5, 0.5), (0.875, 0.125)), drops):
            for seed, noise in zip((0, 1, 2), (-0.1, 0.0, 0.1)):
                records.append(
                    dict(
                        label=label,
                        pruner=pruner,
                        task="fmnist-resnet-lite",
                        pattern="channel",
                        sparsity=sparsity,
                        seed=seed,
                        metric=90.0 - d + noise,
                        metric_name="top1",
                        dense_metric=90.0,
                        flops_dense=100.0,
                        flops_masked=100.0 * kept if pruner != "nomask" else 100.0,
                        collapsed=(label == "magnitude" and sparsity == 0.875 and seed == 0),
                    )
                )
    frame = pd.DataFrame.from_records(records)
    points = drop_points(frame)
    smart = points[points["label"] == "smart"].set_index("sparsity")
    assert smart.loc[0.875, "mean"] == pytest.approx(-3.0) and smart.loc[0.875, "kept"] == pytest.approx(0.125)
    low, high, outside = zoom(points)
    assert (
        list(points[outside]["label"]) == ["magnitude"] and -3.5 < low < -3.1 and 0.3 < high < 0.6
    )  # -3.1 .. +0.3, padded 8 %
    ((name, fig),) = list(drop(frame, "s"))
    assert name == "s-fmnist-resnet-lite-channel-drop.png"
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylim() == pytest.approx((low, high))
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["-60.0"] and "collapsed" in ax.get_title()
    nomask = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert nomask == [pytest.approx(0.2)]  # 0.2 above dense, every column
    plt.close(fig)
