"""One recipe per task (protocol v3, issue 32 item 3): the pruning and fine-tuning stages train the
weights with the dense recipe's optimizer family (bench.training.optim)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from bench.core.errors import ConfigError
from bench.runs.run import RunSpec, configured_task, dense_key, resolve
from bench.tasks.registry import get_task
from bench.training.optim import StageOptimizer, stage_optimizer
from bench.training.train import make_optimizer


def _params(seed: int):
    torch.manual_seed(seed)
    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4))]
    scores = [torch.nn.Parameter(torch.randn(5))]
    return weights, scores


def _grads(params, step: int):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def test_adamw_stages_step_the_weights_with_adamw_and_the_pruner_groups_with_sgd():
    """The combined optimizer equals a plain AdamW on the weights and a plain SGD on the scores, step
    for step, and an lr set through its param_groups (the schedules') reaches both."""
    weights, scores = _params(0)
    combined = stage_optimizer(
        "AdamW", weights, [{"params": scores, "lr": 0.5, "momentum": 0.9}], 1e-3, 0.9, 5e-4, 0.05
    )
    assert isinstance(combined, StageOptimizer)
    assert [g["base_lr"] for g in combined.param_groups] == [1e-3, 0.5]
    ref_w, ref_s = _params(0)
    adamw = torch.optim.AdamW([{"params": ref_w}], lr=1e-3, weight_decay=0.05)
    sgd = torch.optim.SGD([{"params": ref_s}], lr=0.5, momentum=0.9, weight_decay=0.0)
    for step in range(3):
        for group, ref in zip(combined.param_groups, (adamw.param_groups[0], sgd.param_groups[0])):
            group["lr"] = ref["lr"] = group["base_lr"] * (1 - 0.25 * step)
        _grads(weights + scores, step)
        _grads(ref_w + ref_s, step)
        combined.step()
        adamw.step()
        sgd.step()
    for got, want in zip(weights + scores, ref_w + ref_s):
        assert torch.equal(got, want)
    assert "exp_avg" in combined.state[weights[0]] and "momentum_buffer" in combined.state[scores[0]]


def test_stage_optimizer_resumes_bit_identically():
    """state_dict -> load_state_dict into a fresh optimizer, then the same steps: the same weights."""
    weights, scores = _params(1)
    opt = stage_optimizer("AdamW", weights, [{"params": scores, "lr": 0.1}], 1e-3, 0.9, 0.0, 0.05)
    for step in range(2):
        _grads(weights + scores, step)
        opt.step()
    state = copy.deepcopy(opt.state_dict())  # as a checkpoint on disk: torch's holds live tensors
    copies = [torch.nn.Parameter(p.detach().clone()) for p in weights + scores]
    resumed = stage_optimizer("AdamW", copies[:2], [{"params": copies[2:], "lr": 0.1}], 1e-3, 0.9, 0.0, 0.05)
    resumed.load_state_dict(state)
    for step in range(2, 4):
        _grads(weights + scores, step)
        _grads(copies, step)
        opt.step()
        resumed.step()
    for got, want in zip(copies, weights + scores):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="not a StageOptimizer checkpoint"):
        resumed.load_state_dict(torch.optim.SGD(copies, lr=0.1).state_dict())


