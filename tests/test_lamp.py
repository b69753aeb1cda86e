"""LAMP (baselines/lamp.py): scores against a hand computation, the score-1 maximum of every layer,
its layer-adaptive global allocation (exact count, floors, invariance to a layer's scale), uniform
LAMP == magnitude, and exact sparsity end to end on fmnist-tiny."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.lamp import lamp_scores
from bench.core.masks import Masker, find_prunable
from bench.core.pruner import Progress
from bench.core.select import Allocation, expected_kept
from bench.core.sparsity import parse_pattern
from bench.runs.registry import build_pruner

SCALES = (1.0, 1 / 32, 64.0)  # powers of two: LAMP scores scale exactly
HAND = [[3.0, -1.0, 0.0, 2.0], [1.0, -2.0, 0.0, 0.5]]  # the middle layer of `hand_model`, (out=2, in=4)


def hand_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 1))  # only "1" is prunable
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(HAND))
    return model


def mlp(scales=(1.0, 1.0, 1.0), grid: float | None = None) -> nn.Module:
    """Three prunable Linear layers of different sizes and weight distributions (normal, heavy-tailed,
    uniform), each multiplied by its scale; ``grid``: weights rounded to multiples of it (many ties, zeros)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(),
        nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 4),
    )  # fmt: skip
    with torch.no_grad():
        model[2].weight.normal_()
        model[4].weight.copy_(torch.randn(128, 64) ** 3)
        model[6].weight.uniform_(-1.0, 1.0)
        for index, scale in zip((2, 4, 6), scales):
            weight = model[index].weight
            weight.mul_(scale)
            if grid is not None:
                weight.copy_((weight / grid).round() * grid)
    return model


def attached(model: nn.Module, pruner: str, pattern: str, sparsity: float | None, allocation=None, **options):
    parsed = parse_pattern(pattern)
    masker = Masker(model, find_prunable(model), parsed)
    level = parsed.fixed_sparsity if sparsity is None else sparsity
    built = build_pruner(pruner, parsed, level, options, Allocation.from_value(allocation))
    built.attach(masker.layers)
    return built, masker


def one_shot(pruner) -> dict[str, torch.Tensor]:
    pruner.on_step(Progress("prune", 0, 10))  # the first step of the pruning stage: mask decided, frozen
    return pruner.finalize()


def kept(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


# -- scores -----------------------------------------------------------------------------------


def test_scores_of_a_hand_made_layer_equal_the_hand_computation():
    # w^2 = [[9, 1, 0, 4], [1, 4, 0, 0.25]]; descending (ties by position): 9, 4 (0,3), 4 (1,1), 1 (0,1),
    # 1 (1,0), 0.25, 0, 0 with running sums 9, 13, 17, 18, 19, 19.25, 19.25, 19.25
    unstructured = [[1.0, 1 / 18, 0.0, 4 / 13], [1 / 19, 4 / 17, 0.0, 0.25 / 19.25]]
    # channels: energies 14, 5.25; blocks of 1x2: [3, -1] 10, [0, 2] 4, [1, -2] 5, [0, 0.5] 0.25
    expected = {
        "unstructured": unstructured,
        "nm:2:4": unstructured,  # single weights, (rows of M) shaped
        "channel": [1.0, 5.25 / 19.25],
        "block:1x2": [1.0, 4 / 19, 5 / 15, 0.25 / 19.25],
    }
    for pattern, values in expected.items():
        pruner, _ = attached(hand_model(), "lamp", pattern, 0.5)
        got = pruner.unit_scores()["1"]
        want = torch.tensor(values, dtype=torch.float64).reshape(got.shape)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=pattern)
    got = lamp_scores(torch.tensor([1.0, 4.0, 0.0, 4.0, 9.0]))  # 9, 4, 4, 1, 0: sums 9, 13, 17, 18, 18
    assert got.tolist() == [1 / 18, 4 / 13, 0.0, 4 / 17, 1.0]


def test_zero_units_score_zero_and_an_all_zero_layer_keeps_its_one_unit():
    assert torch.equal(lamp_scores(torch.zeros(6)), torch.zeros(6, dtype=torch.float64))  # 0/0 guarded
    model = mlp()
    with torch.no_grad():
        model[6].weight.zero_()
    pruner, masker = attached(model, "lamp", "block:1x8", 0.5)
    scores = pruner.unit_scores()
    assert all(bool(s.isfinite().all()) for s in scores.values()) and not bool(scores["6"].any())
    masks = one_shot(pruner)
    assert kept(masks)["6"] == 1  # the layer is never emptied (the selection's floor of one unit)
    assert sum(kept(masks).values()) == round(0.5 * masker.audit(masks)["total_units"])


