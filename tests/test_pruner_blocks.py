"""The shared building blocks of pruners: declared state, select / keep_above (N:M inside),
the straight-through helper, HardMaskPruner, schedules, SMART's soft dispatch."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import smart.topk as topk_module
from bench.core.masks import PrunableLayer
from bench.core.pruner import Pruner, PrunerConfig
from bench.core.pruning_blocks import HardMaskPruner, straight_through
from bench.core.schedules import (
    COMPRESSED,
    DECOMPRESSED,
    DENSE,
    AdaptiveTau,
    ExponentialTau,
    LinearRamp,
    OneShot,
    PhasePlan,
    PolynomialRamp,
    StaircaseRamp,
    phase_plan,
)
from bench.core.select import Allocation, hard_topk, keep_count, nm_keep, top_indices
from bench.core.sparsity import parse_pattern
from bench.runs.registry import load_pruners
from smart.topk import soft_select


def layers(*shapes: tuple[int, int], pattern: str = "unstructured") -> list[PrunableLayer]:
    torch.manual_seed(0)
    pat = parse_pattern(pattern)
    out = []
    for i, (rows, cols) in enumerate(shapes):
        module = nn.Linear(cols, rows, bias=False)
        out.append(PrunableLayer(f"block{i}.fc", module, unit_shape=pat.unit_shape(module.weight.shape)))
    return out


def weights_only_copy(state):
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    return torch.load(blob, weights_only=True)


# -- declared state ---------------------------------------------------------------------------


class Counter(AdaptiveTau):
    pass


class Base(Pruner):
    state_attrs = ("scores",)

    def __init__(self, config, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.gates = {"a.b": nn.Parameter(torch.zeros(3))}
        self.scores: dict[str, torch.Tensor] = {}

    def parameters(self):
        return list(self.gates.values())


class Child(Base):
    state_attrs = ("step", "phase", "plan", "tau", "scores")

    def __init__(self, config, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.step, self.phase, self.plan = 0, "dense", [(0, 1, "dense")]
        self.tau = Counter(1.0, 0.01, 2.0)


def test_declared_state_round_trips_through_weights_only_load():
    pattern = parse_pattern("unstructured")
    pruner = Child(PrunerConfig(), pattern, 0.5)
    with torch.no_grad():
        pruner.gates["a.b"].add_(1.5)
    pruner.scores = {"a.b": torch.arange(4.0), "c": torch.ones(2, dtype=torch.bool)}
    pruner.step, pruner.phase, pruner.plan = 7, "compressed", [(0, 3, "dense"), (3, 9, "compressed")]
    pruner.tau.step(10, 0.5)
    state = pruner.state_dict()
    assert list(state) == ["parameters", "scores", "step", "phase", "plan", "tau"]  # base class first, once each
    assert state["tau"] == {"tau": pruner.tau.tau}
    fresh = Child(PrunerConfig(), pattern, 0.5)
    fresh.load_state_dict(weights_only_copy(state))
    assert torch.equal(fresh.gates["a.b"], pruner.gates["a.b"])
    assert fresh.step == 7 and fresh.phase == "compressed" and fresh.plan == pruner.plan
    assert fresh.tau.tau == pruner.tau.tau and isinstance(fresh.tau, Counter)
    assert all(torch.equal(fresh.scores[k], pruner.scores[k]) for k in pruner.scores)
    pruner.scores["a.b"].add_(1)  # the state is a copy, not a view
    assert state["scores"]["a.b"][0] == 0


def test_missing_attribute_keeps_its_value_and_plain_pruners_save_parameters_only():
    fresh = Child(PrunerConfig(), parse_pattern("unstructured"), 0.5)
    fresh.load_state_dict({"parameters": [torch.ones(3)], "step": 3})  # written before "phase" existed
    assert fresh.step == 3 and fresh.phase == "dense" and torch.equal(fresh.gates["a.b"].detach(), torch.ones(3))
    assert Pruner(PrunerConfig(), parse_pattern("unstructured"), 0.5).state_dict() == {"parameters": []}


def test_state_that_cannot_be_checkpointed_is_refused():
    pruner = Child(PrunerConfig(), parse_pattern("unstructured"), 0.5)
    pruner.phase = object()
    with pytest.raises(TypeError, match="cannot checkpoint"):
        pruner.state_dict()


def test_builtin_pruners_declare_their_state_and_never_branch_on_nm():
    import inspect

    for name, cls in load_pruners().items():
        if cls.__module__.split(".")[0] not in ("baselines", "smart"):
            continue
        for klass in cls.__mro__:
            if klass.__module__.split(".")[0] in ("baselines", "smart"):
                assert "state_dict" not in vars(klass) and "load_state_dict" not in vars(klass), (name, klass)
        assert "per_row_budget" not in inspect.getsource(inspect.getmodule(cls)), name


# -- selection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerScope(PrunerConfig):
    scope: str = "layer"


def test_select_handles_nm_at_the_target_and_on_a_ramp():
    pattern = parse_pattern("nm:2:8")
    pruner = Pruner(PrunerConfig(), pattern, 0.75)
    scores = {"a": torch.rand(5, 8), "b": torch.rand(3, 8)}
    assert all(bool((m.sum(-1) == 2).all()) for m in pruner.select(scores).values())
    for level, keep in ((0.0, 8), (0.25, 6), (0.5, 4), (0.7, 2), (0.75, 2)):
        assert nm_keep(pattern, level, 0.75) == max(2, round(8 - 6 * level / 0.75)) == keep
        masks = pruner.select(scores, level)
        assert all(bool((m.sum(-1) == keep).all()) for m in masks.values()), level
        for s, m in zip(scores.values(), masks.values()):  # the highest scores of every row
            lowest_kept = s.masked_fill(~m, float("inf")).min(-1).values
            assert bool((lowest_kept >= s.masked_fill(m, float("-inf")).max(-1).values).all())


def test_select_at_a_level_keeps_that_many_units_globally_or_per_layer():
    scores = {"a": torch.rand(10), "b": torch.rand(30)}
    pattern = parse_pattern("unstructured")
    assert sum(int(m.sum()) for m in Pruner(PrunerConfig(), pattern, 0.9).select(scores, 0.5).values()) == 20
    per_layer = Pruner(LayerScope(), pattern, 0.9).select(scores, 0.5)
    assert [int(m.sum()) for m in per_layer.values()] == [keep_count(10, 0.5), keep_count(30, 0.5)]


def test_keep_above_thresholds_or_takes_top_n_per_row():
    scores = {"a": torch.tensor([[0.7, 0.2, 0.5, 0.9], [0.1, 0.0, 0.3, 0.2]], requires_grad=True)}
    dense = Pruner(PrunerConfig(), parse_pattern("block:1x2"), 0.5).keep_above(scores, 0.5)
    assert dense["a"].tolist() == [[True, False, False, True], [False, False, False, False]]
    nm = Pruner(PrunerConfig(), parse_pattern("nm:2:4"), 0.5)
    assert nm.budget_fixed and nm.keep_above(scores, 0.5)["a"].tolist() == [
        [True, False, False, True],
        [False, False, True, True],
    ]


def test_straight_through_forward_is_hard_and_backward_identity():
    soft = torch.tensor([0.9, 0.4, 0.6], requires_grad=True)
    out = straight_through(soft, torch.tensor([True, False, True]))
    assert out.tolist() == [1.0, 0.0, 1.0]
    (out * torch.tensor([2.0, 3.0, -1.0])).sum().backward()
    assert soft.grad.tolist() == [2.0, 3.0, -1.0]


def test_hard_mask_pruner_is_dense_until_it_sets_a_mask_and_finalizes_exactly():
    pruner = HardMaskPruner(PrunerConfig(), parse_pattern("unstructured"), 0.75)
    pruner.attach(layers((4, 4), (2, 8)))
    assert pruner.masks() is None
    final = pruner.finalize()  # no mask yet: top-k of the unit RMS
    assert sum(int(m.sum()) for m in final.values()) == keep_count(32, 0.75)
    pruner.mask = final
    assert all(torch.equal(m, final[n].float()) for n, m in pruner.masks().items())
    assert pruner.finalize() is final
    assert set(weights_only_copy(pruner.state_dict())) == {"parameters", "mask"}


def test_hard_mask_pruner_converts_a_held_mask_once_and_again_when_it_changes():
    pruner = HardMaskPruner(PrunerConfig(), parse_pattern("unstructured"), 0.75)
    pruner.attach(layers((4, 4), (2, 8)))
    pruner.mask = pruner.finalize()
    first = pruner.masks()
    again = pruner.masks()
    assert again is not first and all(again[n] is first[n] for n in first)  # held: the same floats
    name = next(iter(pruner.mask))
    pruner.mask[name][0] = ~pruner.mask[name][0]  # changed in place
    changed = pruner.masks()
    assert changed[name] is not first[name] and torch.equal(changed[name], pruner.mask[name].float())
    pruner.mask = {n: m.clone() for n, m in pruner.mask.items()}  # replaced
    assert all(pruner.masks()[n] is not changed[n] for n in changed)


# -- schedules --------------------------------------------------------------------------------


def test_sparsity_schedules():
    ramp = PolynomialRamp(0.8, 0.5)
    assert [ramp.at(f) for f in (0.0, 0.25, 0.5, 0.9)] == [0.0, 0.8 * (1 - 0.5**3), 0.8, 0.8]
    assert OneShot(0.6).at(0.0) == OneShot(0.6).at(0.99) == 0.6
    stairs = StaircaseRamp(0.9, 3)
    assert [stairs.at(f) for f in (-0.5, 0.0, 0.4, 0.7, 1.0)] == [0.3, 0.3, 0.9 * 2 / 3, 0.9, 0.9]
    assert StaircaseRamp(0.5, 1).at(0.3) == 0.5
    linear = LinearRamp(0.5)  # 10 steps: ramp over 5
    assert [linear.at(e, 10) for e in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]


def test_phase_plan_object_matches_the_function_and_ends_compressed():
    plan = PhasePlan(0.1, 0.05, 0.1, 0.15)
    assert plan.plan_for(64) == phase_plan(64)
    assert plan.kind_at(0, 64) == DENSE and plan.kind_at(6, 64) == COMPRESSED and plan.kind_at(9, 64) == DECOMPRESSED
    assert plan.kind_at(64, 64) == COMPRESSED  # past the end: the last phase
    assert plan.kind_at(0, 20) == DENSE and plan.plan_for(20) == phase_plan(20)  # a new step count, a new plan


def test_temperature_schedules():
    exponential = ExponentialTau(1.0, 0.001)
    assert exponential.at(-0.2, 10, lambda: 1 / 0) == 1.0  # nonbinary is never read
    assert exponential.at(0.5, 10, lambda: 1 / 0) == pytest.approx(0.001**0.5)
    assert exponential.at(2.0, 10, lambda: 1 / 0) == pytest.approx(0.001)
    adaptive = AdaptiveTau(1.0, 0.001, 2.0)
    assert adaptive.at(0.0, 10, lambda: 1 / 0) == 1.0 and adaptive.tau == 1.0  # warm-up: no step
    binary = AdaptiveTau(1.0, 0.001, 2.0)
    taus = [adaptive.at(0.1 * (i + 1), 10, lambda: 1.0) for i in range(10)]
    plain = [binary.at(0.1 * (i + 1), 10, lambda: 0.0) for i in range(10)]
    assert taus[-1] == 0.001 and plain[-1] == pytest.approx(0.001)  # far from binary: faster
    assert all(a <= b for a, b in zip(taus, plain))
    restored = AdaptiveTau(1.0, 0.001, 2.0)
    restored.load_state_dict(weights_only_copy(binary.state_dict()))
    assert restored.tau == binary.tau


# -- SMART's soft dispatch --------------------------------------------------------------------


@pytest.mark.parametrize("pattern,scope", [("nm:2:4", "global"), ("unstructured", "global"), ("unstructured", "layer")])
def test_soft_select_keeps_k_like_hard_topk_and_warm_starts(pattern, scope):
    torch.manual_seed(0)
    scores = {"a.x": torch.randn(6, 4, dtype=torch.float64), "b": torch.randn(3, 4, dtype=torch.float64)}
    thresholds: dict[str, torch.Tensor] = {}
    masks, soft = soft_select(scores, parse_pattern(pattern), 0.75, scope, 0.5, thresholds=thresholds)
    assert {n: m.shape for n, m in masks.items()} == {n: s.shape for n, s in scores.items()}
    if pattern == "nm:2:4":
        assert set(thresholds) == {"rows"} and soft.shape == (9, 4)
        assert all(
            torch.allclose(m.sum(-1), torch.full((m.shape[0],), 2.0, dtype=torch.float64)) for m in masks.values()
        )
    elif scope == "global":
        assert set(thresholds) == {"global"} and float(soft.sum()) == pytest.approx(keep_count(36, 0.75))
    else:
        assert set(thresholds) == {"a.x", "b"}
        assert [float(m.sum()) for m in masks.values()] == pytest.approx([keep_count(24, 0.75), keep_count(12, 0.75)])
    again, _ = soft_select(scores, parse_pattern(pattern), 0.75, scope, 0.5, thresholds=thresholds)
    assert all(torch.allclose(again[n], masks[n]) for n in masks)


def test_soft_select_holds_the_allocation_floor_exact_k_and_tends_to_hard_topk(monkeypatch):
    """A layer whose scores the global soft top-k would empty keeps its floor; holding it can push
    another layer under its floor, which is then held too; the total stays exactly k; at a low tau
    the support is hard_topk's with the same allocation."""
    torch.manual_seed(1)
    scores = {
        "low": torch.randn(20, dtype=torch.float64) - 6.0,  # far below the others: emptied without a floor
        "mid": torch.randn(30, dtype=torch.float64) - 0.6,  # above its floor until "low" takes its own
        "high": torch.randn(50, dtype=torch.float64),
    }
    allocation = Allocation("global", 0.1)  # floors 2, 3, 5 units; k = 20
    pattern = parse_pattern("unstructured")
    plain, _ = soft_select(scores, pattern, 0.8, "global", 0.5)
    assert float(plain["low"].sum()) < 0.1 and float(plain["mid"].sum()) > 3.0  # the defect: no floor
    solves = []
    real = topk_module.soft_topk
    monkeypatch.setattr(topk_module, "soft_topk", lambda rows, k, *a, **kw: solves.append(k) or real(rows, k, *a, **kw))
    masks, soft = soft_select(scores, pattern, 0.8, "global", 0.5, allocation=allocation)
    assert solves == [20, 18, 15]  # plain; "low" held (2); then "mid" too (3)
    k = allocation.global_keep({n: s.numel() for n, s in scores.items()}, 0.8)
    assert float(soft.sum()) == pytest.approx(k, abs=1e-9)
    for name, mask in masks.items():
        assert float(mask.sum()) >= allocation.minimum(mask.numel()) - 1e-9, name
    cold, _ = soft_select(scores, pattern, 0.8, "global", 1e-4, allocation=allocation)
    hard = hard_topk(scores, pattern, 0.8, allocation=allocation, comparable=True)
    assert all(torch.equal(cold[n] > 0.5, hard[n]) for n in scores)


