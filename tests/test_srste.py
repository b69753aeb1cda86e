import pytest
import torch
from torch import nn

from baselines.srste import SRSTEConfig, SRSTEPruner
from bench.core.errors import ConfigError
from bench.core.masks import Masker, find_prunable
from bench.core.pruner import Progress
from bench.core.select import expected_kept
from bench.core.sparsity import parse_pattern, weight_matrix
from bench.runs.registry import build_pruner


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def top_n_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Direct top-N |w| per row of M on the matrix view, back to the weight's shape."""
    rows = weight_matrix(weight.detach()).reshape(-1, m)
    keep = torch.zeros_like(rows)
    keep.scatter_(1, rows.abs().topk(n, dim=1).indices, 1.0)
    matrix = keep.reshape(weight.shape[0], -1)
    if weight.dim() == 4:
        o, i, kh, kw = weight.shape
        return matrix.reshape(o, kh, kw, i).permute(0, 3, 1, 2)
    return matrix


def test_gradient_is_dense_upstream_plus_sparse_refined_decay():
    model = net()
    x, y = torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,))
    pattern = parse_pattern("nm:2:4")
    masker = Masker(model, find_prunable(model), pattern)
    lam = 0.3  # large, so the decay term is far above float noise
    pruner = build_pruner("srste", pattern, 0.5, {"lambda_w": str(lam)})
    pruner.attach(masker.layers)
    pruner.on_step(Progress("prune", 0, 10))
    masker.set_masks(pruner.masks(), straight_through=pruner.straight_through)
    loss = nn.functional.cross_entropy(model(x), y) + pruner.penalty()
    loss.backward()

    # reference: the same network run functionally on the masked weights W~ = M * W as leaf tensors
    masked = {}
    for layer in masker.layers:
        mask = top_n_mask(layer.weight, 2, 4)
        assert torch.equal(pattern.expand(pruner.masks()[layer.name], layer.weight.shape), mask)
        masked[layer.name] = (layer.weight.detach() * mask).requires_grad_(True)
    h = torch.relu(nn.functional.conv2d(x, model[0].weight, model[0].bias, padding=1))
    h = torch.relu(nn.functional.conv2d(h, masked["2"], model[2].bias, padding=1))
    h = torch.relu(nn.functional.linear(model[5](model[4](h)), masked["6"], model[6].bias))
    nn.functional.cross_entropy(nn.functional.linear(h, model[8].weight, model[8].bias), y).backward()
    for layer in masker.layers:
        upstream = masked[layer.name].grad
        mask = top_n_mask(layer.weight, 2, 4)
        expected = upstream + lam * (1 - mask) * layer.weight.detach()
        assert torch.allclose(layer.weight.grad, expected, atol=1e-6)
        pruned = mask == 0  # pruned weights get a non-zero gradient (straight-through)
        assert (layer.weight.grad[pruned] != 0).any()
        assert torch.allclose(layer.weight.grad[pruned], expected[pruned], atol=1e-6)


def test_penalty_value_matches_definition_and_finite_difference():
    model = net().double()  # float64 so the central difference resolves the tiny decay slope
    pattern = parse_pattern("nm:1:4")
    masker = Masker(model, find_prunable(model), pattern)
    pruner = SRSTEPruner(SRSTEConfig(lambda_w=2e-4), pattern, 0.75)
    pruner.attach(masker.layers)
    pruner.masks()
    direct = sum(((1 - top_n_mask(l.weight, 1, 4)) * l.weight.detach()).pow(2).sum() for l in masker.layers)
    assert torch.allclose(pruner.penalty(), 0.5 * 2e-4 * direct)
    weight = masker.layers[0].weight
    index = (1, 2, 0, 1)
    mask = top_n_mask(weight, 1, 4)
    assert mask[index] == 0  # a pruned entry: the penalty's slope there is lambda * w
    eps = 1e-3
    with torch.no_grad():
        weight[index] += eps
        up = float(pruner.penalty())
        weight[index] -= 2 * eps
        down = float(pruner.penalty())
        weight[index] += eps
    assert (up - down) / (2 * eps) == pytest.approx(2e-4 * float(weight[index].detach()), rel=1e-6)


def test_masks_follow_the_weights_every_step_and_finalize_is_exact():
    model = net()
    x, y = torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,))
    pattern = parse_pattern("nm:2:4")
    masker = Masker(model, find_prunable(model), pattern)
    pruner = build_pruner("srste", pattern, 0.5)
    pruner.attach(masker.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for step in range(4):
        pruner.on_step(Progress("prune", step, 4))
        masks = pruner.masks()
        for layer in masker.layers:  # recomputed from the current dense weights
            assert torch.equal(pattern.expand(masks[layer.name], layer.weight.shape), top_n_mask(layer.weight, 2, 4))
        masker.set_masks(masks, straight_through=True)
        loss = nn.functional.cross_entropy(model(x), y) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hard = pruner.finalize()
    audit = masker.audit(hard)
    counts = {layer.name: layer.num_units for layer in masker.layers}
    assert audit["pattern_valid"] and audit["achieved_sparsity"] == 0.5
    assert audit["kept_units"] == expected_kept(counts, pattern, 0.5)
    for layer in masker.layers:
        assert torch.equal(pattern.expand(hard[layer.name].float(), layer.weight.shape), top_n_mask(layer.weight, 2, 4))


def test_only_nm_and_config_checked():
    with pytest.raises(ConfigError, match="pattern"):
        build_pruner("srste", parse_pattern("unstructured"), 0.5)
    with pytest.raises(ConfigError, match="lambda_w"):
        SRSTEConfig(lambda_w=-1.0)
    assert SRSTEPruner.straight_through and SRSTEConfig().lambda_w == 2e-4


def test_lambda_scaled_to_the_recipe_and_capped():
    """lambda * (our pruning stage's lr sum) = lambda_w * the reference recipe's lr sum (30030):
    a pruned weight decays as much as in the reference's 120 epochs; capped for very short stages."""
    from baselines.srste import REFERENCE_LR_SUM
    from bench.core.pruner import Progress

    pattern = parse_pattern("nm:2:4")
    pruner = SRSTEPruner(SRSTEConfig(lambda_w=2e-4), pattern, 0.5)
    pruner.on_step(Progress("prune", 0, 300, lr_sum=1.5))  # 300 steps, mean lr 0.005
    assert pruner.lam == pytest.approx(2e-4 * REFERENCE_LR_SUM / 1.5) and pruner.lam * 1.5 == pytest.approx(6.006)
    pruner.on_step(Progress("prune", 0, 10, lr_sum=0.1))  # 10 steps at lr 0.01: 0.25 * 10 / 0.1 = 25
    assert pruner.lam == pytest.approx(25.0)
    fixed = SRSTEPruner(SRSTEConfig(lambda_w=2e-4, lambda_scale="none"), pattern, 0.5)
    fixed.on_step(Progress("prune", 0, 300, lr_sum=1.5))
    assert fixed.lam == 2e-4
    own_loop = SRSTEPruner(SRSTEConfig(lambda_w=2e-4), pattern, 0.5)
    own_loop.on_step(Progress("prune", 0, 300))  # bench.api: the user's loop, no lr sum known
    assert own_loop.lam == 2e-4