def test_sgd_stages_are_the_v2_optimizer():
    """An SGD recipe builds one torch SGD over the weights and the pruner's groups, as before v3."""
    weights, scores = _params(2)
    opt = stage_optimizer("SGD", weights, [{"params": scores, "lr": 0.5}], 0.02, 0.9, 5e-4, 0.05)
    assert type(opt) is torch.optim.SGD
    assert [(g["lr"], g["base_lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [
        (0.02, 0.02, 0.9, 5e-4),
        (0.5, 0.5, 0.9, 5e-4),
    ]


def test_the_stage_optimizer_follows_the_dense_recipe_and_enters_the_identity():
    vit, tiny = get_task("fmnist-vit-tiny"), get_task("fmnist-tiny")
    assert (vit.dense_optimizer, vit.stage_optimizer) == ("AdamW", "AdamW")
    assert vit.identity()["budget"]["stage_optimizer"] == "AdamW"
    assert tiny.stage_optimizer == "SGD" and "stage_optimizer" not in tiny.identity()["budget"]  # SGD ids unchanged
    opt = make_optimizer(vit.build_model(), vit, vit.budget.prune_lr, [])
    assert isinstance(opt, StageOptimizer) and opt.param_groups[0]["weight_decay"] == vit.dense_weight_decay
    # the v1 / v2 recipe on request: SGD stages, the id without the field; one dense model for both
    spec = RunSpec(task="fmnist-vit-tiny", pruner="magnitude", pattern="nm:2:4")
    v2 = configured_task(dataclasses.replace(spec, budget={"stage_optimizer": "SGD", "prune_lr": 0.01}))
    assert v2.stage_optimizer == "SGD" and "stage_optimizer" not in v2.identity()["budget"]
    assert v2.budget.prune_lr == 0.01
    assert type(make_optimizer(v2.build_model(), v2, v2.budget.prune_lr, [])) is torch.optim.SGD
    assert dense_key(v2, 0) == dense_key(vit, 0)
    assert resolve(spec).run_id != resolve(dataclasses.replace(spec, budget={"stage_optimizer": "SGD"})).run_id


@pytest.mark.parametrize(
    ("budget", "field", "message"),
    [
        ({"stage_optimizer": "Adam"}, "budget.stage_optimizer", "'Adam' is not one of dense, SGD"),
        ({"prune_lr": 0}, "budget.prune_lr", "must be a number > 0"),
        ({"prune_lr": True}, "budget.prune_lr", "must be a number > 0"),
    ],
)
def test_bad_stage_overrides_name_the_field(budget, field, message):
    spec = RunSpec(task="fmnist-vit-tiny", pruner="magnitude", pattern="nm:2:4", budget=budget)
    with pytest.raises(ConfigError, match=message) as err:
        resolve(spec)
    assert err.value.field == field


def test_the_checkpointed_state_holds_adamw_moments_and_the_pruner_groups_sgd_momentum():
    """make_optimizer on the AdamW ViT: what a stage checkpoint stores has AdamW's moments for the
    weights and an SGD momentum buffer for a pruner's group."""
    task = get_task("fmnist-vit-tiny")
    model = task.build_model()
    scores = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(model, task, task.budget.prune_lr, [{"params": scores, "lr": 0.05, "momentum": 0.9}])
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad) + scores[0].sum()
    loss.backward()
    opt.step()
    state = opt.state_dict()["parts"]
    assert set(state[0]["state"][0]) >= {"exp_avg", "exp_avg_sq"} and "momentum_buffer" in state[1]["state"][0]


def test_acdc_momentum_reset_zeroes_adamws_first_moment():
    """AC/DC's reset at a D start reaches AdamW's first moment (the stages' momentum under an AdamW
    recipe) and the pruner groups' SGD buffers; AdamW's second moment is kept."""
    from types import SimpleNamespace

    from baselines.acdc import ACDCPruner

    weights, scores = _params(3)
    opt = stage_optimizer("AdamW", weights, [{"params": scores, "lr": 0.1}], 1e-3, 0.9, 0.0, 0.05)
    _grads(weights + scores, 0)
    opt.step()
    ACDCPruner.reset_momentum(SimpleNamespace(config=SimpleNamespace(momentum_reset="all")), opt)
    for p in weights:
        assert not opt.state[p]["exp_avg"].any() and opt.state[p]["exp_avg_sq"].any()
    assert not opt.state[scores[0]]["momentum_buffer"].any()


def test_mmengine_schedules_the_stage_optimizer():
    """mmengine's OptimWrapper and param schedulers accept the AdamW stages' optimizer (its base-lr
    tracking reads ``defaults["lr"]``) and scale both parts' groups."""
    pytest.importorskip("mmengine")
    from mmengine.optim import CosineAnnealingLR, OptimWrapper

    weights, scores = _params(4)
    opt = stage_optimizer("AdamW", weights, [{"params": scores, "lr": 0.1}], 1e-3, 0.9, 0.0, 0.05)
    scheduler = CosineAnnealingLR(OptimWrapper(opt), T_max=2, by_epoch=False)
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 0.05])
    assert [g["lr"] for g in opt.parts[0].param_groups + opt.parts[1].param_groups] == pytest.approx([5e-4, 0.05])