def test_soft_select_floor_is_inert_when_no_layer_binds_and_held_units_get_no_gradient():
    torch.manual_seed(2)
    pattern = parse_pattern("unstructured")
    even = {"a": torch.randn(40, dtype=torch.float64), "b": torch.randn(60, dtype=torch.float64)}
    plain, _ = soft_select(even, pattern, 0.5, "global", 0.3)
    floored, _ = soft_select(even, pattern, 0.5, "global", 0.3, allocation=Allocation("global", 0.1))
    assert all(torch.equal(plain[n], floored[n]) for n in even)  # bit for bit
    low = torch.randn(10, dtype=torch.float64).sub(8.0).requires_grad_()
    high = torch.randn(90, dtype=torch.float64).requires_grad_()
    masks, _ = soft_select(
        {"low": low, "high": high}, pattern, 0.5, "global", 0.3, allocation=Allocation("global", 0.3)
    )
    held = torch.argsort(low.detach(), descending=True)[:3]
    assert torch.equal(masks["low"][held], torch.ones(3, dtype=torch.float64))
    (masks["low"] * torch.arange(10.0, dtype=torch.float64)).sum().add((masks["high"] ** 2).sum()).backward()
    assert torch.equal(low.grad[held], torch.zeros(3, dtype=torch.float64))
    assert float(high.grad.abs().sum()) > 0


