"""SMART's initial scores: per-layer vs global standardisation (what the global top-k starts from)."""

import torch
from torch import nn

from bench.core.masks import PrunableLayer
from bench.core.select import hard_topk
from bench.core.sparsity import parse_pattern
from smart.pruner import initial_scores, log_importance


def _layers():
    torch.manual_seed(0)
    small = nn.Linear(64, 32)  # large weights
    big = nn.Linear(256, 128)  # small weights: a magnitude ranking prunes this layer first
    with torch.no_grad():
        small.weight.mul_(10.0)
    return [PrunableLayer("small", small), PrunableLayer("big", big)]


def test_layer_standardisation_gives_every_layer_mean_0_std_1():
    pattern = parse_pattern("unstructured")
    for score in initial_scores(_layers(), pattern, use_activations=False, scope="layer"):
        assert abs(score.mean().item()) < 1e-5 and abs(score.std().item() - 1) < 1e-5


def test_global_standardisation_keeps_the_cross_layer_order():
    pattern = parse_pattern("unstructured")
    layers = _layers()
    raw = [log_importance(layer, pattern, use_activations=False) for layer in layers]
    scores = initial_scores(layers, pattern, use_activations=False, scope="global")
    everything = torch.cat([s.reshape(-1) for s in scores])
    assert abs(everything.mean().item()) < 1e-5 and abs(everything.std().item() - 1) < 1e-5
    # one affine map for all layers: the global order of the raw importances is unchanged
    assert torch.equal(torch.cat([r.reshape(-1) for r in raw]).argsort(), everything.argsort())
    # so a global top-k keeps the large-weight layer and prunes the small-weight one, as magnitude does
    masks = hard_topk({layer.name: s for layer, s in zip(layers, scores)}, pattern, 0.8)
    kept = {name: m.float().mean().item() for name, m in masks.items()}
    assert kept["small"] > 0.9 and kept["big"] < 0.2
    per_layer = hard_topk(
        {layer.name: s for layer, s in zip(layers, initial_scores(layers, pattern, False, "layer"))}, pattern, 0.8
    )
    assert abs(per_layer["small"].float().mean().item() - per_layer["big"].float().mean().item()) < 0.05


def test_auto_standardisation_is_per_layer_for_channels_and_global_otherwise():
    from bench.runs.registry import build_pruner

    layers = _layers()
    for pattern_text, expected in (("channel", "layer"), ("block:1x8", "global"), ("unstructured", "global")):
        pattern = parse_pattern(pattern_text)
        pruner = build_pruner("smart", pattern, 0.5, {})
        assert pruner.config.standardise == "auto"
        pruner.attach(layers)
        want = initial_scores(layers, pattern, use_activations=True, scope=expected)
        for layer, score in zip(layers, want):
            torch.testing.assert_close(pruner.scores[layer.name].detach(), score)
