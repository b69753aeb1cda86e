"""The width-scaled from-scratch control: uniform width at the column's count, re-initialised,
trained with the dense recipe for the dense + prune epochs, then fine-tuned as every label is (the
retraining lr multiplier on that stage only), independent of the dense weights, resumable."""

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


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return scratch_row(tmp_path_factory.mktemp("whole"))


def test_trains_the_seeds_initialisation_for_the_total_epochs_whatever_the_dense_weights(tmp_path, whole):
    row = whole  # the uninterrupted run the resume tests compare with
    # fmnist-tiny: 3 dense + 1 prune epochs from scratch at the dense lr 0.1 (no multiplier), then
    # 1 fine-tuning epoch at finetune_lr 0.01 (the multiplier 0.5 x prune_lr 0.02)
    assert row["trained_from_scratch"] == {"epochs": 4, "lr": 0.1, "optimizer": "SGD", "finetune_epochs": 1}
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"]
    assert "metric_before_finetune" not in row  # no hard switch: nothing before fine-tuning
    assert row["metric"] > 60.0  # it learned (majority class: 10.x)
    torch.manual_seed(7)
    other = tmp_path / "other-dense.pt"  # a "dense model" that is nothing like the trained one
    torch.save(get_task("fmnist-tiny").build_model().state_dict(), other)
    mine = scratch_row(tmp_path / "b", dense_checkpoint=str(other))
    assert mine["run_id"] != row["run_id"] and mine["dense_metric"] != row["dense_metric"]
    assert (mine["metric"], mine["val_metric"]) == (row["metric"], row["val_metric"])  # never saw the weights


@pytest.mark.parametrize(
    "dies_at, resumed_after",
    [("scratch epoch 3/", "resumed after epoch 2"), ("finetune epoch 1/", "resumed after epoch 4")],
    ids=["in-the-from-scratch-part", "in-the-fine-tuning-stage"],
)
def test_a_killed_run_resumes_to_the_same_result(tmp_path, whole, dies_at, resumed_after):
    def die(message: str) -> None:
        if message.startswith(dies_at):
            raise KeyboardInterrupt  # before that epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        scratch_row(tmp_path, log=die)
    lines: list[str] = []
    resumed = scratch_row(tmp_path, log=lines.append)
    assert resumed_after in lines and not any(line.startswith("scratch epoch 1/") for line in lines)
    assert (resumed["metric"], resumed["val_metric"]) == (whole["metric"], whole["val_metric"])


def test_the_full_width_ceiling_is_the_scratch_recipe_at_sparsity_0_one_run_per_task_and_seed(shared_runs_dir):
    """``scratch-full``: the unpruned model, re-initialised, trained with scratch's recipe (same epochs,
    same lrs); one run id whatever the column; it keeps every unit. It never sees the dense weights,
    so its numbers equal a plain dense-recipe training of the seed's initialisation for the dense +
    prune epochs followed by the fine-tuning stage of every label (``nomask``'s, from that model)."""
    from bench.training.stages import StageDriver
    from bench.training.train import PruneTrainer, fit_dense, seed_everything

    specs = [
        RunSpec("fmnist-tiny", "scratch-full", pattern, sparsity, 0, budget=BUDGET)
        for pattern, sparsity in (("channel", 0.5), ("block:1x8", 0.9), ("nm:2:4", None))
    ]
    assert len({resolve(spec).run_id for spec in specs}) == 1
    row = execute(resolve(specs[0]), log=QUIET, paths=RunPaths(shared_runs_dir), wandb=False)  # the shared dense model
    assert row["trained_from_scratch"] == {"epochs": 4, "lr": 0.1, "optimizer": "SGD", "finetune_epochs": 1}
    assert row["achieved_sparsity"] == 0.0
    run = resolve(RunSpec("fmnist-tiny", "nomask", "channel", 0.5, 0, budget=BUDGET))
    task = run.task  # the budget's stage fields applied
    seed_everything(0)
    model = task.build_model()
    task.initialise(model)
    fit_dense(task, model, 4, 0, QUIET, lr=0.1)
    masker = Masker(model, list(run.unit_counts), parse_pattern("channel"), task.masker_example(model, []))
    pruner = build_pruner(
        "nomask", parse_pattern("channel"), 0.5, allocation=Allocation.from_value(run.spec.allocation)
    )
    driver = StageDriver(pruner, masker, 0, 1, QUIET, budget=task.budget)
    driver.setup(task.calibration_batches(), task.forward)
    PruneTrainer(task, model, driver, 0, None, QUIET).run()
    assert task.evaluate(model, "test") == row["metric"]


def test_the_v2_recipe_stays_available_as_method_version_1(tmp_path):
    """``scratch_recipe: single`` (leaderboard v2 declares it): one dense-recipe cosine over every
    epoch at the dense lr times the retraining multiplier, no fine-tuning stage; its run id is the
    one v2's rows carry (no method_version in it), the default's is not."""
    single = RunSpec("fmnist-tiny", "scratch", "channel", 0.5, 0, budget=BUDGET | {"scratch_recipe": "single"})
    run = resolve(single)
    assert "method_version" not in run.canonical and "scratch_recipe" not in run.canonical["task"]["budget"]
    stages = resolve(RunSpec("fmnist-tiny", "scratch", "channel", 0.5, 0, budget=BUDGET))
    assert stages.canonical["method_version"] == 2 and stages.run_id != run.run_id
    lines: list[str] = []
    row = execute(run, log=lines.append, paths=RunPaths(tmp_path), wandb=False)
    assert row["trained_from_scratch"] == {"epochs": 5, "lr": 0.05, "optimizer": "SGD"} and row["method_version"] == 1
    assert not any(line.startswith("finetune epoch") for line in lines)
    with pytest.raises(ConfigError, match="budget.scratch_recipe: 'twice' is not one of stages, single"):
        resolve(RunSpec("fmnist-tiny", "scratch", "channel", 0.5, 0, budget={"scratch_recipe": "twice"}))
