"""PaS (baselines/pas.py): STE gates, the resource penalty from traced MACs, projection, N:M, state."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.pas import PaSConfig, PaSPruner
from bench.core.errors import ConfigError
from bench.core.masks import Masker, calibrate
from bench.core.pruning_blocks import straight_through as straight_through_gate
from bench.core.select import keep_count
from bench.core.sparsity import parse_pattern


class TinyConvNet(nn.Module):
    """conv1 (4->8, 8x8 out) -> BN -> conv2 (8->8, stride 2, 4x4 out) -> BN -> pool -> fc (8->3)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def setup(pattern="channel", sparsity=0.5, calibrated=True, **options):
    torch.manual_seed(0)
    model = TinyConvNet()
    x = torch.randn(2, 4, 8, 8)
    masker = Masker(model, ["conv1", "conv2", "fc"], parse_pattern(pattern), x)
    if calibrated:
        calibrate(model, masker.layers, [x], lambda m, batch: m(batch))
    pruner = PaSPruner(PaSConfig(**options), parse_pattern(pattern), sparsity)
    pruner.attach(masker.layers)
    return model, masker, pruner, x


def set_gates(pruner, values: dict[str, list[float]]):
    with torch.no_grad():
        for name, vals in values.items():
            pruner.gates[name.replace(".", "__")].copy_(torch.tensor(vals))


def test_ste_forward_is_binary_and_backward_identity():
    gates = torch.tensor([0.7, 0.3, 0.55, 0.5, -2.0], requires_grad=True)
    b = straight_through_gate(gates, gates.detach() > 0.5)
    assert b.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]  # exact 0/1, 0.5 itself is off
    coeff = torch.tensor([3.0, -1.0, 0.25, 2.0, 5.0])
    (b * coeff).sum().backward()
    assert torch.equal(gates.grad, coeff)


