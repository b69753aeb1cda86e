import pytest
import torch

import smart.topk as topk_module
from smart import soft_topk


@pytest.mark.parametrize("tau", [2.0, 0.5, 0.1, 0.02])
@pytest.mark.parametrize("k", [1, 7, 19])
def test_gradcheck_and_exact_sum(tau, k):
    torch.manual_seed(k)
    scores = torch.randn(20, dtype=torch.float64, requires_grad=True)
    out = soft_topk(scores, k, tau)
    assert abs(out.sum().item() - k) < 1e-6
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, k, tau), (scores,), eps=1e-6, atol=1e-6)


def test_implicit_gradient_matches_closed_form():
    torch.manual_seed(0)
    scores = torch.randn(12, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(12, dtype=torch.float64)
    tau = 0.3
    out = soft_topk(scores, 4, tau)
    (out * upstream).sum().backward()
    q = (out * (1 - out)).detach()
    expected = q / tau * (upstream - (upstream * q).sum() / q.sum())
    torch.testing.assert_close(scores.grad, expected)
    assert abs(scores.grad.sum().item()) < 1e-12  # shift invariance


def test_detached_t_keeps_only_the_diagonal():
    torch.manual_seed(1)
    scores = torch.randn(10, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(10, dtype=torch.float64)
    out = soft_topk(scores, 3, 0.5, detach_t=True)
    (out * upstream).sum().backward()
    q = (out * (1 - out)).detach()
    torch.testing.assert_close(scores.grad, q / 0.5 * upstream)


def test_small_tau_recovers_hard_topk():
    torch.manual_seed(2)
    scores = torch.randn(1000, dtype=torch.float64)
    k = 250
    soft = soft_topk(scores, k, 1e-4)
    hard = torch.zeros_like(scores)
    hard[torch.topk(scores, k).indices] = 1
    assert torch.allclose(soft, hard, atol=1e-3)
    assert abs(soft.sum().item() - k) < 1e-6


def test_batched_rows_with_one_budget_per_row():
    torch.manual_seed(3)
    rows = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randint(1, 8, (64,))
    out = soft_topk(rows, k, 0.2)
    torch.testing.assert_close(out.sum(dim=1), k.double(), atol=1e-9, rtol=0)
    # each row equals the 1-D operator on that row
    for i in (0, 17, 63):
        torch.testing.assert_close(out[i], soft_topk(rows[i].detach(), int(k[i]), 0.2))
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, k[:6], 0.2), (rows[:6].detach().requires_grad_(),))


def test_float32_scores_and_large_vector():
    torch.manual_seed(4)
    scores = torch.randn(200_000)
    out = soft_topk(scores, 50_000, 0.05)
    assert out.dtype == torch.float32
    assert abs(out.double().sum().item() - 50_000) < 0.5  # float32 output rounding only


