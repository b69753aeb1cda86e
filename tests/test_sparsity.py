import pytest
import torch

from bench.core.errors import ConfigError
from bench.core.select import expected_kept, hard_topk
from bench.core.sparsity import NM, Block, OutputChannel, Unstructured, parse_pattern, resolve_sparsity, weight_matrix

PATTERNS = ["unstructured", "block:1x8", "block:8x8", "block:2x4", "channel", "nm:2:4", "nm:1:4", "nm:4:8"]


@pytest.mark.parametrize("text", PATTERNS)
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (32, 16), (16, 16, 1, 1)])
def test_units_expand_roundtrip_and_validity(text, shape):
    pattern = parse_pattern(text)
    torch.manual_seed(0)
    weight = torch.randn(shape)
    units = pattern.units(weight)
    assert units.numel() == weight.numel()
    # a random unit mask expands to a weight mask that obeys the pattern
    unit_mask = (torch.rand(units.shape[:-1]) > 0.5).float()
    if pattern.per_row_budget:
        unit_mask = hard_topk({"w": torch.rand(units.shape[:-1])}, pattern, 0.5)["w"].float()
    mask = pattern.expand(unit_mask, weight.shape)
    assert mask.shape == weight.shape
    assert pattern.is_valid(mask)
    # unit values of the masked weight are the unit values masked (expand is consistent with units)
    torch.testing.assert_close(pattern.units(weight * mask), units * unit_mask.unsqueeze(-1))


def test_block_grouping_is_input_channel_contiguous_at_one_tap():
    weight = torch.arange(2 * 16 * 3 * 3, dtype=torch.float32).reshape(2, 16, 3, 3)
    units = Block(1, 8).units(weight)
    # first unit: output 0, tap (0,0), input channels 0..7
    torch.testing.assert_close(units[0], weight[0, 0:8, 0, 0])
    torch.testing.assert_close(units[1], weight[0, 8:16, 0, 0])
    torch.testing.assert_close(units[2], weight[0, 0:8, 0, 1])
    units88 = Block(2, 8).units(weight)
    torch.testing.assert_close(units88[0], torch.stack([weight[0, 0:8, 0, 0], weight[1, 0:8, 0, 0]]).reshape(-1))


def test_nm_rows_run_along_the_reduction_dimension():
    weight = torch.randn(4, 8, 3, 3)
    rows = NM(2, 4).units(weight).squeeze(-1)
    torch.testing.assert_close(rows[0], weight[0, 0:4, 0, 0])
    torch.testing.assert_close(rows[1], weight[0, 4:8, 0, 0])


def test_invalid_masks_are_detected():
    mask = torch.ones(8, 16)
    mask[0, 0] = 0
    assert not Block(1, 8).is_valid(mask)
    assert not OutputChannel().is_valid(mask)
    assert Unstructured().is_valid(mask)
    assert not NM(2, 4).is_valid(torch.ones(8, 16))
    nm_mask = torch.tensor([[1.0, 1, 0, 0, 0, 1, 1, 0]])
    assert NM(2, 4).is_valid(nm_mask)
    nm_mask[0, 2] = 1
    assert not NM(2, 4).is_valid(nm_mask)


@pytest.mark.parametrize("bad", ["nm:4:4", "nm:5:4", "nm:0:4", "block:1x1", "block:0x8", "diagonal", "block:8"])
def test_bad_patterns(bad):
    with pytest.raises(ConfigError, match="pattern"):
        parse_pattern(bad)


def test_block_that_does_not_divide_a_layer():
    with pytest.raises(ConfigError, match="does not divide layer 'conv'"):
        Block(1, 8).check(torch.Size([16, 12, 3, 3]), "conv")


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_range(value):
    with pytest.raises(ConfigError, match="sparsity"):
        resolve_sparsity(Block(1, 8), value)


def test_nm_fixes_sparsity():
    assert resolve_sparsity(NM(2, 4), None) == 0.5
    assert resolve_sparsity(NM(1, 4), 0.75) == 0.75
    with pytest.raises(ConfigError, match="fixes the sparsity to 0.5"):
        resolve_sparsity(NM(2, 4), 0.7)


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9, 0.33])
def test_global_hard_topk_is_exact(sparsity):
    torch.manual_seed(5)
    scores = {"a": torch.randn(100), "b": torch.randn(37) - 5, "c": torch.randn(64) + 1}
    masks = hard_topk(scores, Block(1, 8), sparsity)
    kept = sum(int(m.sum()) for m in masks.values())
    assert (
        kept
        == expected_kept({k: v.numel() for k, v in scores.items()}, Block(1, 8), sparsity)
        == round((1 - sparsity) * 201)
    )
    assert all(m.sum() >= 1 for m in masks.values())  # no layer is cut entirely
    # ranking: every kept score (outside the one-per-layer guarantee) >= every dropped score
    flat_kept = torch.cat([s[m] for s, m in zip(scores.values(), masks.values())])
    flat_drop = torch.cat([s[~m] for s, m in zip(scores.values(), masks.values())])
    assert (flat_kept.sort().values[len(scores) :].min() >= flat_drop.max()) or len(flat_drop) == 0


def test_weight_matrix_view():
    weight = torch.randn(3, 4, 2, 2)
    assert weight_matrix(weight)[1, 5].item() == weight[1, 1, 0, 1].item()
