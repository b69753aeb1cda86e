import pytest
import torch
from torch import nn

import bench.core.select as select_module
from bench.core.masks import Masker, calibrate, find_prunable, input_norm_like_weight
from bench.core.select import hard_topk, nm_topk, nm_topk_layers
from bench.core.sparsity import Block, OutputChannel, parse_pattern


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_default_discovery_excludes_first_and_last():
    names = find_prunable(small_net())
    assert names == ["3", "6", "11"]
    assert find_prunable(small_net(), keep_first_last=False)[0] == "0"
    assert find_prunable(small_net(), exclude=["1*"]) == ["3", "6"]


def test_masks_survive_sgd_with_momentum_and_weight_decay():
    model = small_net()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    masker = Masker(model, find_prunable(model), Block(1, 8), x)
    scores = {layer.name: torch.rand(layer.unit_shape) for layer in masker.layers}
    hard = hard_topk(scores, Block(1, 8), 0.5)
    masker.set_masks({n: m.float() for n, m in hard.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for layer in masker.layers:
        effective = layer.module.weight
        expanded = Block(1, 8).expand(hard[layer.name].float(), effective.shape)
        assert (effective[expanded == 0] == 0).all()
        assert (effective[expanded == 1] != 0).all()
        # the gradient of a pruned weight is exactly zero
        assert (layer.weight.grad[expanded == 0] == 0).all()
    audit = masker.audit(hard)
    assert audit["achieved_sparsity"] == 0.5 and audit["pattern_valid"]
    # folding bakes the mask into plain tensors, state_dict keys become the usual ones
    masker.remove(fold=True)
    assert "3.weight" in model.state_dict()
    assert (model[3].weight[Block(1, 8).expand(hard["3"].float(), model[3].weight.shape) == 0] == 0).all()


def test_masks_survive_state_dict_roundtrip():
    model = small_net()
    x = torch.randn(2, 1, 8, 8)
    masker = Masker(model, find_prunable(model), parse_pattern("nm:2:4"), x)
    hard = hard_topk({l.name: torch.rand(l.unit_shape) for l in masker.layers}, masker.pattern, 0.5)
    masker.set_masks({n: m.float() for n, m in hard.items()})
    state = model.state_dict()
    twin = small_net()
    twin_masker = Masker(twin, find_prunable(twin), parse_pattern("nm:2:4"), x)
    twin.load_state_dict(state)
    twin_masker.set_masks({n: m.float() for n, m in hard.items()})
    model.eval()
    twin.eval()
    torch.testing.assert_close(model(x), twin(x))


def shrink(model: nn.Sequential, keep: dict[str, torch.Tensor]) -> nn.Sequential:
    """Physically remove the output channels of conv '3' (and BN '4', the inputs of conv '6')."""
    kept = keep["3"].nonzero().flatten()
    conv, bn, nxt = model[3], model[4], model[6]
    new_conv = nn.Conv2d(8, len(kept), 3, padding=1)
    new_conv.weight.data = conv.weight.data[kept].clone()
    new_conv.bias.data = conv.bias.data[kept].clone()
    new_bn = nn.BatchNorm2d(len(kept))
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(new_bn, attr).data = getattr(bn, attr).data[kept].clone()
    new_next = nn.Conv2d(len(kept), nxt.out_channels, 3, padding=1)
    new_next.weight.data = nxt.weight.data[:, kept].clone()
    new_next.bias.data = nxt.bias.data.clone()
    out = nn.Sequential(*model)
    out[3], out[4], out[6] = new_conv, new_bn, new_next
    return out


def test_output_channel_mask_equals_physically_shrunk_model():
    model = small_net()
    model[6] = nn.Conv2d(16, 16, 3, padding=1)  # plain next conv so the shrink is a simple slice
    randomise_bn(model)
    x = torch.randn(4, 1, 8, 8)
    masker = Masker(model, ["3"], OutputChannel(), x)
    assert masker.layers[0].batchnorm is model[4]
    keep = {"3": torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)}
    masker.set_masks({"3": keep["3"].float()})
    model.eval()
    masked_out = model(x)
    masker.remove(fold=True)
    shrunk = shrink(model, keep).eval()
    torch.testing.assert_close(shrunk(x), masked_out, atol=1e-5, rtol=1e-5)
    # without the BN masking the pruned channels would output relu(beta) != 0
    assert (model[4].bias[~keep["3"]] == 0).all() and (model[4].weight[~keep["3"]] == 0).all()


def test_calibration_statistics_and_positions():
    model = small_net()
    x = torch.randn(4, 1, 8, 8)
    masker = Masker(model, find_prunable(model), Block(1, 8), x)
    calibrate(model, masker.layers, [(x,)], lambda m, b: m(b[0]))
    by_name = masker.by_name()
    assert by_name["3"].input_sq_mean.shape == (8,) and by_name["3"].positions == 64
    assert by_name["11"].positions == 1
    norms = input_norm_like_weight(by_name["6"])  # grouped conv: 2 groups of 8 inputs
    assert norms.shape == model[6].parametrizations.weight.original.shape
    expected = by_name["6"].input_sq_mean.sqrt()
    torch.testing.assert_close(norms[0, :, 0, 0], expected[:8])
    torch.testing.assert_close(norms[15, :, 1, 1], expected[8:])


def _gated_grad(affine_only: bool, scale_channel0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, gradient of channel 0's gate) of conv -> BN -> relu -> conv with gate 0 on channel 0."""
    from bench.core.sparsity import parse_pattern

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    with torch.no_grad():
        model[0].weight[0] *= scale_channel0
        model[1].bias.fill_(0.3)
    x = torch.randn(8, 3, 9, 9)
    masker = Masker(model, ["0"], parse_pattern("channel"), x)
    gate = torch.tensor([0.0, 1.0, 1.0, 1.0], requires_grad=True)
    masker.set_masks({"0": gate}, affine_only=affine_only)
    out = model(x)
    (out**2).sum().backward()
    return out.detach(), gate.grad[0].clone()


def test_off_gates_see_their_channel_activation_with_affine_only():
    """PaS/AWG/SMART gates (Pruner.gates_see_activation): a gate at 0 before a BN gets gamma*x_hat + beta
    as gradient -- it depends on its channel's conv weights -- instead of beta alone (weights zeroed);
    the forward output is the same either way."""
    out_a, grad_a = _gated_grad(True, 1.0)
    out_b, grad_b = _gated_grad(True, -3.0)  # another filter for channel 0: another activation
    out_s, grad_s = _gated_grad(False, 1.0)
    out_t, grad_t = _gated_grad(False, -3.0)
    assert torch.allclose(out_a, out_s, atol=1e-6) and torch.allclose(out_b, out_t, atol=1e-6)
    assert torch.allclose(grad_s, grad_t)  # support-masked: the gate sees beta only, whatever the filter
    assert not torch.allclose(grad_a, grad_b, atol=1e-3)  # affine-only: the gate sees its channel
    from bench.runs.registry import load_pruners

    learned = {name for name, cls in load_pruners().items() if cls.gates_see_activation}
    assert learned == {"pas", "awg", "smart"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n", [(2, 1), (3, 2), (4, 2), (4, 1), (8, 2), (8, 7), (16, 4)])
def test_nm_topk_keeps_n_per_row_in_float64_order_with_ties_by_position(dtype, m, n):
    g = torch.Generator().manual_seed(m * 10 + n)
    scores = torch.randn(3000, m, generator=g).to(dtype)
    scores[::3] = scores[::3].round()  # many ties inside a row
    mask = nm_topk(scores, n)
    wide = scores.to(torch.float64)
    rank = torch.zeros_like(wide, dtype=torch.long)  # entries ahead: larger, or equal and earlier
    for j in range(m):
        ahead = (wide[:, j : j + 1] > wide) | ((wide[:, j : j + 1] == wide) & (torch.arange(m) > j))
        rank += ahead.long()
    assert mask.dtype == torch.bool and bool((mask.sum(-1) == n).all())
    assert torch.equal(mask, rank < n)


def stable_sort_topn(scores: torch.Tensor, n: int) -> torch.Tensor:
    order = torch.argsort(scores.to(torch.float64), dim=-1, descending=True, stable=True)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order[..., :n], True)


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("m", [2, 4, 5, 8, 16])
def test_nm_topk_is_a_stable_descending_sort_with_nan_inf_and_signed_zeros(m, forced, with_nan, monkeypatch):
    """The pairwise ranks (M <= 8) keep what a stable descending sort keeps: NaN first as sort puts
    it, -0 tied with +0, +-inf, ties by position. Without a NaN the CPU skips the NaN comparisons;
    ``forced`` runs them anyway, as off the CPU."""
    if forced:
        monkeypatch.setattr(select_module, "_may_hold_nan", lambda s: True)
    g = torch.Generator().manual_seed(m)
    scores = torch.randint(0, 4, (4000, m), generator=g).float()
    if with_nan:
        scores[torch.rand(scores.shape, generator=g) < 0.1] = float("nan")
    for value in (float("inf"), float("-inf"), -0.0, 0.0):
        scores[torch.rand(scores.shape, generator=g) < 0.08] = value
    for n in range(0, m + 1):
        assert torch.equal(nm_topk(scores, n), stable_sort_topn(scores, n)), n
    assert torch.equal(nm_topk(scores.reshape(-1, 2, m), 1), stable_sort_topn(scores, 1).reshape(-1, 2, m))


def test_nm_topk_layers_equals_nm_topk_per_layer():
    g = torch.Generator().manual_seed(5)
    scores = {"a": torch.randn(30, 4, generator=g), "b": torch.randn(2, 5, 4, generator=g), "c": torch.zeros(7, 4)}
    together = nm_topk_layers(scores, 2)
    assert list(together) == list(scores)
    for name, s in scores.items():
        assert torch.equal(together[name], nm_topk(s, 2)), name
    mixed = {**scores, "d": torch.randn(9, 4, generator=g, dtype=torch.float64)}  # dtypes differ: per layer
    assert all(torch.equal(nm_topk_layers(mixed, 1)[name], nm_topk(s, 1)) for name, s in mixed.items())


@pytest.mark.parametrize("extra", ["ties", "+inf", "-inf", "nan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("m", [2, 3, 4, 8, 16])
def test_row_order_values_are_topks_values(m, dtype, extra, monkeypatch):
    """The (r + 1)-th largest of every row, topk's values bit for bit (ties, +-inf, NaN): from the
    sorting network for M <= 8 without NaN (topk is not called), else from topk."""
    g = torch.Generator().manual_seed(m)
    scores = torch.randint(0, 5, (3000, m), generator=g).float()
    if extra != "ties":
        scores[torch.rand(scores.shape, generator=g) < 0.05] = float(extra)
    scores = scores.to(dtype)
    network = m <= 8 and extra != "nan"
    for ranks in [(0,), (0, 1), (m - 2, m - 1), tuple(range(m))]:
        want = torch.topk(scores, max(ranks) + 1, dim=-1).values[..., list(ranks)]
        with monkeypatch.context() as patch:
            if network:
                patch.setattr(torch, "topk", None)
            got = select_module.row_order_values(scores, ranks)
        assert got.dtype == dtype and torch.equal(got.isnan(), want.isnan()), ranks
        assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)), ranks


def test_unit_mask_keeps_the_expansion_of_a_held_mask_only():
    """A fixed mask set again keeps its expansion; one changed in place, a new tensor, or a mask
    in an autograd graph (learned) is expanded again."""
    from bench.core.masks import UnitMask

    param = UnitMask(Block(1, 4), torch.Size((4, 8, 3, 3)))
    unit = (torch.rand(4, 18) > 0.5).float()
    param.set(unit)
    first = param.mask
    param.set(unit)
    assert param.mask is first
    unit[0, 0] = 1.0 - unit[0, 0]  # in place
    param.set(unit)
    assert param.mask is not first and torch.equal(param.mask, Block(1, 4).expand(unit, torch.Size((4, 8, 3, 3))))
    learned = torch.rand(4, 18, requires_grad=True)
    param.set(learned)
    kept = param.mask
    param.set(learned)
    assert param.mask is not kept and param.mask.requires_grad
    param.set(None)
    assert param.mask is None


@pytest.mark.parametrize("pattern", ["channel", "block:1x4", "nm:2:4"])
@pytest.mark.parametrize("pruner", ["magnitude", "smart"])
def test_held_hard_masks_train_the_same_kept_weights_with_no_per_layer_product(pruner, pattern, monkeypatch):
    """Issue 34 item 2: on the accelerator path (here under ``sync_free``) the fine-tuning stage
    holds its hard masks in the weights (``Masker.hold``): the parametrizations' forwards are the
    identity and one ``_foreach_mul_`` after each optimizer step restores the zeros. Against the
    same run with parametrized hard masks (everything else on the same path), the whole run --
    prune, hard switch, fine-tune with SGD, momentum and weight decay -- ends with the same hard
    masks and, once folded, bit for bit the same model, BatchNorm affine terms of the channel
    pattern included; and a fine-tuning step runs fewer ``mul`` operators (no mask product per
    masked tensor, forward or backward) and one ``_foreach_mul_``."""
    from collections import Counter

    from conformance import harness
    from torch.utils._python_dispatch import TorchDispatchMode

    import bench.training.stages as stages
    from bench.core.syncs import sync_free
    from bench.training.stages import StageDriver
    from bench.training.train import PruneTrainer

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    def run(hold: bool):
        monkeypatch.setattr(stages, "may_read", lambda tensor: not hold)  # the fine-tuning choice only
        case = harness.KitCase(harness.registered_pruners()[pruner], pattern, 0.5)
        task, model, masker, pruner_ = harness.fresh_setup(case)
        b = task.budget
        driver = StageDriver(pruner_, masker, b.prune_epochs, b.finetune_epochs, lambda _: None)
        driver.setup(task.calibration_batches(), task.forward)
        with sync_free():
            hard = PruneTrainer(task, model, driver, 0).run()
            held = masker._held is not None
            ops = Ops()
            x, y = next(iter(task.train_batches(0, 0)))
            with ops:  # one more fine-tuning step's forward, backward and the driver's call, counted
                torch.nn.functional.cross_entropy(model(x), y).backward()
                driver.after_optimizer_step(None)
        masker.remove(fold=True)
        return hard, {k: v.detach().clone() for k, v in model.state_dict().items()}, held, ops.seen

    hard_ref, state_ref, held_ref, ops_ref = run(False)
    hard_held, state_held, held, ops_held = run(True)
    assert (held_ref, held) == (False, True)
    assert all(torch.equal(hard_ref[n], hard_held[n]) for n in hard_ref)
    for name, value in state_ref.items():
        assert torch.equal(value, state_held[name]), name
    assert ops_held["mul"] < ops_ref["mul"] and ops_held["_foreach_mul_"] == 1, (ops_ref, ops_held)
