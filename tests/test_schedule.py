"""The pruning + fine-tuning lr schedule (Budget.finetune_schedule): shared (v1), restart or hold."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.core.errors import ConfigError
from bench.runs.run import RunSpec, resolve
from bench.tasks.base import Budget
from bench.tasks.registry import get_task
from bench.training.train import make_optimizer, set_stage_lr

BUDGET = Budget(dense_epochs=1, prune_epochs=2, finetune_epochs=2, batch_size=8, lr=0.1, prune_lr=0.02)


def lrs(budget: Budget, prune_steps=10, total=20) -> list[float]:
    model = torch.nn.Linear(2, 2)
    task = get_task("fmnist-tiny")
    task.budget = budget
    optimizer = make_optimizer(model, task, budget.prune_lr, [])
    out = []
    for step in range(total):
        set_stage_lr(optimizer, step, prune_steps, total, budget)
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_shared_is_one_cosine_over_both_stages():
    got = lrs(BUDGET)
    assert got[0] == pytest.approx(0.02) and got[10] == pytest.approx(0.01)
    assert got == pytest.approx([0.01 * (1 + math.cos(math.pi * s / 20)) for s in range(20)])


def test_restart_gives_fine_tuning_its_own_cosine():
    got = lrs(dataclasses.replace(BUDGET, finetune_schedule="restart", finetune_lr=0.05))
    assert got[0] == pytest.approx(0.02) and got[9] == pytest.approx(0.01 * (1 + math.cos(math.pi * 9 / 10)))
    assert got[10] == pytest.approx(0.05)  # the fine-tuning stage starts at finetune_lr
    assert got[15] == pytest.approx(0.025)
    default = lrs(dataclasses.replace(BUDGET, finetune_schedule="restart"))
    assert default[10] == pytest.approx(0.02)  # finetune_lr defaults to prune_lr


def test_hold_keeps_the_fine_tuning_peak_for_half_then_decays():
    got = lrs(dataclasses.replace(BUDGET, finetune_schedule="hold", finetune_lr=0.05))
    assert got[:10] == pytest.approx(lrs(dataclasses.replace(BUDGET, finetune_schedule="restart"))[:10])
    assert got[10:15] == pytest.approx([0.05] * 5)  # 5 of the 10 fine-tuning steps at the peak
    assert got[15:] == pytest.approx([0.025 * (1 + math.cos(math.pi * s / 5)) for s in range(5)])


SPEC = RunSpec(task="fmnist-tiny", pruner="magnitude", pattern="block:1x8", sparsity=0.5)


def test_identity_v1_unchanged_and_schedule_part_of_it():
    v1 = resolve(SPEC)
    assert "finetune_schedule" not in v1.canonical["task"]["budget"]
    restart = resolve(dataclasses.replace(SPEC, budget={"finetune_schedule": "restart", "finetune_lr": 0.05}))
    assert restart.canonical["task"]["budget"]["finetune_schedule"] == "restart"
    assert restart.run_id != v1.run_id


@pytest.mark.parametrize(
    "budget,field",
    [
        ({"finetune_schedule": "cyclic"}, "budget.finetune_schedule"),
        ({"finetune_lr": 0.1}, "budget.finetune_lr"),  # without restart
        ({"finetune_schedule": "restart", "finetune_lr": -1}, "budget.finetune_lr"),
        ({"prune_epochs": 0}, "budget.prune_epochs"),
    ],
)
def test_bad_budgets_name_the_field(budget, field):
    with pytest.raises(ConfigError) as err:
        resolve(dataclasses.replace(SPEC, budget=budget))
    assert err.value.field == field


@pytest.mark.parametrize("family", ["SGD", "AdamW"])
def test_mmengine_restart_sets_the_native_lrs(family):
    """The mm hook drives a restart schedule with the native loop's set_stage_lr: the same lr at
    every iteration, for the weights and for a pruner's own group (scaled from its own peak), with
    either stage optimizer (AdamW's: the weights' AdamW and the pruner's SGD stepped as one)."""
    pytest.importorskip("mmengine")
    from types import SimpleNamespace

    from bench.training.mm_hook import PruningHook

    budget = dataclasses.replace(BUDGET, finetune_schedule="restart", finetune_lr=0.05)
    driver = SimpleNamespace(
        epochs=4,
        prune_steps=10,
        log=print,
        before_forward=lambda step, epoch: None,
        param_groups=lambda: [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2}],
        penalty=lambda: 0.0,
        after_optimizer_step=lambda optimizer: None,
    )
    hook = PruningHook(driver, budget)
    task = SimpleNamespace(budget=budget, stage_optimizer=family, dense_weight_decay=0.05)
    wrapper = hook.optim_wrapper(torch.nn.Linear(2, 2), task)
    runner = SimpleNamespace(optim_wrapper=wrapper, train_dataloader=[None] * 5, epoch=0, iter=0)
    weights, scores = [], []
    for step in range(20):
        runner.iter, runner.epoch = step, step // 5
        hook.before_train_iter(runner, step % 5)
        weights.append(wrapper.optimizer.param_groups[0]["lr"])
        scores.append(wrapper.optimizer.param_groups[1]["lr"])
    assert weights == pytest.approx(lrs(budget))
    assert scores == pytest.approx([10 * lr for lr in lrs(budget)])  # 0.2 / 0.02


def test_mmengine_restart_resolves():
    pytest.importorskip("mmseg")
    spec = RunSpec(task="scenes-seg-tiny", pruner="magnitude", pattern="channel", sparsity=0.5)
    run = resolve(dataclasses.replace(spec, budget={"finetune_schedule": "restart"}))
    assert run.task.budget.finetune_schedule == "restart"


@pytest.mark.parametrize("schedule", ["shared", "restart"])
def test_driver_lr_sum_is_the_sum_of_the_loops_lrs(schedule):
    """What a pruner is told of its recipe (Progress.lr_sum) is what the loop sets, step by step."""
    from bench.core.schedules import prune_lr_sum

    budget = dataclasses.replace(
        BUDGET, finetune_schedule=schedule, finetune_lr=0.05 if schedule == "restart" else None
    )
    assert prune_lr_sum(budget.prune_lr, 10, 20, schedule) == pytest.approx(sum(lrs(budget)[:10]))