@pytest.mark.parametrize("n", [50, 70_000, 300_000])
def test_floor_helpers_give_exactly_the_kthvalue_and_the_float64_verdict(n):
    """``top_indices`` (the held units) is ``nonzero`` of ``>= kthvalue`` (ties included, m = 1
    and m = n too, and when the strided sample sees only outliers and the tail search falls
    back); ``_under_floor``'s float32 sums with a float64 recheck near the floor give the float64
    sums' verdict."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen)
    x[::7] = 0.25  # many ties
    outliers = torch.randn(n, generator=gen)
    outliers[:: max(1, n // 16384)] = 1e6  # the tail search's bound lies above every cut
    for values in (x, outliers, x.reshape(-1, 10) if n % 10 == 0 else x):
        flat = values.reshape(-1)
        for m in sorted({1, 2, max(1, n // 100), n // 10, n // 7, n // 4, n // 2, n - 1, n}):
            want = (flat >= flat.kthvalue(n - m + 1).values).nonzero().flatten()
            assert torch.equal(top_indices(values, m), want), m
    with pytest.raises(ValueError, match="m must lie"):
        top_indices(x, 0)
    soft = torch.rand(3 * n, generator=gen)
    sizes = [n, n // 2, 3 * n - n - n // 2]
    exact = torch.stack([p.sum(dtype=torch.float64) for p in soft.split(sizes)])
    for shift in (-1e-3, -1e-9, 0.0, 1e-9, 1e-3, 5.0, -5.0):  # floors at, just off and far from the masses
        floors = exact + shift
        assert torch.equal(topk_module._under_floor(soft, sizes, floors), exact < floors), shift


def test_floored_soft_select_on_large_float32_scores_keeps_floor_and_k_with_gradients():
    """The held path on scores long enough for the bracketed selection (> 65,536 per layer)."""
    gen = torch.Generator().manual_seed(3)
    sizes = {"big": 200_000, "low": 80_000, "mid": 100_000}
    scores = {n: torch.randn(s, generator=gen) for n, s in sizes.items()}
    scores["low"] -= 4.0
    params = {n: s.clone().requires_grad_() for n, s in scores.items()}
    allocation = Allocation("global", 0.1)
    pattern = parse_pattern("unstructured")
    masks, soft = soft_select(params, pattern, 0.8, "global", 0.1, allocation=allocation)
    k = allocation.global_keep(sizes, 0.8)
    assert float(soft.double().sum()) == pytest.approx(k, rel=1e-5)
    low = masks["low"].detach()
    assert float(low.double().sum()) >= allocation.minimum(sizes["low"]) - 1e-3
    held = scores["low"] >= scores["low"].kthvalue(sizes["low"] - allocation.minimum(sizes["low"]) + 1).values
    assert bool((low[held] == 1.0).all())
    (soft * torch.linspace(0, 1, soft.numel())).sum().backward()
    assert torch.equal(params["low"].grad[held], torch.zeros(int(held.sum())))
    assert float(params["big"].grad.abs().sum()) > 0