@pytest.mark.parametrize("pattern", ["unstructured", "block:1x8", "block:2x4", "channel", "nm:2:4"])
def test_largest_unit_of_every_layer_scores_exactly_one_and_scale_changes_nothing(pattern):
    pruner, _ = attached(mlp(), "lamp", pattern, 0.5)
    scaled, _ = attached(mlp(scales=SCALES), "lamp", pattern, 0.5)  # powers of two: exact
    for layer in pruner.layers:
        scores = pruner.unit_scores()[layer.name]
        energies = pruner.pattern.units(layer.weight.detach().double()).pow(2).sum(-1)
        assert float(scores.max()) == 1.0 and int((scores == 1.0).sum()) == 1, layer.name
        assert scores.reshape(-1).argmax() == energies.reshape(-1).argmax()
        assert float(scores.min()) > 0.0 and float(scores.min()) < 1.0 / scores.numel() + 1e-12
        assert torch.equal(scaled.unit_scores()[layer.name], scores)


# -- allocation -------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["unstructured", "block:1x8", "channel"])
def test_global_allocation_is_layer_adaptive_and_exact(pattern):
    sparsity = 0.7
    lamp, masker = attached(mlp(), "lamp", pattern, sparsity, "global")
    uniform, _ = attached(mlp(), "lamp", pattern, sparsity, "uniform")
    magnitude, _ = attached(mlp(), "magnitude", pattern, sparsity, "global")
    masks = one_shot(lamp)
    counts = {layer.name: layer.num_units for layer in lamp.layers}
    total = sum(counts.values())
    assert sum(kept(masks).values()) == round(0.3 * total) == expected_kept(counts, lamp.pattern, sparsity, "global")
    assert masker.audit(masks)["achieved_sparsity"] == 1 - round(0.3 * total) / total
    assert kept(masks) != kept(one_shot(uniform))  # not round(0.3 * G_l) in every layer
    assert kept(masks) != kept(one_shot(magnitude))  # nor magnitude's raw global ranking


def test_kept_fractions_lamp_vs_magnitude_unstructured():
    """The numbers of the method docs: LAMP's own allocation against magnitude's global allocations."""
    fractions = {}
    for label, pruner, allocation in (
        ("lamp", "lamp", "global"),
        ("magnitude-raw", "magnitude", "global"),
        ("magnitude-standardised", "magnitude", {"policy": "global", "ranking": "mixed"}),
        ("uniform", "magnitude", "uniform"),
    ):
        built, _ = attached(mlp(), pruner, "unstructured", 0.7, allocation)
        masks = one_shot(built)
        fractions[label] = {name: round(int(m.sum()) / m.numel(), 4) for name, m in masks.items()}
    # fan-in 32 normal, 64 cubed normal (heavy-tailed), 128 uniform; 2048, 8192, 2048 weights
    assert fractions == {
        "lamp": {"2": 0.6245, "4": 0.1188, "6": 0.7002},
        "magnitude-raw": {"2": 0.3721, "4": 0.3406, "6": 0.0654},
        "magnitude-standardised": {"2": 0.4141, "4": 0.2266, "6": 0.4795},
        "uniform": {"2": 0.2998, "4": 0.3, "6": 0.2998},
    }


def test_rescaling_a_layer_moves_raw_magnitude_but_not_lamp():
    """LAMP's global ranking needs no standardisation: a power-of-two scale on two layers leaves its
    masks bit-identical, while a raw global magnitude ranking (v1 scope) follows the scale."""
    plain, _ = attached(mlp(), "lamp", "block:1x8", 0.7)  # v1: scope=global on raw scores
    scaled, _ = attached(mlp(scales=SCALES), "lamp", "block:1x8", 0.7)
    a, b = one_shot(plain), one_shot(scaled)
    assert all(torch.equal(a[name], b[name]) for name in a)
    raw, _ = attached(mlp(), "magnitude", "block:1x8", 0.7)
    raw_scaled, _ = attached(mlp(scales=SCALES), "magnitude", "block:1x8", 0.7)
    assert kept(one_shot(raw)) != kept(one_shot(raw_scaled))


