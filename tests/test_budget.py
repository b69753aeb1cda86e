"""A FLOPs budget (``--budget flops``): the target sparsity counts the covered layers' forward FLOPs,
and every pruner keeps units in its own ranking order until the kept cost meets it to within one
unit (bench.core.select.global_topk, smart.topk.soft_topk_cost, bench.core.costs)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench.core.costs import unit_costs
from bench.core.errors import ConfigError
from bench.core.select import Allocation, global_topk, hard_topk, protocol_floor
from bench.core.sparsity import parse_pattern
from smart.topk import soft_select, soft_topk_cost

CHANNEL = parse_pattern("channel")


def test_global_topk_keeps_the_ranking_prefix_nearest_the_cost_budget():
    scores = {"cheap": torch.tensor([9.0, 8.0, 1.0, 0.5]), "dear": torch.tensor([7.0, 6.0, 5.0])}
    costs = {"cheap": 1.0, "dear": 10.0}
    # floors: the best of each layer (9 and 7: cost 11); then 8 (12), 6 (22), 5 (32), 1 (33), 0.5 (33.5)
    masks = global_topk(scores, 0, None, costs, 21.0)  # 22 is nearer 21 than 12
    assert masks["cheap"].tolist() == [True, True, False, False] and masks["dear"].tolist() == [True, True, False]
    masks = global_topk(scores, 0, None, costs, 15.0)  # 12 is nearer 15 than 22
    assert masks["cheap"].tolist() == [True, True, False, False] and masks["dear"].tolist() == [True, False, False]
    masks = global_topk(scores, 0, None, costs, 100.0)  # more than everything: everything
    assert all(bool(m.all()) for m in masks.values())


def test_hard_topk_flops_budget_is_exact_to_half_a_unit_and_uniform_is_unchanged():
    gen = torch.Generator().manual_seed(0)
    scores = {
        "a": torch.rand(64, generator=gen),
        "b": torch.rand(16, generator=gen),
        "c": torch.rand(32, generator=gen),
    }
    costs = {"a": 3.0, "b": 40.0, "c": 7.0}
    total = sum(costs[n] * s.numel() for n, s in scores.items())
    for sparsity in (0.3, 0.5, 0.8):
        rule = Allocation("global", 0.05, budget="flops").with_costs(costs)
        masks = hard_topk(scores, CHANNEL, sparsity, allocation=rule, comparable=True)
        kept = sum(costs[n] * int(m.sum()) for n, m in masks.items())
        assert abs(kept - (1 - sparsity) * total) <= max(costs.values()) / 2
        by_units = hard_topk(scores, CHANNEL, sparsity, allocation=Allocation("global", 0.05), comparable=True)
        assert any(not torch.equal(masks[n], by_units[n]) for n in scores)  # the costs changed the choice
        uniform = Allocation("uniform", 0.05, budget="flops").with_costs(costs)
        same = hard_topk(scores, CHANNEL, sparsity, allocation=uniform)
        plain = hard_topk(scores, CHANNEL, sparsity, allocation=Allocation("uniform", 0.05))
        assert all(torch.equal(same[n], plain[n]) for n in scores)


def test_allocation_identity_and_errors():
    assert Allocation("global", 0.1, ranking="mixed").to_dict() == {"policy": "global", "floor": 0.1}  # v2's ids
    assert Allocation("global", 0.1, budget="flops").to_dict()["budget"] == "flops"
    assert Allocation.from_value({"policy": "global", "budget": "flops"}).budget == "flops"
    assert Allocation("global", budget="flops").with_costs({"x": 1.0}) == Allocation("global", budget="flops")
    with pytest.raises(ConfigError, match="budget: 'macs' is not one of params, flops"):
        Allocation("global", budget="macs")
    with pytest.raises(ConfigError, match="allowed: policy, floor, budget"):
        Allocation.from_value({"policy": "global", "cost": "flops"})
    with pytest.raises(ConfigError, match="without measured unit costs"):
        hard_topk({"a": torch.rand(8)}, CHANNEL, 0.5, allocation=Allocation("global", budget="flops"))
    assert protocol_floor(0.5) == 0.1 and protocol_floor(0.9) == 0.05 and protocol_floor(0.98) == 0.01


def test_soft_topk_cost_meets_the_budget_and_its_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(12, dtype=torch.float64, generator=gen)
    costs = torch.tensor([1.0, 1, 1, 1, 4, 4, 4, 4, 9, 9, 9, 9], dtype=torch.float64)
    soft = soft_topk_cost(scores, costs, 20.0, 0.5)
    assert float((soft * costs).sum()) == pytest.approx(20.0, abs=1e-9)
    weights = torch.randn(12, dtype=torch.float64, generator=gen)
    torch.autograd.gradcheck(  # t moves with the scores: the implicit-function gradient
        lambda s: (soft_topk_cost(s, costs, 20.0, 0.5) * weights).sum(), (scores.clone().requires_grad_(),)
    )
    leaf = scores.clone().requires_grad_()
    soft = soft_topk_cost(leaf, costs, 20.0, 0.5, detach_t=True)
    (soft * weights).sum().backward()  # detach_t: t held constant, d/ds sigmoid(s / tau + t) only
    assert torch.allclose(leaf.grad, weights * soft * (1 - soft) / 0.5)
    # equal costs: the exact-k soft top-k
    from smart.topk import soft_topk

    equal = soft_topk_cost(scores, torch.full_like(scores, 3.0), 3.0 * 5, 0.5)
    assert torch.allclose(equal, soft_topk(scores, 5, 0.5), atol=1e-9)


def test_soft_select_under_a_flops_budget_keeps_cost_and_floors():
    gen = torch.Generator().manual_seed(2)
    scores = {
        "low": torch.randn(40, generator=gen, dtype=torch.float64) - 3,
        "high": torch.randn(24, generator=gen, dtype=torch.float64),
    }
    costs = {"low": 2.0, "high": 5.0}
    rule = Allocation("global", 0.25, budget="flops").with_costs(costs)
    masks, soft = soft_select(scores, CHANNEL, 0.5, "global", 0.3, allocation=rule)
    total = 40 * 2.0 + 24 * 5.0
    kept = sum(costs[n] * float(m.sum()) for n, m in masks.items())
    assert kept == pytest.approx(0.5 * total, abs=1e-6)
    assert float(masks["low"].sum()) >= rule.minimum(40) - 1e-6  # the floor holds the low-scored layer


def test_unit_costs_are_the_layers_flops_per_unit():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1))
    costs = unit_costs(model, {"0": 4, "2": 8}, torch.zeros(2, 1, 8, 8))
    assert costs["0"] == pytest.approx(2 * 9 * 1 * 64)  # per output channel: 2 * k*k*in * positions
    assert costs["2"] == pytest.approx(2 * 9 * 4 * 16)


def test_run_with_a_flops_budget_meets_it_to_one_unit(shared_runs_dir, monkeypatch, capsys):
    """The issue's check: smart, block:1x8, --budget flops, sparsity 0.75 on fmnist-tiny."""
    from bench.cli.main import main

    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    args = ["run", "--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "block:1x8", "--budget", "flops"]
    assert main(args + ["--sparsity", "0.75", "--prune-epochs", "1", "--finetune-epochs", "0", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    audit = row["audit"]
    assert row["budget_kind"] == "flops" and row["allocation"] == {
        "policy": "global",
        "floor": 0.1,
        "budget": "flops",
        "ranking": "raw",
    }
    dearest = max(layer["flops_per_unit"] for layer in audit["layers"])
    assert abs(audit["flops_kept"] - 0.25 * audit["flops_covered"]) <= dearest / 2 + 1
    assert row["achieved_flops_sparsity"] == pytest.approx(0.75, abs=dearest / audit["flops_covered"])
    assert all(layer["kept_units"] >= max(1, 0.1 * layer["units"] - 1e-9) for layer in audit["layers"])