@pytest.mark.parametrize("k", [0, 10])
def test_k_out_of_range_is_rejected(k):
    with pytest.raises(ValueError, match="strictly between"):
        soft_topk(torch.randn(10), k, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_rows_give_a_finite_zero_gradient(dtype):
    # at a tiny tau every row of M is exactly 0/1 in its dtype: q sums to 0 and the implicit
    # gradient must be 0 (no 0/0 from a clamp below the dtype's smallest normal number)
    rows = (torch.arange(32, dtype=dtype).reshape(8, 4) * 10).requires_grad_(True)
    out = soft_topk(rows, 2, 1e-3)
    assert torch.equal(out.detach(), torch.tensor([[0, 0, 1, 1]] * 8, dtype=dtype))
    (out * torch.randn(8, 4, dtype=dtype)).sum().backward()
    assert torch.equal(rows.grad, torch.zeros_like(rows))


def test_warm_start_gives_the_same_root_in_fewer_passes(monkeypatch):
    import smart.topk as topk

    torch.manual_seed(5)
    scores = torch.randn(100_000)
    cold, threshold = soft_topk(scores, 30_000, 0.05, return_threshold=True)
    passes = []
    original = topk._root_step
    monkeypatch.setattr(topk, "_root_step", lambda *a: passes.append(1) or original(*a))
    moved = scores + 1e-4 * torch.randn(100_000)
    warm = soft_topk(moved, 30_000, 0.05, threshold=threshold)
    warm_passes = len(passes)
    passes.clear()
    fresh = soft_topk(moved, 30_000, 0.05)
    assert warm_passes < len(passes)
    torch.testing.assert_close(warm, fresh, atol=1e-5, rtol=0)
    assert abs(warm.double().sum().item() - 30_000) < 0.5


def test_many_rows_converge_to_their_own_roots():
    # rows converging in different passes (full passes, then gathered ones) each keep the f of
    # their own root: equal to solving that row alone
    torch.manual_seed(6)
    rows = torch.randn(4000, 4) * torch.logspace(-2, 2, 4000)[:, None]
    out, threshold = soft_topk(rows, 2, 0.01, return_threshold=True)
    for i in (0, 1, 1999, 3998, 3999):
        torch.testing.assert_close(out[i], soft_topk(rows[i], 2, 0.01))
    assert (out.double().sum(dim=1) - 2).abs().max() < 1e-4
    warm = soft_topk(rows, 2, 0.01, threshold=threshold)
    torch.testing.assert_close(warm, out)


def test_halley_reaches_the_tolerance_in_one_step_from_a_warm_start(monkeypatch):
    # a training-like drift (scores moved, tau lowered): Newton needs evaluate -> step -> step ->
    # converged (3 passes); Halley's cubic step lands inside the float32 tolerance at once (2)
    import smart.topk as topk

    torch.manual_seed(7)
    scores = torch.randn(1_000_000)
    _, threshold = soft_topk(scores, 100_000, 0.0464, return_threshold=True)
    moved = scores + 0.01 * torch.randn(1_000_000) + 0.005
    passes = []
    original = topk._root_step
    monkeypatch.setattr(topk, "_root_step", lambda *a: passes.append(1) or original(*a))
    out = soft_topk(moved, 100_000, 0.0449, threshold=threshold)
    assert len(passes) == 2
    assert abs(out.double().sum().item() - 100_000) <= 8 * torch.finfo(torch.float32).eps * 100_000


def test_long_rows_start_from_the_root_of_a_strided_sample(monkeypatch):
    # cold start on 1e6 scores at a small tau: the logit of the kept fraction starts far from the
    # root (5 passes over the row); the sample's root starts next to it
    import smart.topk as topk

    torch.manual_seed(8)
    scores = torch.randn(1_000_000)
    full_passes = []
    original = topk._root_step
    monkeypatch.setattr(
        topk, "_root_step", lambda z, *a: full_passes.append(z.shape[1] == scores.numel()) or original(z, *a)
    )
    out, threshold = soft_topk(scores, 100_000, 0.01, return_threshold=True)
    assert 1 <= sum(full_passes) <= 3 and len(full_passes) > sum(full_passes)  # sample passes first
    assert abs(out.double().sum().item() - 100_000) <= 8 * torch.finfo(torch.float32).eps * 100_000
    monkeypatch.setattr(topk, "_root_step", original)
    torch.testing.assert_close(out, soft_topk(scores, 100_000, 0.01, threshold=threshold), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8])
def test_short_row_reductions_are_torchs_bit_for_bit(m, dtype):
    """The column-by-column row sum (N:M rows of <= 4) adds in the order torch's sum(dim=1) does,
    over entries spanning 16 orders of magnitude; the row max/min equal amax/amin, NaN included.
    If a torch release changes its reduction order, this fails and _COLUMNS must go to 0."""
    g = torch.Generator().manual_seed(m)
    scale = torch.logspace(-8, 8, 7, dtype=torch.float64)[torch.randint(0, 7, (50_000, m), generator=g)]
    x = (torch.randn(50_000, m, generator=g, dtype=torch.float64) * scale).to(dtype)
    for rows in (x, torch.sigmoid(x), x * torch.rand(x.shape, generator=g, dtype=dtype)):
        assert torch.equal(topk_module._row_sum(rows), rows.sum(dim=1))
    x[::97, 0] = float("nan")
    assert torch.equal(topk_module._row_extreme(x, torch.maximum).nan_to_num(7), x.amax(dim=1).nan_to_num(7))
    assert torch.equal(topk_module._row_extreme(x, torch.minimum).nan_to_num(7), x.amin(dim=1).nan_to_num(7))