@pytest.mark.parametrize("pattern", ["unstructured", "block:1x8", "block:2x4", "channel", "nm:2:4", "nm:1:4"])
def test_uniform_lamp_keeps_exactly_magnitudes_units(pattern):
    """Within a layer the LAMP score is monotone in the unit's norm (ties by position, as in the
    stable top-k), so per-layer budgets, and N:M rows, select magnitude's units; weights on a grid
    of 1/4 make many ties and zeros."""
    sparsity = None if pattern.startswith("nm") else 0.6
    for allocation, options in (("uniform", {}), (None, {"scope": "layer"}), ({"policy": "uniform", "floor": 0.5}, {})):
        lamp, _ = attached(mlp(grid=0.25), "lamp", pattern, sparsity, allocation, **options)
        magnitude, _ = attached(mlp(grid=0.25), "magnitude", pattern, sparsity, allocation, **options)
        a, b = one_shot(lamp), one_shot(magnitude)
        assert all(torch.equal(a[name], b[name]) for name in a), (pattern, allocation, options)
    if sparsity is None:  # N:M fixes the count per row whatever the allocation: the default too
        lamp, _ = attached(mlp(grid=0.25), "lamp", pattern, None)
        magnitude, _ = attached(mlp(grid=0.25), "magnitude", pattern, None)
        a, b = one_shot(lamp), one_shot(magnitude)
        assert all(torch.equal(a[name], b[name]) for name in a)


def test_floor_of_the_allocation_is_respected():
    counts = {"2": 2048, "4": 8192, "6": 2048}
    free, _ = attached(mlp(), "lamp", "unstructured", 0.9, "global")
    without = kept(one_shot(free))
    assert without["4"] < math.ceil(0.05 * 8192)  # LAMP alone cuts the heavy-tailed layer below 5 %
    floored, masker = attached(mlp(), "lamp", "unstructured", 0.9, {"policy": "global", "floor": 0.05})
    masks = one_shot(floored)
    with_floor = kept(masks)
    assert all(with_floor[name] >= math.ceil(0.05 * c) for name, c in counts.items())
    assert with_floor["4"] == math.ceil(0.05 * 8192)  # held at its floor
    assert sum(with_floor.values()) == round(0.1 * sum(counts.values()))
    assert masker.audit(masks, floored.allocation)["layers_at_floor"] == 1


def test_mask_is_decided_once_and_frozen():
    pruner, masker = attached(mlp(), "lamp", "block:1x8", 0.5)
    pruner.on_step(Progress("prune", 0, 10))
    first = {name: m.clone() for name, m in pruner.mask.items()}
    with torch.no_grad():
        for layer in masker.layers:
            layer.weight.copy_(torch.randn_like(layer.weight))  # training moves the weights
    pruner.on_step(Progress("prune", 5, 10))
    final = pruner.finalize()
    assert all(torch.equal(final[name], first[name]) for name in first)
    assert set(pruner.state_dict()) == {"parameters", "mask"}


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["block:1x8", "channel"])
def test_public_api_in_a_users_loop_exact_sparsity(pattern):
    import bench

    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    )  # fmt: skip
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    pruning = bench.prune(model, pruner="lamp", pattern=pattern, sparsity=0.75, steps=3, example_input=x[:4])
    optimizer = torch.optim.SGD([{"params": model.parameters()}, *pruning.param_groups()], lr=0.05, momentum=0.9)
    for _ in range(5):  # 3 pruning steps, then fine-tuning with the frozen hard masks
        pruning.step()
        loss = nn.functional.cross_entropy(model(x), y) + pruning.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruning.after_optimizer_step(optimizer)
    audit = pruning.audit()
    assert audit["pattern_valid"] and audit["kept_units"] == round(0.25 * audit["total_units"])
    assert audit["achieved_sparsity"] == 0.75
    assert len({layer["sparsity"] for layer in audit["layers"]}) == 2  # LAMP's own split of the budget


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["block:1x8", "channel"])
def test_end_to_end_fmnist_tiny_exact_sparsity(pattern, shared_runs_dir, monkeypatch):
    from bench.runs.run import RunSpec, execute, resolve

    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    budget = {"prune_epochs": 1, "finetune_epochs": 0}  # one pruning epoch, finalized at its end
    run = resolve(RunSpec("fmnist-tiny", "lamp", pattern, 0.5, 0, budget=budget, allocation="global"))
    row = execute(run, log=lambda _msg: None, wandb=False)
    audit = row["audit"]
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"]
    assert audit["kept_units"] == round(0.5 * audit["total_units"])
    fractions = {layer["sparsity"] for layer in audit["layers"]}
    assert len(fractions) > 3  # layer-adaptive: not one sparsity everywhere
    assert row["metric"] > 50.0  # 10 classes: chance is 10 %
