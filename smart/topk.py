"""Exact-k differentiable top-k: f_tau(s)_i = sigmoid(s_i / tau + t), with t solved so sum_i f_i = k.

Forward: for each row, g(t) = sum_i sigmoid(s_i/tau + t) - k is strictly increasing, so the root
is unique for 0 < k < n. We solve it with a safeguarded Newton iteration (Newton steps inside a
shrinking bisection bracket; float32 for the bulk of the iterations, then float64 Newton polish
on the rows not yet converged), vectorised over rows (one t per row, no Python loop over rows).

Backward (implicit function theorem, q_i = f_i (1 - f_i)):
    dL/ds_j = (q_j / tau) * (u_j - sum_i u_i q_i / sum_i q_i),    u = dL/df
With ``detach_t=True`` t is treated as a constant: dL/ds_j = (q_j / tau) * u_j.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BRACKET_MARGIN = 30.0  # sigmoid(-30) ~ 1e-13: the bracket holds the root for sure


def _initial_shift(z: Tensor, k: Tensor) -> Tensor:
    """A starting t: for short rows (N:M) the midpoint between the k-th and (k+1)-th largest z,
    which is nearly exact at small tau; for long rows the logit of the kept fraction."""
    n = z.shape[1]
    if n <= 64:
        ordered = z.sort(dim=1, descending=True).values
        kth = k.floor().long().clamp(1, n - 1)[:, None]
        return -0.5 * (ordered.gather(1, kth - 1) + ordered.gather(1, kth)).squeeze(1)
    frac = (k / n).clamp(1e-6, 1 - 1e-6)
    return torch.log(frac) - torch.log1p(-frac) - z.mean(dim=1)


def _newton_step(z: Tensor, t: Tensor, k: Tensor, lo: Tensor, hi: Tensor):
    """One safeguarded Newton step on g(t) = sum sigmoid(z + t) - k; returns (g, t, lo, hi)."""
    f = torch.sigmoid(z + t[:, None].to(z.dtype))
    g = f.sum(dim=1, dtype=torch.float64) - k
    dg = (f * (1 - f)).sum(dim=1, dtype=torch.float64)
    lo = torch.where(g < 0, t, lo)
    hi = torch.where(g > 0, t, hi)
    newton = t - g / dg.clamp_min(1e-300)
    inside = (newton > lo) & (newton < hi) & (dg > 1e-12)
    return g, torch.where(inside, newton, (lo + hi) / 2), lo, hi


def _iterate(z: Tensor, t: Tensor, k: Tensor, lo: Tensor, hi: Tensor, tol: Tensor, max_iter: int) -> Tensor:
    """Safeguarded Newton on the rows whose |g| > tol, until none is left (or max_iter)."""
    active = torch.arange(z.shape[0], device=z.device)
    for _ in range(max_iter):
        sub = active if active.numel() < z.shape[0] else slice(None)
        g, t_next, lo_a, hi_a = _newton_step(z[sub], t[sub], k[sub], lo[sub], hi[sub])
        done = g.abs() <= tol[sub]
        t[sub], lo[sub], hi[sub] = torch.where(done, t[sub], t_next), lo_a, hi_a
        active = active[~done]
        if active.numel() == 0:
            break
    return t


def _solve_shift(z: Tensor, k: Tensor, tol: float) -> Tensor:
    """Solve sum_j sigmoid(z_ij + t_i) = k_i for t (rows of z), returns float64 (rows,).

    Float32 iterations (float64 sums) to |g| < 1e-3 narrow t cheaply; float64 polish then runs
    to ``tol * max(1, k)`` from the always-valid bracket [-max z - 30, -min z + 30] (the float32
    bracket may exclude the root by rounding). Both stages iterate only on unconverged rows.
    """
    safe_lo, safe_hi = -z.amax(dim=1) - _BRACKET_MARGIN, -z.amin(dim=1) + _BRACKET_MARGIN
    t = _initial_shift(z, k).clamp(safe_lo, safe_hi)
    scale = k.clamp_min(1)
    t = _iterate(z.to(torch.float32), t, k, safe_lo.clone(), safe_hi.clone(), 1e-3 * scale, 30)
    return _iterate(z, t, k, safe_lo.clone(), safe_hi.clone(), tol * scale, 100)


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
