"""Physical shrinking (masked == shrunk), cost figures against hand counts, latency protocol structure."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from bench.core.masks import Masker, find_prunable
from bench.core.select import hard_topk
from bench.core.sparsity import OutputChannel, Unstructured
from bench.deploy.shrink import ShrinkError, count_params, folded_copy, replay_shrink, shrink_channels
from bench.deploy.speed import Frozen, cost_figures, fold_batchnorm, fold_variants, freeze_variants, latency, measure

CHANNEL = OutputChannel()


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is shared: one thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so a wrongly removed channel shows."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=gen))
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen))


def masked_model(arch: str, sparsity: float = 0.5, seed: int = 1):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=10)
    randomize_batchnorms(model)
    example = torch.zeros(2, 1, 28, 28)
    masker = Masker(model, find_prunable(model), CHANNEL, example)
    gen = torch.Generator().manual_seed(seed)
    hard = hard_topk(
        {layer.name: torch.rand(layer.unit_shape, generator=gen) for layer in masker.layers}, CHANNEL, sparsity
    )
    masker.set_masks({n: m.float() for n, m in hard.items()})
    return model.eval(), masker, hard, example


@pytest.mark.parametrize("arch", ["test_resnet", "resnet10t"])  # fmnist-tiny, fmnist-resnet
def test_shrunk_model_equals_masked_model(arch):
    model, masker, hard, example = masked_model(arch)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    plain = folded_copy(model, masker, hard)
    dense_params = count_params(plain)
    history = shrink_channels(plain, hard, example)
    with torch.no_grad():
        got = plain.eval()(x)
    assert count_params(plain) < 0.6 * dense_params  # something real was removed
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # replaying the recorded history on a fresh dense model rebuilds the same architecture
    fresh = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=10)
    replay_shrink(fresh, history, example).load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), got, rtol=0, atol=0)
    # the caller's masked model keeps its masks
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_residual_channel_is_removed_only_when_every_coupled_conv_drops_it():
    model = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=10)
    randomize_batchnorms(model)
    example = torch.zeros(2, 1, 28, 28)
    masker = Masker(model, find_prunable(model), CHANNEL, example)
    hard = {layer.name: torch.ones(layer.unit_shape, dtype=torch.bool) for layer in masker.layers}
    # residual stream of stage 1: conv1.6 (stem, via bn1) + layer1.0.conv2 (via bn2) are added.
    hard["layer1.0.conv2"][[0, 5]] = False  # only one of the two coupled convs drops 0 and 5
    hard["conv1.6"][[5, 7]] = False  # 5 is dropped by both -> removable; 7 only here
    hard["layer1.0.conv1"][[1, 2]] = False  # inside the block: no coupling -> removable
    masker.set_masks({n: m.float() for n, m in hard.items()})
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x)
    plain = folded_copy(model, masker, hard)
    shrink_channels(plain, hard, example)
    assert plain.conv1[6].out_channels == 31 and plain.layer1[0].conv2.out_channels == 31
    assert plain.layer1[0].conv1.out_channels == 30 and plain.layer2[0].conv1.in_channels == 31
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), expected, rtol=1e-4, atol=1e-5)


def test_shrink_refuses_an_activation_that_does_not_keep_zero():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Conv2d(4, 6, 3),
        nn.BatchNorm2d(6),
        nn.Sigmoid(),
        nn.Conv2d(6, 3, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )
    example = torch.zeros(2, 1, 8, 8)
    masker = Masker(net, ["1", "4"], CHANNEL, example)
    hard = {"1": torch.tensor([True, False, True, True, True, True]), "4": torch.ones(3, dtype=torch.bool)}
    masker.set_masks({n: m.float() for n, m in hard.items()})
    with pytest.raises(ShrinkError):  # sigmoid(0) = 0.5 feeds the next conv: removal would change outputs
        shrink_channels(folded_copy(net, masker, hard), hard, example)


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def test_cost_figures_match_hand_counts_channel():
    net, example = tiny_net(), torch.zeros(2, 1, 6, 6)
    masker = Masker(net, find_prunable(net), CHANNEL, example)  # convs "2" and "5"
    hard = {
        "2": torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool),
        "5": torch.tensor([1, 0, 0, 1], dtype=torch.bool),
    }
    figures = cost_figures(net, masker, hard, example, "channel")
    pos = 6 * 6  # output positions per sample (padding keeps 6x6)
    conv1, conv2, conv3, fc = 2 * pos * 4 * 1 * 9, 2 * pos * 8 * 4 * 9, 2 * pos * 4 * 8, 2 * 4 * 3
    dense_params = 4 * 9 + 8 * 4 * 9 + 2 * 8 + (4 * 8 + 4) + (4 * 3 + 3)
    assert figures["params_dense"] == dense_params
    assert figures["params_masked"] == dense_params - 4 * (4 * 9) - 2 * 8  # 4 filters of conv2, 2 of conv3
    assert figures["flops_dense"] == conv1 + conv2 + conv3 + fc
    assert figures["flops_masked"] == conv1 + conv2 * 4 // 8 + conv3 * 2 // 4 + fc
    # shrunk: conv2 4 filters (BN 4), conv3 in 4 / out 2, fc in 2
    assert figures["params_shrunk"] == 4 * 9 + 4 * 4 * 9 + 2 * 4 + (2 * 4 + 2) + (2 * 3 + 3)
    assert figures["flops_shrunk"] == conv1 + 2 * pos * 4 * 4 * 9 + 2 * pos * 2 * 4 + 2 * 2 * 3
    assert net[2].parametrizations.weight[0].mask is None  # the caller's model is untouched (dense masks)


def test_cost_figures_unstructured_scale_with_kept_fraction():
    net, example = tiny_net(), torch.zeros(3, 1, 6, 6)
    masker = Masker(net, find_prunable(net), Unstructured(), example)
    gen = torch.Generator().manual_seed(0)
    hard = {layer.name: torch.rand(layer.unit_shape, generator=gen) < 0.3 for layer in masker.layers}
    figures = cost_figures(net, masker, hard, example, "unstructured")
    kept2, kept5 = int(hard["2"].sum()), int(hard["5"].sum())
    assert figures["params_masked"] == figures["params_dense"] - (288 - kept2) - (32 - kept5)
    pos = 36
    expected = 2 * pos * 36 + 2 * pos * 288 * kept2 / 288 + 2 * pos * 32 * kept5 / 32 + 24
    assert figures["flops_masked"] == round(expected)
    assert "params_shrunk" not in figures


def test_latency_protocol_structure():
    nets = {"a": tiny_net(), "b": tiny_net()}
    threads = torch.get_num_threads()
    result = latency(nets, torch.zeros(1, 1, 6, 6), batch_sizes=(1, 3), warmup=1, repeats=4, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert set(result["latency"]) == {"a", "b"} and set(result["ratios"]) == {"b"}
    for by_batch in result["latency"].values():
        assert set(by_batch) == {"1", "3"}
        for stats in by_batch.values():
            assert stats["repeats"] == 4 and 0 < stats["min_ms"] <= stats["median_ms"]
            assert stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"]
            assert stats["iqr_ms"] == pytest.approx(stats["p75_ms"] - stats["p25_ms"], abs=1e-3)
    assert result["ratios"]["b"]["3"]["ratio_of_medians"] > 0
    assert result["protocol"]["threads"] == 1 and result["protocol"]["interleaved"]
    assert {"cpu", "torch", "threads"} <= set(result["fingerprint"])


def test_measure_builds_the_variants_of_a_pattern():
    model, masker, hard, example = masked_model("test_resnet")
    plain = folded_copy(model, masker, hard)
    result = measure({"run_id": "x", "pattern": "channel"}, plain, example, hard, batch_sizes=(2,), warmup=0, repeats=2)
    assert set(result["latency"]) == {"masked_dense", "shrunk"} and "2" in result["ratios"]["shrunk"]
    assert result["protocol"]["bn_folded"] == ["masked_dense", "shrunk"]
    assert "warmup" in result["skipped"]["frozen"]  # a frozen graph is traced at its first (warm-up) call
    result = measure({"run_id": "y", "pattern": "nm:2:4"}, plain, example, None, batch_sizes=(1,), warmup=0, repeats=1)
    assert set(result["latency"]) == {"masked_dense"} and "sparse24" in result["skipped"]


def test_measure_adds_frozen_twins_compared_with_each_other():
    model, masker, hard, example = masked_model("test_resnet")
    plain = folded_copy(model, masker, hard)
    result = measure(
        {"run_id": "x", "pattern": "channel"}, plain, example, hard, batch_sizes=(1, 3), warmup=1, repeats=2
    )
    assert set(result["latency"]) == {"masked_dense", "shrunk", "masked_dense_frozen", "shrunk_frozen"}
    assert result["protocol"]["frozen"] == ["masked_dense", "shrunk"] and "frozen" not in result["skipped"]
    assert result["ratios"]["shrunk_frozen"]["1"]["reference"] == "masked_dense_frozen"
    assert result["ratios"]["masked_dense_frozen"]["3"]["reference"] == "masked_dense"
    frozen = Frozen(copy.deepcopy(plain))
    for batch in (1, 3):  # one graph per input shape, each computing what the model computes
        x = torch.randn(batch, *example.shape[1:])
        with torch.inference_mode():
            assert torch.allclose(frozen(x), plain.eval()(x), rtol=1e-5, atol=1e-6)
    assert len(frozen.graphs) == 2
    variants = {"masked_dense": plain}
    assert freeze_variants(variants, {"x": example}) == ([], "dict inputs (mm models) are not traced")
    assert set(variants) == {"masked_dense"}


def test_shrink_mm_model_if_available():
    pytest.importorskip("mmdet")
    from bench.tasks.registry import load_tasks

    tasks = [
        cls() for cls in load_tasks().values() if cls.family in ("detection", "segmentation") and "tiny" in cls.name
    ]
    if not tasks:
        pytest.skip("no tiny mm task registered")
    for task in tasks:
        torch.manual_seed(0)
        model = task.build_model().eval()
        example = task.example_input()
        masker = Masker(model, find_prunable(model, task.include, task.exclude, task.keep_first_last), CHANNEL, example)
        gen = torch.Generator().manual_seed(0)
        hard = hard_topk(
            {layer.name: torch.rand(layer.unit_shape, generator=gen) for layer in masker.layers}, CHANNEL, 0.5
        )
        masker.set_masks({n: m.float() for n, m in hard.items()})
        plain = folded_copy(model, masker, hard)
        before = count_params(plain)
        shrink_channels(plain, hard, example)  # verifies masked == shrunk outputs itself (raises otherwise)
        assert count_params(plain) < before, task.name


class KwargsNet(nn.Module):
    """mm-style forward(inputs, mode) returning nested lists: the dict-input path of shrink and FLOPs."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, inputs, mode="tensor"):
        z = torch.relu(self.b(torch.relu(self.bn(self.a(torch.relu(self.stem(inputs)))))))
        return ([self.head(z), self.head(z[:, :, ::2, ::2])],)


