"""AWG (baselines/awg.py): weight-dependent gates, STE, budget term, projection, N:M, state."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.awg import AWGConfig, AWGPruner, unit_norms
from bench.core.errors import ConfigError
from bench.core.masks import Masker
from bench.core.select import keep_count
from bench.core.sparsity import parse_pattern


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def setup(pattern="block:1x4", sparsity=0.5, **options):
    torch.manual_seed(0)
    model = TinyConvNet()
    x = torch.randn(3, 4, 6, 6)
    masker = Masker(model, ["conv1", "conv2", "fc"], parse_pattern(pattern), x)
    pruner = AWGPruner(AWGConfig(**options), parse_pattern(pattern), sparsity)
    pruner.attach(masker.layers)
    return model, masker, pruner, x


def layer(masker, name):
    return masker.by_name()[name]


@pytest.mark.parametrize("pattern", ["block:1x4", "channel", "unstructured"])
def test_gate_of_a_unit_depends_only_on_that_units_weights(pattern):
    _, masker, pruner, _ = setup(pattern, hidden=3)
    before = {name: logit.detach().clone() for name, logit in pruner.logits().items()}
    target = layer(masker, "conv2")
    unit = 5
    one_hot = torch.zeros(target.unit_shape)
    one_hot.view(-1)[unit] = 1.0
    with torch.no_grad():
        target.weight.mul_(1 + 2.0 * pruner.pattern.expand(one_hot, target.weight.shape))  # scale unit 5 by 3
    after = {name: logit.detach() for name, logit in pruner.logits().items()}
    changed = (after["conv2"] != before["conv2"]).reshape(-1)
    assert changed.tolist() == [i == unit for i in range(changed.numel())]
    assert torch.equal(after["conv1"], before["conv1"]) and torch.equal(after["fc"], before["fc"])


def test_logits_match_hand_computed_standardised_features():
    _, masker, pruner, _ = setup("block:1x4")
    conv2 = layer(masker, "conv2")
    w = conv2.weight.detach().permute(0, 2, 3, 1).reshape(8, 72)  # matrix view, input channels contiguous
    blocks = w.reshape(8, 18, 4).reshape(-1, 4)
    feats = torch.stack([blocks.norm(dim=1), blocks.abs().mean(dim=1)], dim=1)
    z = (feats - feats.mean(0)) / feats.std(0)
    fn = pruner.gate_fns["conv2"]
    expected = 2.0 * z[:, 0] + fn.bias.detach()  # init slope (2, 0)
    torch.testing.assert_close(pruner.logits()["conv2"].detach(), expected)


def test_init_keeps_the_target_per_layer_or_everything():
    _, masker, pruner, _ = setup("block:1x4", 0.75)
    for name, logit in pruner.logits().items():
        assert int((logit > 0).sum()) == keep_count(logit.numel(), 0.75), name
    _, _, dense, _ = setup("block:1x4", 0.75, init_keep=1.0)
    assert all(bool((logit > 0).all()) for logit in dense.logits().values())
    assert dense.log_values()["gate_sparsity"] == 0.0


def test_ste_mask_is_binary_and_budget_gradient_matches_hand_computation():
    _, masker, pruner, _ = setup("block:1x4", 0.5, init_keep=1.0, budget_weight=3.0)
    masks = pruner.masks()
    logits = {name: logit.detach() for name, logit in pruner.logits().items()}
    for name, mask in masks.items():
        assert torch.equal(mask.detach(), (logits[name] > 0).float())
    total = sum(m.numel() for m in masks.values())
    gap = 1.0 - 0.5  # everything kept at init
    penalty = pruner.penalty()
    assert penalty.item() == pytest.approx(3.0 * gap**2)
    penalty.backward()
    coeff = 2 * 3.0 * gap / total  # d penalty / d b_u, identical for every unit
    for name, logit in logits.items():
        slope_sig = torch.sigmoid(logit) * (1 - torch.sigmoid(logit))  # sigmoid STE backward
        fn = pruner.gate_fns[name]
        torch.testing.assert_close(fn.bias.grad, coeff * slope_sig.sum(), rtol=1e-5, atol=0)
    # the gate path reaches the weights: d penalty / d w = coeff * sum_u s'_u * d logit_u / d w, by hand
    conv2 = layer(masker, "conv2")
    mean, std = pruner.stats["conv2"]
    w = conv2.weight.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    s_prime = (torch.sigmoid(logits["conv2"]) * (1 - torch.sigmoid(logits["conv2"])))[:, None]
    d_logit = 2.0 / std[0] * w / w.norm(dim=1, keepdim=True)  # slope (2, 0): only the L2 feature counts
    expected = (coeff * s_prime * d_logit).reshape(8, 3, 3, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(conv2.weight.grad, expected, rtol=1e-4, atol=1e-9)


def test_task_loss_gradients_reach_gate_function_and_weights():
    model, masker, pruner, x = setup("channel", 0.5, hidden=4)
    masker.set_masks(pruner.masks())
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    loss.backward()
    for name, fn in pruner.gate_fns.items():
        assert fn.slope.grad.abs().sum() > 0 and fn.bias.grad.abs() > 0, name
        assert fn.mlp[2].weight.grad.abs().sum() > 0, name  # zero-initialised output layer still learns
    for conv in masker.layers:
        assert conv.weight.grad.abs().sum() > 0


def test_layer_scope_budget_is_mean_of_layer_gaps():
    _, _, pruner, _ = setup("block:1x4", 0.5, scope="layer", budget_weight=2.0)
    with torch.no_grad():
        pruner.gate_fns["conv1"].bias.fill_(100.0)  # every conv1 unit kept: gap 0.5
        pruner.gate_fns["fc"].bias.fill_(-100.0)  # every fc unit pruned: gap -0.5
    logits = pruner.logits()
    assert int((logits["conv2"] > 0).sum()) == 72  # 144 blocks, initialised at the target
    assert pruner.penalty().item() == pytest.approx(2.0 * (0.25 + 0.0 + 0.25) / 3)


def test_finalize_projects_logits_to_exact_target():
    _, masker, pruner, _ = setup("unstructured", 0.8, init_keep=1.0)
    hard = pruner.finalize()
    total = sum(m.numel() for m in hard.values())
    assert sum(int(m.sum()) for m in hard.values()) == keep_count(total, 0.8)
    logits = {name: logit.detach() for name, logit in pruner.logits().items()}
    kept = torch.cat([logits[n][hard[n]] for n in hard])
    pruned = torch.cat([logits[n][~hard[n]] for n in hard])
    assert kept.min() >= pruned.max()
    assert masker.audit(hard)["achieved_sparsity"] == 1 - keep_count(total, 0.8) / total


def test_nm_mask_is_top_n_logits_per_row_and_has_no_budget():
    _, masker, pruner, _ = setup("nm:2:4", 0.5)
    masks = pruner.masks()
    for conv in masker.layers:
        rows = pruner.pattern.units(conv.weight.detach().abs())[..., 0]
        top = rows.argsort(dim=-1, descending=True)[:, :2]
        expected = torch.zeros_like(rows).scatter_(-1, top, 1.0)  # affine gate = magnitude ranking
        assert torch.equal(masks[conv.name].detach(), expected)
        assert torch.equal(pruner.finalize()[conv.name], expected.bool())
    assert pruner.penalty() == 0.0 and pruner.log_values()["gate_sparsity"] == 0.5


def test_state_dict_round_trip_keeps_frozen_statistics():
    model, masker, pruner, _ = setup("block:1x4", 0.5, hidden=2)
    with torch.no_grad():
        for p in pruner.parameters():
            p.add_(0.1)
        for conv in masker.layers:  # training moves the weights after attach
            conv.weight.mul_(1.5)
    blob = io.BytesIO()
    torch.save(pruner.state_dict(), blob)
    blob.seek(0)
    state = torch.load(blob, weights_only=True)
    fresh = AWGPruner(AWGConfig(hidden=2), parse_pattern("block:1x4"), 0.5)
    fresh.attach(masker.layers)  # statistics recomputed from the moved weights ...
    assert not torch.equal(fresh.stats["conv2"], pruner.stats["conv2"])
    fresh.load_state_dict(state)  # ... and restored from the checkpoint
    for name, logit in pruner.logits().items():
        assert torch.equal(fresh.logits()[name], logit)
    for name, mask in pruner.finalize().items():
        assert torch.equal(fresh.finalize()[name], mask)


@pytest.mark.parametrize(
    "field,value",
    [
        ("budget_weight", -1.0),
        ("gate_lr", 0.0),
        ("hidden", -1),
        ("init_slope", 0.0),
        ("init_keep", 1.5),
        ("gate_momentum", 1.0),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        AWGConfig(**{field: value})
    assert err.value.field == field


@pytest.mark.parametrize("pattern", ["unstructured", "block:1x4", "channel", "nm:2:4"])
@pytest.mark.parametrize("hidden", [0, 3])
def test_fused_logits_equal_the_stacked_affine_map_with_gradients(pattern, hidden):
    from baselines.awg import unit_features, unit_norms

    _, masker, pruner, _ = setup(pattern, hidden=hidden)
    for lay in masker.layers:
        fn, stats = pruner.gate_fns[lay.name], pruner.stats[lay.name]
        with torch.no_grad():
            fn.slope.copy_(torch.tensor([1.5, -0.7]))
            if fn.mlp is not None:
                nn.init.normal_(fn.mlp[2].weight)
        weight = lay.weight.detach().clone().requires_grad_(True)
        ref_w = weight.detach().clone().requires_grad_(True)
        fused = fn.from_norms(*unit_norms(pruner.pattern.units(weight)), stats)
        stacked = fn((unit_features(pruner.pattern.units(ref_w)) - stats[0]) / stats[1])
        torch.testing.assert_close(fused, stacked, rtol=1e-5, atol=1e-5)
        upstream = torch.randn_like(fused)
        (fused * upstream).sum().backward()
        (stacked * upstream).sum().backward()
        torch.testing.assert_close(weight.grad, ref_w.grad, rtol=1e-4, atol=1e-5)


def test_penalty_reuses_the_step_masks_and_its_gradient_is_unchanged(monkeypatch):
    import baselines.awg as awg

    _, masker, pruner, _ = setup("block:1x4", 0.5, init_keep=1.0, budget_weight=3.0)
    fresh = pruner.penalty()  # no masks() this step: computed on its own
    fresh.backward()
    expected = [p.grad.clone() for p in pruner.parameters()]
    for p in pruner.parameters():
        p.grad = None
    calls, unit_norms = [], awg.unit_norms
    monkeypatch.setattr(awg, "unit_norms", lambda units: calls.append(1) or unit_norms(units))
    pruner.masks()
    reused = pruner.penalty()
    assert len(calls) == len(masker.layers)  # one gate graph per step, not two
    assert float(reused.detach()) == float(fresh.detach())
    reused.backward()
    for p, g in zip(pruner.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    assert pruner._step_masks is None  # used once: a later penalty computes its own masks
    pruner.penalty()
    assert len(calls) == 2 * len(masker.layers)


@pytest.mark.parametrize("shape", [(4096, 8), (64, 576), (300, 3)])
def test_unit_norms_gradient_is_autograds_bit_for_bit(shape):
    """The fused backward of (L2 norm, mean |w|) equals autograd's through the two separate
    operations exactly, zero-norm units (the masked fill) and zero weights (sgn 0) included."""
    g = torch.Generator().manual_seed(shape[1])
    w = torch.randn(shape, generator=g)
    w[3] = 0.0
    w[5, 0] = 0.0
    grad_norm, grad_mean = torch.randn(shape[0], generator=g), torch.randn(shape[0], generator=g)
    results = []
    for fused in (False, True):
        x = w.clone().requires_grad_(True)
        if fused:
            norm, mean_abs = unit_norms(x)
        else:
            norm, mean_abs = torch.linalg.vector_norm(x, dim=-1), x.abs().mean(dim=-1)
        torch.autograd.backward([norm, mean_abs], [grad_norm, grad_mean])
        results.append((norm.detach(), mean_abs.detach(), x.grad))
    for separate, fused in zip(*results):
        assert torch.equal(separate, fused)
    assert torch.equal(results[1][2][3], torch.zeros(shape[1]))  # a zero-norm unit: the fill, and sgn 0