@pytest.mark.parametrize("pattern,units_per_row", [("channel", 1), ("block:1x2", 3)])
def test_gate_gradient_equals_hand_computed_weight_saliency(pattern, units_per_row):
    """d loss / d g_u = sum_{w in u} w * d loss / d w_effective (PaS's STE), on y = x W^T."""
    torch.manual_seed(1)
    layer = nn.Linear(6, 4, bias=False)
    model = nn.Sequential(layer)
    masker = Masker(model, ["0"], parse_pattern(pattern))
    pruner = PaSPruner(PaSConfig(), parse_pattern(pattern), 0.5)
    pruner.attach(masker.layers)
    gates = torch.linspace(0.3, 0.8, 4 * units_per_row)
    set_gates(pruner, {"0": gates.tolist()})
    masker.set_masks(pruner.masks())
    x, r = torch.randn(5, 6), torch.randn(5, 4)
    loss = (model(x) * r).sum()
    loss.backward()
    weight = masker.layers[0].weight.detach()
    keep = (gates > 0.5).float().reshape(4, units_per_row).repeat_interleave(6 // units_per_row, dim=1)
    assert torch.equal(model(x), x @ (weight * keep).T)  # forward uses the binary mask exactly
    grad_effective = r.T @ x  # d loss / d W_effective, by hand
    expected = (weight * grad_effective).reshape(4, units_per_row, -1).sum(-1).reshape(-1)
    torch.testing.assert_close(pruner.gates["0"].grad, expected, rtol=1e-5, atol=1e-6)


def test_calibrated_positions_and_mac_penalty_match_direct_computation():
    model, masker, pruner, _ = setup("channel", 0.5, resource="macs", mac_unit=100.0, alpha=2.0, penalty_per_gate=False)
    assert [layer.positions for layer in masker.layers] == [64, 16, 1]  # 8x8, 4x4 (stride 2), one vector
    set_gates(
        pruner,
        {
            "conv1": [0.6, 0.4, 0.7, 0.2, 0.9, 0.55, 0.45, 0.8],  # 5 kept
            "conv2": [0.1, 0.6, 0.6, 0.6, 0.3, 0.3, 0.3, 0.3],  # 3 kept
            "fc": [0.6, 0.6, 0.1],
        },
    )  # 2 kept
    macs = 64 * 5 * (4 * 9) + 16 * 3 * (8 * 9) + 1 * 2 * 8
    dense = 64 * 8 * 36 + 16 * 8 * 72 + 1 * 3 * 8
    assert dense == 27672
    gap = macs / 100 - 0.5 * dense / 100
    penalty = pruner.penalty()
    torch.testing.assert_close(penalty, torch.tensor(2.0 * gap**2), rtol=1e-6, atol=0)
    penalty.backward()
    grads = {name: pruner.gates[name].grad for name in ("conv1", "conv2", "fc")}
    torch.testing.assert_close(grads["conv1"], torch.full((8,), 2 * 2.0 * gap * 64 * 36 / 100))
    torch.testing.assert_close(grads["conv2"], torch.full((8,), 2 * 2.0 * gap * 16 * 72 / 100))
    torch.testing.assert_close(grads["fc"], torch.full((3,), 2 * 2.0 * gap * 8 / 100))
    assert pruner.log_values()["resource_ratio"] == pytest.approx(macs / dense)


def test_units_penalty_and_dense_normaliser():
    _, _, pruner, _ = setup("block:1x4", 0.75, alpha=3.0, penalty_per_gate=False)  # units, mac_unit=0 (dense)
    total = 8 * 9 + 8 * 18 + 3 * 2  # units of conv1 (8 x 36/4), conv2 (8 x 72/4), fc (3 x 8/4)
    with torch.no_grad():
        pruner.gates["conv2"][:] = torch.arange(144).float() / 143  # 71 of 144 at or below 0.5
    kept = 72 + (144 - int((torch.arange(144).float() / 143 <= 0.5).sum())) + 6
    expected = 3.0 * (kept / total - 0.25) ** 2
    assert pruner.penalty().item() == pytest.approx(expected, rel=1e-6)
    assert pruner.log_values()["gate_sparsity"] == pytest.approx(1 - kept / total)


def test_initial_gates_all_on_and_own_group():
    _, _, pruner, _ = setup("block:1x4", 0.5, gate_lr=1e-3, init_noise=0.02)
    gates = torch.cat([g.detach().reshape(-1) for g in pruner.parameters()])
    assert gates.numel() == 222 and gates.min() >= 0.58 and gates.max() <= 0.62 and gates.std() > 0.01
    assert all(bool(m.eq(1).all()) for m in pruner.masks().values())
    _, _, decayed, _ = setup("block:1x4", 0.5, gate_lr=1e-3, gate_weight_decay=1e-4)
    (group,) = decayed.param_groups()
    assert group["lr"] == 1e-3 and group["momentum"] == 0.0 and group["weight_decay"] == 1e-4


def test_gate_count_scales_the_penalty_only():
    """The gates' lr is gate_lr (the task loss's gradient is not multiplied by G); the penalty's
    gradient on every gate is G times the plain penalty's (audit: lr x G made gates random-walk)."""
    _, _, scaled, _ = setup("block:1x4", 0.5, gate_lr=1e-3)
    _, _, plain, _ = setup("block:1x4", 0.5, gate_lr=1e-3, penalty_per_gate=False)
    assert scaled.param_groups()[0]["lr"] == 1e-3
    scaled.penalty().backward()
    plain.penalty().backward()
    for a, b in zip(scaled.parameters(), plain.parameters()):
        assert b.grad.abs().max() > 0
        assert torch.allclose(a.grad, 222 * b.grad, rtol=1e-5)


def test_projection_gives_exact_target_and_ranks_by_gate():
    _, masker, pruner, _ = setup("unstructured", 0.7)
    torch.manual_seed(3)
    with torch.no_grad():
        for g in pruner.parameters():
            g.copy_(torch.rand_like(g))
    total = sum(g.numel() for g in pruner.parameters())
    hard = pruner.finalize()
    assert sum(int(m.sum()) for m in hard.values()) == keep_count(total, 0.7)
    assert masker.audit(hard)["achieved_sparsity"] == 1 - keep_count(total, 0.7) / total
    kept = torch.cat([pruner.gates[n].detach()[hard[n]] for n in hard])
    pruned = torch.cat([pruner.gates[n].detach()[~hard[n]] for n in hard])
    assert kept.min() >= pruned.max()


def test_without_projection_finalize_returns_thresholded_gates():
    _, _, pruner, _ = setup("channel", 0.5, projection=False)
    values = {"conv1": [0.6, 0.4, 0.7, 0.2, 0.9, 0.55, 0.45, 0.8], "conv2": [0.51] * 8, "fc": [0.5, 0.6, 0.1]}
    set_gates(pruner, values)
    hard = pruner.finalize()
    for name, vals in values.items():
        assert hard[name].tolist() == [v > 0.5 for v in vals]
    assert sum(int(m.sum()) for m in hard.values()) == 14  # not the 10 that the 0.5 target would keep
    assert pruner.log_values()["gate_sparsity"] == pytest.approx(5 / 19)


def test_nm_gates_rank_by_magnitude_and_mask_is_top_n_per_row():
    _, masker, pruner, _ = setup("nm:2:4", 0.5)
    for layer in masker.layers:
        magnitude = layer.weight.detach().abs()
        gates = pruner.gates[layer.name].detach()
        units = pruner.pattern.units(magnitude)[..., 0]
        torch.testing.assert_close(gates, 0.6 * units / units.mean())
    with torch.no_grad():
        pruner.gates["fc"].copy_(torch.tensor([[0.1, 0.9, 0.8, 0.2], [1.0, 0.0, -1.0, 2.0]] * 3))
    masks = pruner.masks()
    assert masks["fc"].tolist() == [[0, 1, 1, 0], [1, 0, 0, 1]] * 3
    masks["fc"].sum().backward()
    assert torch.equal(pruner.gates["fc"].grad, torch.ones(6, 4))
    assert pruner.penalty() == 0.0
    assert all(bool((m.sum(-1) == 2).all()) for m in pruner.finalize().values())


def test_state_dict_round_trip_through_weights_only_load():
    _, _, pruner, _ = setup("block:1x4", 0.5, resource="macs")
    torch.manual_seed(5)
    with torch.no_grad():
        for g in pruner.parameters():
            g.add_(torch.randn_like(g) * 0.3)
    blob = io.BytesIO()
    torch.save(pruner.state_dict(), blob)
    blob.seek(0)
    state = torch.load(blob, weights_only=True)
    _, _, fresh, _ = setup("block:1x4", 0.5, resource="macs")
    fresh.load_state_dict(state)
    for a, b in zip(fresh.parameters(), pruner.parameters()):
        assert torch.equal(a, b)
    assert fresh.unit_cost == pruner.unit_cost
    for name, mask in pruner.finalize().items():
        assert torch.equal(fresh.finalize()[name], mask)
    assert fresh.penalty().item() == pruner.penalty().item()


@pytest.mark.parametrize(
    "field,value",
    [
        ("gate_init", 0.5),
        ("init_noise", 0.1),
        ("resource", "flops"),
        ("gate_lr", 0.0),
        ("mac_unit", -1.0),
        ("gate_momentum", 1.0),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        PaSConfig(**{field: value})
    assert err.value.field == field


def test_penalty_reuses_the_step_masks_with_the_same_value_and_gradient(monkeypatch):
    """One gate decision per step: penalty() after masks() uses those masks (PaS decided them
    twice before); the loss and the gates' gradient are those of two separate decisions, bit for bit."""
    _, _, pruner, _ = setup("block:1x4", 0.5)
    with torch.no_grad():
        for gate in pruner.parameters():
            gate.copy_(torch.linspace(0.1, 0.9, gate.numel()).reshape(gate.shape))
    upstream = {
        name: torch.randn(gate.shape, generator=torch.Generator().manual_seed(1)) for name, gate in pruner.gates.items()
    }

    def step(reuse: bool):
        for gate in pruner.parameters():
            gate.grad = None
        masks = pruner.masks()  # what the stage driver installs for the forward
        if not reuse:
            pruner._step_masks = None  # the old penalty: its own masks
        loss = sum((m * upstream[name]).sum() for name, m in masks.items()) + pruner.penalty()
        loss.backward()
        return float(loss.detach()), [gate.grad.clone() for gate in pruner.parameters()]

    calls, hard_gates = [], pruner.hard_gates
    monkeypatch.setattr(pruner, "hard_gates", lambda: calls.append(1) or hard_gates())
    old_loss, old_grads = step(reuse=False)
    assert len(calls) == 2
    new_loss, new_grads = step(reuse=True)
    assert len(calls) == 3  # one decision in this step
    assert new_loss == old_loss and all(torch.equal(a, b) for a, b in zip(new_grads, old_grads))
    assert any(g.abs().max() > 0 for g in new_grads)
    assert pruner._step_masks is None  # used once: the next penalty without masks() decides again
    pruner.penalty()
    assert len(calls) == 4