def test_dict_input_model_shrinks_and_counts_per_sample():
    net = KwargsNet().eval()
    randomize_batchnorms(net)
    example = {"inputs": torch.zeros(2, 3, 16, 16), "mode": "tensor"}
    masker = Masker(net, ["a", "b"], CHANNEL, example)
    hard = {
        "a": torch.tensor([1, 0, 1, 0, 1, 1, 1, 1], dtype=torch.bool),
        "b": torch.tensor([1, 1, 0, 1, 0, 1, 1, 1], dtype=torch.bool),
    }
    figures = cost_figures(net, masker, hard, example, "channel")
    full, half = 16 * 16, 8 * 8  # head runs on the full map and on a 2x subsampled one
    assert figures["flops_dense"] == 2 * full * 8 * (3 * 9 + 8 * 9 + 8 * 9) + 2 * (full + half) * 4 * 8
    plain = folded_copy(net, masker, hard)
    shrink_channels(plain, hard, example)  # raises ShrinkError if outputs differ
    assert (plain.a.out_channels, plain.b.in_channels, plain.b.out_channels, plain.head.in_channels) == (6, 6, 6, 6)


@pytest.mark.parametrize("arch", ["test_resnet", "resnet10t"])
def test_folding_batchnorm_keeps_the_outputs_of_masked_and_shrunk_models(arch):
    model, masker, hard, example = masked_model(arch)
    masked = folded_copy(model, masker, hard)
    shrunk = folded_copy(model, masker, hard)
    shrink_channels(shrunk, hard, example)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    variants = {"masked_dense": masked, "shrunk": shrunk}
    with torch.no_grad():
        expected = {name: m.eval()(x) for name, m in variants.items()}
    assert fold_variants(variants) == ["masked_dense", "shrunk"]
    for name, m in variants.items():
        assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())  # every BN followed a conv
        with torch.no_grad():
            torch.testing.assert_close(m(x), expected[name], rtol=1e-4, atol=1e-4)


def test_a_model_that_does_not_trace_is_compared_unfolded():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # control flow on a value: no fx trace

    assert fold_batchnorm(DataDependent()) is None and fold_batchnorm(nn.Linear(2, 2)) is None
    variants = {"masked_dense": masked_model("test_resnet")[0], "shrunk": DataDependent()}
    kept = dict(variants)
    assert fold_variants(variants) == [] and variants == kept  # both or neither
