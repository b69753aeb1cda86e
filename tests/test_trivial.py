"""The trivial predictor of every task and the `collapsed` flag (rows, tables)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_tables import make_row, make_suite  # noqa: E402  (the synthetic suite of the table tests)

from bench.core.paths import RunPaths
from bench.reports.tables import build_table
from bench.runs.run import COLLAPSE_MARGIN, RunSpec, execute, resolve
from bench.tasks.registry import get_task


def test_classification_trivial_is_the_majority_class():
    task = get_task("fmnist-tiny")
    labels = task.splits["test"][1].tolist()
    majority = max(labels.count(c) for c in set(labels))
    assert task.trivial_metric() == pytest.approx(100.0 * majority / len(labels))
    assert 10.0 <= task.trivial_metric() < 20.0  # ten roughly balanced classes


def test_detection_trivial_is_zero():
    pytest.importorskip("mmdet")
    assert get_task("scenes-det-tiny").trivial_metric() == 0.0


@pytest.mark.slow
def test_rows_carry_the_trivial_metric_and_the_flag(runs_dir):
    run = resolve(
        RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5, 0, budget={"prune_epochs": 1, "finetune_epochs": 0})
    )
    row = execute(run, log=lambda _m: None, paths=RunPaths(runs_dir))
    assert row["trivial_metric"] == pytest.approx(run.task.trivial_metric(), abs=1e-4)
    assert row["collapsed"] is (row["metric"] <= row["trivial_metric"] + COLLAPSE_MARGIN)
    assert row["collapsed"] is False  # 50% block pruning of fmnist-tiny keeps ~80% top-1


def test_tables_mark_collapsed_cells_and_count_them():
    suite = make_suite()
    rows = []
    for cell in suite.cells:
        metric = 11.0 if cell.label == "magnitude" and cell.spec.pattern == "channel" else 80.0 + cell.spec.seed
        row = make_row(cell.label, cell.spec.pruner, cell.spec.pattern, cell.spec.sparsity, cell.spec.seed, metric)
        row["collapsed"] = metric <= 10.0 + COLLAPSE_MARGIN if cell.spec.seed < 2 else False
        rows.append(row)
    from bench.reports.tables import frame_from_rows

    table = build_table(frame_from_rows(rows, suite), suite)
    md = table.render("md")
    marked = [line for line in md.splitlines() if "§" in line]
    assert any(line.startswith("| magnitude") for line in marked)
    assert "magnitude on fmnist-resnet channel 0.5: 2 of 3" in md
    assert not any(line.startswith("| smart ") for line in marked)
    assert "\\S{}" in table.render("latex")
    csv = pd.read_csv(__import__("io").StringIO(table.render("csv")))
    assert int(csv[(csv.label == "magnitude") & (csv.pattern == "channel")]["collapsed"].iloc[0]) == 2


@pytest.mark.mm
def test_segmentation_trivial_equals_the_evaluator_on_a_constant_predictor(monkeypatch, tmp_path_factory):
    """mmseg's own IoUMetric, fed the most frequent class at every pixel, gives trivial_metric()."""
    pytest.importorskip("mmseg")
    from mm_micro import MicroSeg
    from mmengine.structures import PixelData

    from bench.tasks import base, registry

    monkeypatch.setenv("SMARTBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))
    registry.load_tasks()
    monkeypatch.setitem(base.TASKS, MicroSeg.name, MicroSeg)
    task = registry.get_task("micro-seg")
    counts = torch.zeros(256, dtype=torch.long)
    for batch in task.dataloader("test"):
        for sample in batch["data_samples"]:
            labels = sample.gt_sem_seg.data.flatten().long()
            counts += torch.bincount(labels[labels != 255], minlength=256)[:256]
    majority = int(counts.argmax())

    class Constant(torch.nn.Module):
        def test_step(self, batch):
            samples = batch["data_samples"]
            for sample in samples:
                sample.pred_sem_seg = PixelData(data=torch.full_like(sample.gt_sem_seg.data, majority))
            return samples

    assert task.evaluate(Constant(), "test") == pytest.approx(task.trivial_metric(), abs=0.01)


@pytest.mark.slow
def test_metric_before_finetune_is_recorded_and_survives_a_resume(tmp_path, monkeypatch):
    """The test metric right after the hard switch; a run killed during fine-tuning resumes with it."""
    from bench.training.train import PruneTrainer

    budget = {"prune_epochs": 1, "finetune_epochs": 2}
    spec = RunSpec("fmnist-tiny", "gmp", "channel", 0.5, 0, budget=budget)
    clean = execute(resolve(spec), log=lambda _m: None, paths=RunPaths(tmp_path / "a"))
    assert isinstance(clean["metric_before_finetune"], float) and clean["metric_before_finetune"] != clean["metric"]

    original = PruneTrainer._save

    def killed_after_first_finetune_epoch(self, optimizer, epochs_done):
        original(self, optimizer, epochs_done)
        if epochs_done == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(PruneTrainer, "_save", killed_after_first_finetune_epoch)
    with pytest.raises(KeyboardInterrupt):
        execute(resolve(spec), log=lambda _m: None, paths=RunPaths(tmp_path / "b"))
    monkeypatch.setattr(PruneTrainer, "_save", original)
    lines: list[str] = []
    resumed = execute(resolve(spec), log=lines.append, paths=RunPaths(tmp_path / "b"))
    assert "resumed after epoch 2" in lines
    for key in ("metric_before_finetune", "metric", "val_metric"):
        assert resumed[key] == clean[key]

    no_finetune = RunSpec("fmnist-tiny", "gmp", "channel", 0.5, 0, budget={"prune_epochs": 1, "finetune_epochs": 0})
    row = execute(resolve(no_finetune), log=lambda _m: None, paths=RunPaths(tmp_path / "a"))
    assert row["metric_before_finetune"] == row["metric"]
