"""Exact-k differentiable top-k: f_tau(s)_i = sigmoid(s_i / tau + t), with t solved so sum_i f_i = k.

Forward: for each row, g(t) = sum_i sigmoid(s_i/tau + t) - k is strictly increasing, so the root
is unique for 0 < k < n. We solve it with a safeguarded Newton iteration (Newton steps inside a
shrinking bisection bracket; float32 for the bulk of the iterations, then float64 Newton polish),
vectorised over rows (one t per row, no Python loop over rows).

Backward (implicit function theorem, q_i = f_i (1 - f_i)):
    dL/ds_j = (q_j / tau) * (u_j - sum_i u_i q_i / sum_i q_i),    u = dL/df
With ``detach_t=True`` t is treated as a constant: dL/ds_j = (q_j / tau) * u_j.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BRACKET_MARGIN = 30.0  # sigmoid(-30) ~ 1e-13: the bracket holds the root for sure


def _solve_shift(z: Tensor, k: Tensor, tol: float, float32_iters: int = 30) -> Tensor:
    """Solve sum_j sigmoid(z_ij + t_i) = k_i for t (rows of z), returns float64 (rows,)."""
    z32 = z.to(torch.float32)
    lo = (-z32.amax(dim=1) - _BRACKET_MARGIN).to(torch.float64)
    hi = (-z32.amin(dim=1) + _BRACKET_MARGIN).to(torch.float64)
    n = z.shape[1]
    # Start where the k-th largest would sit at sigmoid = k/n-ish: logit of the kept fraction.
    frac = (k / n).clamp(1e-6, 1 - 1e-6)
    t = (torch.log(frac) - torch.log1p(-frac) - z32.mean(dim=1).to(torch.float64)).clamp(lo, hi)
    k32 = k.to(torch.float32)
    for _ in range(float32_iters):  # cheap iterations in float32 narrow the bracket
        f = torch.sigmoid(z32 + t.to(torch.float32)[:, None])
        g = f.sum(dim=1) - k32
        dg = (f * (1 - f)).sum(dim=1)
        lo = torch.where(g < 0, t, lo)
        hi = torch.where(g > 0, t, hi)
        newton = t - g.to(torch.float64) / dg.to(torch.float64).clamp_min(1e-30)
        inside = (newton > lo) & (newton < hi) & (dg > 1e-6)
        t = torch.where(inside, newton, (lo + hi) / 2)
        if bool((g.abs() < 1e-3 * k32.clamp_min(1)).all()):
            break
    # float64 polish; the float32 bracket may exclude the root by rounding, so restart from the safe one
    lo = (-z.amax(dim=1) - _BRACKET_MARGIN)
    hi = (-z.amin(dim=1) + _BRACKET_MARGIN)
    for _ in range(60):
        f = torch.sigmoid(z + t[:, None])
        g = f.sum(dim=1) - k
        if bool((g.abs() <= tol * k.clamp_min(1)).all()):
            break
        dg = (f * (1 - f)).sum(dim=1)
        lo = torch.where(g < 0, t, lo)
        hi = torch.where(g > 0, t, hi)
        newton = t - g / dg.clamp_min(1e-300)
        inside = (newton > lo) & (newton < hi)
        t = torch.where(inside, newton, (lo + hi) / 2)
    return t


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, k: Tensor, tau: float, detach_t: bool, tol: float):
        z = scores.detach().to(torch.float64) / tau
        t = _solve_shift(z, k, tol)
        f = torch.sigmoid(z + t[:, None])
        ctx.save_for_backward(f)
        ctx.tau, ctx.detach_t = tau, detach_t
        return f.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (f,) = ctx.saved_tensors
        q = f * (1 - f)
        u = grad_out.to(torch.float64)
        if ctx.detach_t:
            grad = q * u / ctx.tau
        else:
            mean_u = (u * q).sum(dim=1, keepdim=True) / q.sum(dim=1, keepdim=True).clamp_min(1e-300)
            grad = q * (u - mean_u) / ctx.tau
        return grad.to(grad_out.dtype), None, None, None, None


def soft_topk(scores: Tensor, k, tau: float, detach_t: bool = False, tol: float = 1e-12) -> Tensor:
    """Exact-k soft mask sigmoid(scores/tau + t).

    ``scores``: 1-D (n,) with an int ``k``, or 2-D (rows, n) with an int or a (rows,) tensor
    ``k`` (one budget per row, e.g. N:M with rows of M). Each row of the result sums to its k
    (to ``tol * max(1, k)``); as tau -> 0 it tends to the hard top-k indicator.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    squeeze = scores.dim() == 1
    rows = scores.reshape(1, -1) if squeeze else scores
    if rows.dim() != 2:
        raise ValueError(f"scores must be 1-D or 2-D, got shape {tuple(scores.shape)}")
    k_rows = torch.as_tensor(k, dtype=torch.float64, device=scores.device).reshape(-1).expand(rows.shape[0])
    n = rows.shape[1]
    if bool(((k_rows <= 0) | (k_rows >= n)).any()):
        raise ValueError(f"k must lie strictly between 0 and the row length {n}, got {k}")
    out = _SoftTopK.apply(rows, k_rows.contiguous(), float(tau), bool(detach_t), float(tol))
    return out.reshape(scores.shape)
