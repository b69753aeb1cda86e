"""The random control: scores fixed at attach, exact k, reproducible, global RNG untouched."""

from __future__ import annotations

import torch
from torch import nn

from bench.core.masks import Masker, find_prunable
from bench.core.pruner import Progress
from bench.core.sparsity import parse_pattern
from bench.runs.registry import build_pruner


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3),
        nn.Flatten(),
        nn.LazyLinear(4),
    )


def attached(pattern: str, sparsity: float | None, seed: int = 3):
    model = net()
    model(torch.zeros(1, 3, 12, 12))
    parsed = parse_pattern(pattern)
    masker = Masker(model, find_prunable(model), parsed, torch.zeros(1, 3, 12, 12))
    pruner = build_pruner("random", parsed, sparsity if sparsity is not None else parsed.fixed_sparsity)
    torch.manual_seed(seed)
    pruner.attach(masker.layers)
    return pruner, masker


def test_exact_k_and_every_layer_near_the_target():
    pruner, masker = attached("channel", 0.5)
    pruner.on_step(Progress("prune", 0, 10))
    hard = pruner.finalize()
    audit = masker.audit(hard)
    assert audit["achieved_sparsity"] == 0.5
    assert {name: bool((pruner.masks()[name] > 0).eq(mask).all()) for name, mask in hard.items()} == dict.fromkeys(
        hard, True
    )  # the frozen training mask is the final one


def test_same_seed_same_masks_other_seed_other_masks_and_global_rng_untouched():
    torch.manual_seed(11)
    expected_next = torch.rand(1)
    a, _ = attached("block:1x8", 0.75, seed=11)
    after = torch.rand(1)  # attach drew from its own generator, not the global stream
    assert torch.equal(after, expected_next)
    b, _ = attached("block:1x8", 0.75, seed=11)
    c, _ = attached("block:1x8", 0.75, seed=12)
    assert all(torch.equal(a.finalize()[n], b.finalize()[n]) for n in a.scores)
    assert any(not torch.equal(a.finalize()[n], c.finalize()[n]) for n in a.scores)


def test_nm_keeps_n_per_group():
    pruner, masker = attached("nm:1:8", None)
    hard = pruner.finalize()
    assert masker.audit(hard)["pattern_valid"] and masker.audit(hard)["achieved_sparsity"] == 0.875
