"""The width-scaled from-scratch control: uniform width at the column's count, re-initialised,
trained with the dense recipe for the total epochs, independent of the dense weights, resumable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.api import prune
from bench.core.errors import ConfigError
from bench.core.masks import Masker, find_prunable
from bench.core.paths import RunPaths
from bench.core.select import Allocation
from bench.core.sparsity import parse_pattern
from bench.runs.registry import build_pruner
from bench.runs.run import RunSpec, execute, resolve
from bench.tasks.registry import get_task

QUIET = lambda _m: None  # noqa: E731
# restart schedule with finetune_lr = prune_lr / 2: the retraining lr multiplier is 0.5
BUDGET = {"prune_epochs": 1, "finetune_epochs": 1, "finetune_schedule": "restart", "finetune_lr": 0.01}


def test_every_layer_keeps_the_uniform_count_and_the_floor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 32, 3), nn.ReLU(), nn.Conv2d(32, 8, 3))
    pattern = parse_pattern("channel")
    masker = Masker(model, find_prunable(model, keep_first_last=False), pattern, torch.zeros(1, 3, 9, 9))
    pruner = build_pruner("scratch", pattern, 0.9, allocation=Allocation("global", 0.3))
    pruner.attach(masker.layers)
    kept = {name: int(mask.sum()) for name, mask in pruner.finalize().items()}
    # ceil(0.3 * 4) = 2 (the floor), round(0.1 * 32) = 3 < ceil(0.3 * 32) = 10 (the floor), 8: 3
    assert kept == {"0": 2, "2": 10, "4": 3}
    assert all(
        bool(mask[:k].all()) and not bool(mask[k:].any()) for mask, k in zip(pruner.finalize().values(), kept.values())
    )
    assert {n: bool((m > 0).eq(pruner.finalize()[n]).all()) for n, m in pruner.masks().items()} == dict.fromkeys(
        kept, True
    )


def test_a_users_loop_and_other_patterns_are_refused():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(ConfigError, match="re-initialised model"):
        prune(model, "scratch", "channel", 0.5, example_input=torch.zeros(1, 1, 8, 8), keep_first_last=False)
    with pytest.raises(ConfigError, match="does not support block:1x8"):
        build_pruner("scratch", parse_pattern("block:1x8"), 0.5)


def scratch_row(runs, dense_checkpoint=None, log=QUIET):
    spec = RunSpec("fmnist-tiny", "scratch", "channel", 0.5, 0, budget=BUDGET, dense_checkpoint=dense_checkpoint)
    return execute(resolve(spec), log=log, paths=RunPaths(runs), wandb=False)


def test_trains_the_seeds_initialisation_for_the_total_epochs_whatever_the_dense_weights(tmp_path):
    row = scratch_row(tmp_path / "a")
    # fmnist-tiny: 3 dense + 1 prune + 1 finetune epochs; dense lr 0.1 x (finetune_lr / prune_lr = 0.5)
    assert row["trained_from_scratch"] == {"epochs": 5, "lr": 0.05, "optimizer": "SGD"}
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"]
    assert "metric_before_finetune" not in row  # no hard switch: nothing before fine-tuning
    assert row["metric"] > 60.0  # it learned (majority class: 10.x)
    torch.manual_seed(7)
    other = tmp_path / "other-dense.pt"  # a "dense model" that is nothing like the trained one
    torch.save(get_task("fmnist-tiny").build_model().state_dict(), other)
    mine = scratch_row(tmp_path / "b", dense_checkpoint=str(other))
    assert mine["run_id"] != row["run_id"] and mine["dense_metric"] != row["dense_metric"]
    assert (mine["metric"], mine["val_metric"]) == (row["metric"], row["val_metric"])  # never saw the weights


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    whole = scratch_row(tmp_path / "whole")

    def die_in_epoch_three(message: str) -> None:
        if message.startswith("scratch epoch 3/"):
            raise KeyboardInterrupt  # after epoch 2's checkpoint, before epoch 3's

    with pytest.raises(KeyboardInterrupt):
        scratch_row(tmp_path / "killed", log=die_in_epoch_three)
    lines: list[str] = []
    resumed = scratch_row(tmp_path / "killed", log=lines.append)
    assert "resumed after epoch 2" in lines and not any(line.startswith("scratch epoch 1/") for line in lines)
    assert (resumed["metric"], resumed["val_metric"]) == (whole["metric"], whole["val_metric"])


def test_the_full_width_ceiling_is_the_scratch_recipe_at_sparsity_0_one_run_per_task_and_seed(shared_runs_dir):
    """``scratch-full``: the unpruned model, re-initialised, trained with scratch's recipe (same epochs,
    same lr); one run id whatever the column; it keeps every unit. It never sees the dense weights,
    so its numbers equal a plain dense-recipe training of the seed's initialisation for those epochs."""
    from bench.training.train import fit_dense, seed_everything

    specs = [
        RunSpec("fmnist-tiny", "scratch-full", pattern, sparsity, 0, budget=BUDGET)
        for pattern, sparsity in (("channel", 0.5), ("block:1x8", 0.9), ("nm:2:4", None))
    ]
    assert len({resolve(spec).run_id for spec in specs}) == 1
    row = execute(resolve(specs[0]), log=QUIET, paths=RunPaths(shared_runs_dir), wandb=False)  # the shared dense model
    assert row["trained_from_scratch"] == {"epochs": 5, "lr": 0.05, "optimizer": "SGD"}
    assert row["achieved_sparsity"] == 0.0
    task = get_task("fmnist-tiny")
    seed_everything(0)
    model = task.build_model()
    fit_dense(task, model, 5, 0, QUIET, lr=0.05)
    assert task.evaluate(model, "test") == row["metric"]
