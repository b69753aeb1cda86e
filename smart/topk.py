"""Exact-k differentiable top-k: f_tau(s)_i = sigmoid(s_i / tau + t), with t solved so sum_i f_i = k.

Forward: for each row, g(t) = sum_i sigmoid(s_i/tau + t) - k is strictly increasing, so the root
is unique for 0 < k < n. We solve it with a safeguarded Halley iteration (Halley steps, else
Newton steps, inside a shrinking bisection bracket), vectorised over rows (one t per row, no Python loop over rows).
The element-wise work runs in the scores' dtype with float64 sums and a float64 t:

* float64 scores: |g| <= tol * max(1, k) (1e-12 by default) -- exact to float64 rounding.
* float32 scores: |g| <= max(tol, 8 * eps_float32) * max(1, k) ~ 1e-6 * k, or until t stops
  moving at float32 resolution. A float64 evaluation would cost ~5x per pass on a CPU; the
  exact hard top-k used after the pruning stage does not depend on it.

Warm start: the solved row thresholds theta = -t * tau live in score space and move little from
one training step to the next, so ``threshold=`` (the previous call's, from
``return_threshold=True``) starts the iteration next to the root -- usually one or two passes instead of
five to ten -- while the result stays the unique root.

Backward (implicit function theorem, q_i = f_i (1 - f_i)):
    dL/ds_j = (q_j / tau) * (u_j - sum_i u_i q_i / sum_i q_i),    u = dL/df
With ``detach_t=True`` t is treated as a constant: dL/ds_j = (q_j / tau) * u_j.

Exact cost (:func:`soft_topk_cost`, a FLOPs budget): sum_i c_i sigmoid(s_i/tau + t) = C with unit
costs c_i > 0 is strictly increasing in t too, so it has the same unique root, solved by the same
safeguarded Halley iteration on g(t) = sum c f - C, g' = sum c q, g'' = sum c q (1 - 2 f). Its
backward: dt/ds_j = -(c_j q_j / tau) / sum_i c_i q_i, hence
    dL/ds_j = (q_j / tau) * (u_j - c_j * sum_i u_i q_i / sum_i c_i q_i).
The costs are divided by their mean first (the root and the mask do not change; the sums stay
near the unit counts).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bench.core.select import Allocation, keep_count, top_indices
from bench.core.sparsity import Pattern
from bench.core.syncs import may_read

_BRACKET_MARGIN = 30.0  # sigmoid(-30) ~ 1e-13: the bracket holds the root for sure
_MAX_ITER = 100


_ONE = {dtype: torch.ones((), dtype=dtype) for dtype in (torch.float32, torch.float64)}  # 0-dim: no broadcast copy
_COLUMNS = 4  # rows of at most this many entries are reduced column by column


def _row_sum(x: Tensor) -> Tensor:
    """``x.sum(dim=1)`` of a 2-D tensor, bit for bit. On a CPU, for rows of 2 to 4 entries (N:M
    with M <= 4), as explicit column additions, left to right -- the order torch's CPU reduction
    uses for rows that short (tests/test_topk.py checks the equality) -- at about a third of its
    time (a reduction over rows of 4 pays a per-row cost: 1.17 -> 0.44 ms on 110,592 rows, one
    thread). Other devices keep their own reduction (and its order)."""
    if not 2 <= x.shape[1] <= _COLUMNS or x.device.type != "cpu":
        return x.sum(dim=1)
    total = x[:, 0] + x[:, 1]
    for j in range(2, x.shape[1]):
        total.add_(x[:, j])
    return total


def _row_extreme(x: Tensor, pick) -> Tensor:
    """Row max (``pick=torch.maximum``) or min (``torch.minimum``) of a 2-D tensor: column by column
    for short rows (exact in any order; NaN propagates as in ``amax``), else ``amax``/``amin``."""
    if not 2 <= x.shape[1] <= _COLUMNS:
        return x.amax(dim=1) if pick is torch.maximum else x.amin(dim=1)
    out = pick(x[:, 0], x[:, 1])
    for j in range(2, x.shape[1]):
        out = pick(out, x[:, j])
    return out


_SAMPLED_START = 1 << 18  # rows longer than this start from the root of a strided sample
_SAMPLE = 4096


def _initial_shift(z: Tensor, k: Tensor, tol: float) -> Tensor:
    """A starting t (float64): for short rows (N:M) the midpoint between the k-th and (k+1)-th
    largest z, which is nearly exact at small tau; for long rows the root of the same equation on
    a strided sample of ~4096 entries with k scaled to it (a few passes over the sample instead
    of one or two more over the row: measured at 1e6 scores, keep 10 %, tau 0.01, 5 -> 3
    passes); for rows in between the logit of the kept fraction."""
    n = z.shape[1]
    if n > _SAMPLED_START:
        sample = z[:, :: n // _SAMPLE]
        return _solve(sample.contiguous(), k * (sample.shape[1] / n), tol, None)[0]
    if n <= 64:
        ordered = z.sort(dim=1, descending=True).values.to(torch.float64)
        kth = k.floor().long().clamp(1, n - 1)[:, None]
        return -0.5 * (ordered.gather(1, kth - 1) + ordered.gather(1, kth)).squeeze(1)
    frac = (k / n).clamp(1e-6, 1 - 1e-6)
    return torch.log(frac) - torch.log1p(-frac) - z.mean(dim=1, dtype=torch.float64)


def _root_step(z: Tensor, t: Tensor, k: Tensor, lo: Tensor, hi: Tensor, buffers: tuple[Tensor, Tensor] | None = None):
    """One safeguarded Halley step on g(t) = sum sigmoid(z + t) - k.

    Returns (f, q, g, t_next, lo, hi) with f = sigmoid(z + t) and q = f (1 - f) at the *current*
    t (the forward output and the backward's weights when the row is done). Sums run in z's
    dtype with torch's cascade summation (a float64 cast of a float32 vector costs more than the
    sigmoid) and are returned as float64. ``buffers``: two tensors shaped like z for f and q,
    reused across passes so that a pass allocates nothing z-sized; the values are those of
    ``sigmoid(z + t)`` and ``f * (1 - f)`` bit for bit.

    Halley's step t - 2 g g' / (2 g'^2 - g g'') with g' = sum q and g'' = sum q (1 - 2 f) =
    g' - 2 sum q f converges cubically: from a warm start in training (SMART, 4.9M unstructured
    scores, a 0.9 % miss of k) one step lands inside the float32 tolerance where Newton's needed
    two, i.e. one pass less per solve for the price of one more reduction (not always: a larger
    miss still takes two steps). A step that leaves the bracket, or a
    non-positive denominator, falls back to Newton's step, then to bisection.
    """
    f_buf, q_buf = (None, None) if buffers is None else buffers
    f = torch.add(z, t[:, None].to(z.dtype), out=f_buf).sigmoid_()
    q = torch.sub(_ONE[z.dtype], f, out=q_buf).mul_(f)  # 1 - f in one pass: the bits of (-f) + 1
    g = _row_sum(f).to(torch.float64) - k
    dg = _row_sum(q).to(torch.float64)
    if z.shape[0] == 1:
        qf = torch.dot(q[0], f[0]).reshape(1)
    else:
        short = z.shape[1] <= _COLUMNS and z.device.type == "cpu"
        qf = _row_sum(q * f) if short else torch.linalg.vecdot(q, f, dim=1)
    d2g = dg - 2 * qf.to(torch.float64)
    t_next, lo, hi = _safeguarded_step(t, g, dg, d2g, lo, hi)
    return f, q, g, t_next, lo, hi


def _safeguarded_step(t: Tensor, g: Tensor, dg: Tensor, d2g: Tensor, lo: Tensor, hi: Tensor):
    """(next t, lo, hi): the bracket shrunk to the sign of g, then Halley's step, else Newton's
    when Halley leaves the bracket or its denominator is not positive, else bisection (float64)."""
    lo = torch.where(g < 0, t, lo)
    hi = torch.where(g > 0, t, hi)
    denominator = 2 * dg * dg - g * d2g
    halley = t - 2 * g * dg / denominator.clamp_min(1e-300)
    newton = t - g / dg.clamp_min(1e-300)
    usable = dg > 1e-12
    step = torch.where((halley > lo) & (halley < hi) & (denominator > 0) & usable, halley, newton)
    inside = (step > lo) & (step < hi) & usable
    return torch.where(inside, step, (lo + hi) / 2), lo, hi


# device-only solves (``may_read`` false): passes from a warm start (the previous step's root) and
# from a cold one (the first step), with the convergence test on the device and no host check.
# Measured on the accelerator path (sync_free, CPU), SMART on resnet10t, channel, global floor 0.1,
# 60 steps, 177 warm solves: with 4 passes 3 ended 3.3e-4 off k (another run: 6, up to 14 %: steps
# where the root moves far), with 6 passes none (largest miss 6.2e-7 of k)
WARM_PASSES, COLD_PASSES = 6, 16


def _fixed_passes(step, t: Tensor, lo: Tensor, hi: Tensor, limit, passes: int, dtype: torch.dtype):
    """``passes`` safeguarded Halley steps ``step(t, lo, hi) -> (g, t_next, lo, hi)`` with the
    convergence test on the device: a row done (|g| <= limit, or, below float64, its next t the
    same at ``dtype``'s resolution) keeps its t from then on. Returns (t, lo, hi)."""
    done = torch.zeros_like(t, dtype=torch.bool)
    for _ in range(passes):
        g, t_next, lo, hi = step(t, lo, hi)
        now = g.abs() <= limit
        if dtype != torch.float64:
            now |= t_next.to(dtype) == t.to(dtype)
        done |= now
        t = torch.where(done, t, t_next)
    return t, lo, hi


def _solve_fixed(z: Tensor, k: Tensor, tol: float, t0: Tensor, passes: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_solve` without a host read, on an accelerator: ``passes`` full passes from ``t0``,
    the convergence test on the device (a done row's t stops moving, so every later
    pass recomputes its f and q bit for bit: a row done within the passes gets exactly what the
    host-checked solve gives it), f and q from the last pass. A row not done by then keeps its
    last t (its mass misses k by what that t leaves). Halley from the previous step's root takes
    one or two passes in training (module docstring); tests/test_syncs.py checks both solves agree."""
    lo = -_row_extreme(z, torch.maximum).to(torch.float64) - _BRACKET_MARGIN
    hi = -_row_extreme(z, torch.minimum).to(torch.float64) + _BRACKET_MARGIN
    t = t0.to(torch.float64).clamp(lo, hi)
    limit = max(tol, 8 * torch.finfo(z.dtype).eps) * k.clamp_min(1)
    buffers = None  # f and q of the previous pass, reused by the next

    def step(t, lo, hi):
        nonlocal buffers
        f, q, g, t_next, lo, hi = _root_step(z, t, k, lo, hi, buffers)
        buffers = (f, q)
        return g, t_next, lo, hi

    t, lo, hi = _fixed_passes(step, t, lo, hi, limit, passes, z.dtype)
    # the last pass's f, q are at the t before its update: for the rows still moving, evaluate once more
    f, q, *_ = _root_step(z, t, k, lo, hi, buffers)
    return t, f, q


def _solve(z: Tensor, k: Tensor, tol: float, t0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Solve sum_j sigmoid(z_ij + t_i) = k_i for t (rows of z); returns (t float64, f, q) at the root.

    Safeguarded Halley (_root_step) inside the always-valid bracket [-max z - 30, -min z + 30]. A row is done
    when |g| <= max(tol, 8 eps) * max(1, k) (eps of z's dtype), or (float32 z) when the next t
    rounds to the same float32 value as the current one; its f and q from that last evaluation
    are kept, so a warm-started row costs one pass. While at least a quarter of the rows is
    active a pass covers every row; then only the active rows are gathered.
    """
    if not may_read(z):
        start = _initial_shift(z, k, tol) if t0 is None else t0
        return _solve_fixed(z, k, tol, start, COLD_PASSES if t0 is None else WARM_PASSES)
    rows = z.shape[0]
    lo = -_row_extreme(z, torch.maximum).to(torch.float64) - _BRACKET_MARGIN
    hi = -_row_extreme(z, torch.minimum).to(torch.float64) + _BRACKET_MARGIN
    t = (_initial_shift(z, k, tol) if t0 is None else t0.to(torch.float64)).clamp(lo, hi)
    limit = max(tol, 8 * torch.finfo(z.dtype).eps) * k.clamp_min(1)
    coarse = z.dtype != torch.float64
    done = torch.zeros(rows, dtype=torch.bool, device=z.device)
    # f and q of the latest full pass: exact for every done row (a done row's t no longer moves,
    # so each pass recomputes its f bit for bit), overwritten for the others; the buffers of one
    # pass are reused by the next, so full passes allocate nothing z-sized after the first
    f_out = q_out = None
    for _ in range(_MAX_ITER):
        if f_out is None or 4 * int((~done).sum()) >= rows:  # a full pass (a gather of the active rows would cost more)
            buffers = None if f_out is None else (f_out, q_out)
            f_out, q_out, g, t_next, lo, hi = _root_step(z, t, k, lo, hi, buffers)
            now = g.abs() <= limit
            if coarse:
                now |= t_next.to(z.dtype) == t.to(z.dtype)
            t = torch.where(now | done, t, t_next)
            done |= now
        else:  # few rows left: only they are evaluated
            active = (~done).nonzero().squeeze(1)
            t_a = t[active]
            f, q, g, t_next, lo[active], hi[active] = _root_step(z[active], t_a, k[active], lo[active], hi[active])
            now = g.abs() <= limit[active]
            if coarse:
                now |= t_next.to(z.dtype) == t_a.to(z.dtype)
            rows_now = active[now]
            f_out[rows_now], q_out[rows_now] = f[now], q[now]
            t[active] = torch.where(now, t_a, t_next)
            done[rows_now] = True
        if bool(done.all()):
            return t, f_out, q_out
    left = (~done).nonzero().squeeze(1)  # max_iter reached: evaluate at the last t
    f = torch.sigmoid(z[left] + t[left, None].to(z.dtype))
    f_out[left], q_out[left] = f, f * (1 - f)
    return t, f_out, q_out


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, k: Tensor, tau: float, detach_t: bool, tol: float, t0: Tensor | None):
        t, f, q = _solve(scores.detach() / tau, k, tol, t0)
        ctx.save_for_backward(q)
        ctx.tau, ctx.detach_t = tau, detach_t
        ctx.mark_non_differentiable(t)
        return f, t

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_t):
        (q,) = ctx.saved_tensors
        u = grad_out.to(q.dtype)
        if ctx.detach_t:
            return q * u / ctx.tau, None, None, None, None, None
        # a row whose mask is binary (q = 0 in its dtype) gets a zero gradient, not 0/0
        mean_u = _row_sum(u * q)[:, None] / _row_sum(q)[:, None].clamp_min(torch.finfo(q.dtype).tiny)
        grad = (u - mean_u).mul_(q).mul_(1.0 / ctx.tau)
        return grad, None, None, None, None, None


def soft_topk(
    scores: Tensor,
    k,
    tau: float,
    detach_t: bool = False,
    tol: float = 1e-12,
    threshold: Tensor | None = None,
    return_threshold: bool = False,
):
    """Exact-k soft mask sigmoid(scores/tau + t).

    ``scores``: 1-D (n,) with an int ``k``, or 2-D (rows, n) with an int or a (rows,) tensor
    ``k`` (one budget per row, e.g. N:M with rows of M). Each row of the result sums to its k
    (see the module docstring for the tolerance per dtype); as tau -> 0 it tends to the hard
    top-k indicator. ``threshold``: per-row warm start in score space (a previous call's);
    ``return_threshold=True`` returns ``(mask, threshold)`` with the solved thresholds (float64).
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if scores.dtype not in (torch.float32, torch.float64):
        scores_in = scores.float()
    else:
        scores_in = scores
    squeeze = scores.dim() == 1
    rows = scores_in.reshape(1, -1) if squeeze else scores_in
    if rows.dim() != 2:
        raise ValueError(f"scores must be 1-D or 2-D, got shape {tuple(scores.shape)}")
    n = rows.shape[1]
    if isinstance(k, Tensor):
        k_rows = k.to(device=scores.device, dtype=torch.float64).reshape(-1).expand(rows.shape[0])
        if may_read(k_rows) and bool(((k_rows <= 0) | (k_rows >= n)).any()):  # off the CPU: the caller's budget
            raise ValueError(f"k must lie strictly between 0 and the row length {n}, got {k}")
    else:
        if not 0 < k < n:
            raise ValueError(f"k must lie strictly between 0 and the row length {n}, got {k}")
        # a fill on the device, not a copy from the host (a blocking one on a GPU)
        k_rows = torch.full((rows.shape[0],), float(k), dtype=torch.float64, device=scores.device)
    t0 = None
    if threshold is not None:
        threshold = threshold.reshape(-1)
        if threshold.shape[0] != rows.shape[0]:
            raise ValueError(f"threshold has {threshold.shape[0]} rows, scores have {rows.shape[0]}")
        t0 = -threshold.to(torch.float64) / tau
    out, t = _SoftTopK.apply(rows, k_rows.contiguous(), float(tau), bool(detach_t), float(tol), t0)
    out = out.reshape(scores.shape).to(scores.dtype)
    return (out, -t * tau) if return_threshold else out


def _cost_step(z: Tensor, c: Tensor, budget, t: Tensor, lo: Tensor, hi: Tensor):
    """One safeguarded Halley step on g(t) = sum c sigmoid(z + t) - budget: (f, q, g, t_next, lo, hi)."""
    f = torch.sigmoid(z + t.to(z.dtype))
    q = f * (1 - f)
    cf, cq = c * f.to(torch.float64), c * q.to(torch.float64)
    g, dg = cf.sum() - budget, cq.sum()
    d2g = dg - 2 * (cq * f.to(torch.float64)).sum()
    t_next, lo, hi = _safeguarded_step(t, g, dg, d2g, lo, hi)
    return f, q, g, t_next, lo, hi


def _solve_cost(z: Tensor, c: Tensor, budget: float, tol: float, t0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Solve sum_i c_i sigmoid(z_i + t) = budget for t (1-D z, costs c in float64): safeguarded Halley
    in the bracket [-max z - 30, -min z + 30]; done when |g| <= max(tol, 8 eps) * max(1, budget)."""
    lo = -z.max().to(torch.float64) - _BRACKET_MARGIN
    hi = -z.min().to(torch.float64) + _BRACKET_MARGIN
    if not may_read(z):  # device only: a fixed number of passes, as _solve_fixed
        passes = WARM_PASSES if t0 is not None else COLD_PASSES
        if t0 is None:
            frac = (budget / c.sum()).clamp(1e-6, 1 - 1e-6)
            t0 = torch.log(frac) - torch.log1p(-frac) - z.mean(dtype=torch.float64)
        t = t0.to(torch.float64).reshape(()).clamp(lo, hi)
        limit = max(tol, 8 * torch.finfo(z.dtype).eps) * torch.as_tensor(budget, dtype=torch.float64).clamp_min(1.0)
        step = lambda t, lo, hi: _cost_step(z, c, budget, t, lo, hi)[2:]  # noqa: E731 (g, t_next, lo, hi)
        t, _, _ = _fixed_passes(step, t, lo, hi, limit, passes, z.dtype)
        f = torch.sigmoid(z + t.to(z.dtype))
        return t, f, f * (1 - f)
    if t0 is None:
        frac = min(max(float(budget) / float(c.sum()), 1e-6), 1 - 1e-6)
        t0 = torch.tensor(math.log(frac) - math.log1p(-frac), dtype=torch.float64, device=z.device) - z.mean(
            dtype=torch.float64
        )
    t = t0.to(torch.float64).reshape(()).clamp(lo, hi)
    budget = float(budget)
    limit = max(tol, 8 * torch.finfo(z.dtype).eps) * max(1.0, budget)
    for _ in range(_MAX_ITER):
        f, q, g, t_next, lo, hi = _cost_step(z, c, budget, t, lo, hi)
        if bool(g.abs() <= limit) or (z.dtype != torch.float64 and bool(t_next.to(z.dtype) == t.to(z.dtype))):
            return t, f, q
        t = t_next
    f = torch.sigmoid(z + t.to(z.dtype))
    return t, f, f * (1 - f)


class _SoftTopKCost(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, costs: Tensor, budget: float, tau: float, detach_t: bool, tol: float, t0):
        t, f, q = _solve_cost(scores.detach() / tau, costs, budget, tol, t0)
        ctx.save_for_backward(q, costs)
        ctx.tau, ctx.detach_t = tau, detach_t
        ctx.mark_non_differentiable(t)
        return f, t

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_t):
        q, costs = ctx.saved_tensors
        u = grad_out.to(q.dtype)
        if ctx.detach_t:
            return q * u / ctx.tau, None, None, None, None, None, None
        cq = (costs * q.to(torch.float64)).sum()
        mean_u = ((u * q).sum(dtype=torch.float64) / cq.clamp_min(torch.finfo(torch.float64).tiny)).to(q.dtype)
        grad = (u - costs.to(q.dtype) * mean_u).mul_(q).mul_(1.0 / ctx.tau)
        return grad, None, None, None, None, None, None


def soft_topk_cost(
    scores: Tensor,
    costs: Tensor,
    budget: float,
    tau: float,
    detach_t: bool = False,
    tol: float = 1e-12,
    threshold: Tensor | None = None,
    return_threshold: bool = False,
):
    """Exact-cost soft mask sigmoid(scores/tau + t) of 1-D ``scores`` with sum(costs * mask) =
    ``budget`` (module docstring); ``threshold``/``return_threshold`` as in :func:`soft_topk`."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if scores.dim() != 1 or costs.shape != scores.shape:
        raise ValueError(f"scores and costs must be 1-D of one shape, got {tuple(scores.shape)}, {tuple(costs.shape)}")
    scale = costs.to(torch.float64).mean()
    c = (costs.to(torch.float64) / scale).detach()
    budget = budget / scale
    if may_read(scale):  # off the CPU: a device budget (the floors' held units), checked by the caller
        budget = float(budget)
        if not 0 < budget < float(c.sum()):
            raise ValueError(f"the budget must lie strictly between 0 and the total cost, got {budget * float(scale)}")
    rows = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
    t0 = None if threshold is None else -threshold.to(torch.float64).reshape(()) / tau
    out, t = _SoftTopKCost.apply(rows, c, budget, float(tau), bool(detach_t), float(tol), t0)
    out = out.to(scores.dtype)
    return (out, (-t * tau).reshape(1)) if return_threshold else out


def _under_floor(soft: Tensor, sizes: list[int], minimum: Tensor) -> Tensor:
    """Bool per layer: its soft mass (the sum of its part of ``soft``, layers one after the other
    with ``sizes`` entries) is below its floor ``minimum``, as float64 sums decide it.

    The sums run in ``soft``'s dtype first (a float64 cast of every entry costs ~14x a float32
    sum); only a layer whose float32 sum lies within 1e-3 of its floor (relative) is summed again
    in float64. torch's cascade summation keeps the float32 error orders of magnitude below that
    margin, so every layer gets the float64 verdict."""
    detached = soft.detach()
    parts = detached.split(sizes)
    sums = torch.stack([part.sum() for part in parts]).to(torch.float64)
    close = (sums - minimum).abs() <= 1e-3 * minimum.clamp_min(1.0)
    for layer in close.nonzero().flatten().tolist():
        sums[layer] = parts[layer].sum(dtype=torch.float64)
    return sums < minimum


HELD_ROUNDS = 2  # device-only floors: held solves per step (the host loop runs until no layer is newly bound)
_LAYOUTS: dict = {}  # (device, sizes, minimum) -> the floors' device tensors, built once (no copy per step)


def _layout(device, sizes: list[int], minimum: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(floors float64 (L,), the layer of every unit (N,), the layer of every floor slot (sum minimum,))
    on ``device``, made once per layout: a tensor built from a list is a blocking host copy on a GPU."""
    key = (str(device), tuple(sizes), tuple(minimum))
    if key not in _LAYOUTS:
        layers = torch.arange(len(sizes))
        _LAYOUTS[key] = (
            torch.tensor(minimum, dtype=torch.float64).to(device),
            layers.repeat_interleave(torch.tensor(sizes), output_size=sum(sizes)).to(device),
            layers.repeat_interleave(torch.tensor(minimum), output_size=sum(minimum)).to(device),
        )
    return _LAYOUTS[key]


def _floored_fixed(
    flat: Tensor, sizes: list[int], k: float, minimum: list[int], tau: float, solve, costs: Tensor | None = None
) -> Tensor:
    """:func:`_floored` without a host read (``may_read`` false: an accelerator): the same floors by
    device-side decisions, in a fixed number of solves. The plain solve; every layer's ``minimum``
    best units (``topk``, fixed shapes; ties at the cut hold exactly ``minimum``, where the host path
    holds every tied unit); then ``HELD_ROUNDS`` held solves, each holding the floor units of the
    layers bound so far (the plain solve's, then those the previous held solve left under their
    floor), their budget k - (held units or their cost) a device tensor. The result is the last held
    solve where some layer is bound, else the plain one (``torch.where``: decided on the device).
    A layer newly bound by the last held solve keeps a soft mass a little under its floor for that
    step (the host loop would solve once more); the hard masks are exact either way."""
    floors, unit_layer, slot_layer = _layout(flat.device, sizes, minimum)
    detached = flat.detach()

    def under(soft: Tensor) -> Tensor:  # per layer: soft mass (float64) below its floor
        mass = torch.zeros(len(sizes), dtype=torch.float64, device=flat.device)
        return mass.index_add_(0, unit_layer, soft.detach().to(torch.float64)) < floors

    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    slots = torch.cat(
        [torch.topk(detached[offsets[i] : offsets[i + 1]], m).indices + offsets[i] for i, m in enumerate(minimum)]
    )
    below = detached.amin() - 64.0 * tau
    soft = solve(flat, k, False)
    bound = under(soft)
    out = soft
    for round_ in range(HELD_ROUNDS):
        held = bound[slot_layer]  # per floor slot: its layer is bound
        spent = held.sum(dtype=torch.float64) if costs is None else (costs[slots] * held).sum()
        pushed = detached.index_put((slots,), torch.where(held, below, detached[slots]))
        pushed = flat + (pushed - detached)  # the held units pushed down; the others keep flat's graph
        soft_held = solve(pushed, k - spent, round_ + 1)
        soft_held = soft_held.index_put(
            (slots,), torch.where(held, torch.ones_like(soft_held[slots]), soft_held[slots])
        )
        out = torch.where(bound.any(), soft_held, soft)
        bound = bound | under(soft_held)
    return out


def _floored(
    flat: Tensor, sizes: list[int], k: float, minimum: list[int], tau: float, solve, costs: Tensor | None = None
) -> Tensor:
    """Global exact-k soft top-k of ``flat`` (layers of ``sizes`` one after the other) in which every
    layer keeps a soft mass of at least ``minimum[l]`` units; ``solve(scores, k, held)`` is the soft
    top-k at ``tau`` (``held``: the solve with units held, warm-started from its own last threshold,
    not the plain solve's: sharing one made each start from the other's root).

    The plain solve comes first. A layer it leaves under its floor has its ``minimum[l]`` best
    units held at exactly 1 (constants: no gradient reaches their scores) and the remaining budget
    k - held is solved again, exact-k, over every unit not held (the held ones are pushed 64 tau
    below the lowest score, where their sigmoid is < 1e-27, and then set to 1: no gather of the
    free units, which cost more than the solve at 4.9M scores); that can push another layer under
    its floor, which is then held too (at most one more solve per layer). With ``costs`` (one per
    entry of ``flat``) ``k`` is a cost budget and the held units' costs come off it. Where no floor binds,
    the result is the plain solve bit for bit. As tau -> 0 its support is ``global_topk``'s with
    the same minimums: each bound layer's best ``minimum`` units, then the global ranking.
    ``flat`` (a fresh concatenation, owned by the call) is overwritten at the held units."""
    if not may_read(flat):
        return _floored_fixed(flat, sizes, k, minimum, tau, solve, costs)
    floors = torch.tensor(minimum, dtype=torch.float64, device=flat.device)
    soft = solve(flat, k, False)
    bound = _under_floor(soft, sizes, floors)
    if not bool(bound.any()):
        return soft
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    held: list[Tensor] = []  # indices into flat of the held units, one tensor per bound layer
    newly, below = bound, float(flat.detach().amin()) - 64.0 * tau
    while True:
        for layer in newly.nonzero().flatten().tolist():
            # the layer's minimum best units: a linear-time selection, not a sort (ties at the
            # cut hold a few more, and the budget below shrinks by as many: the total stays k)
            held.append(top_indices(flat[offsets[layer] : offsets[layer + 1]], minimum[layer]) + offsets[layer])
        index = torch.cat(held)
        if costs is None:
            budget, free = k - index.numel(), flat.numel() - index.numel()
        else:
            spent = float(costs[index].sum())
            budget, free = k - spent, float(costs.sum()) - spent
        if budget <= 0:
            soft = torch.zeros_like(flat).index_fill_(0, index, 1.0)
        elif budget >= free:
            soft = torch.ones_like(flat)
        else:
            # index_fill, not masked_fill with a bool mask: the same values, several times faster;
            # in place (flat: a fresh cat, not saved by the plain solve; the solve's output: not
            # saved by its backward), so the forward copies neither
            soft = solve(flat.index_fill_(0, index, below), budget, True).index_fill_(0, index, 1.0)
        newly = _under_floor(soft, sizes, floors) & ~bound
        if not bool(newly.any()):
            return soft
        bound |= newly


def _held_key(held) -> str:
    """The warm-start key of a solve: the plain one, the held one (the host loop's; the device
    path's first round), the device path's later rounds (each its own start, near its own root)."""
    return "global" if not held else "global+held" if held == 1 else f"global+held{int(held)}"


def soft_select(
    scores: dict[str, Tensor],
    pattern: Pattern,
    sparsity: float,
    scope: str,
    tau: float,
    detach_t: bool = False,
    thresholds: dict[str, Tensor] | None = None,
    allocation: Allocation | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Exact-k soft masks of per-layer unit scores, dispatched as ``bench.core.select.hard_topk`` does
    the hard ones: N:M keeps N per row of M (the rows of all layers in one call), scope "global"
    one k = round((1 - sparsity) * G) over all layers, scope "layer" one k per layer.

    ``allocation`` (the protocol's, as ``hard_topk`` takes it) replaces ``scope`` and adds its
    per-layer floor to the soft masks too: ``uniform`` gives each layer its ``layer_keep``;
    ``global`` keeps ``global_keep`` over all layers with every layer's soft mass at least its
    ``minimum`` (``_floored``). Without one (v1 runs) no floor applies during training.

    ``thresholds``: warm starts by call ("rows", "global" or the layer name), replaced in place by
    the solved ones. Returns the masks by layer and every soft value in one tensor (as solved).
    """
    thresholds = {} if thresholds is None else thresholds
    names, values = list(scores), list(scores.values())
    scope = scope if allocation is None else allocation.scope

    def solve(key: str, rows: Tensor, k) -> Tensor:
        if not isinstance(k, Tensor) and rows.dim() == 1 and k >= rows.numel():  # a layer kept whole
            return rows.new_ones(rows.shape).detach()
        soft, thresholds[key] = soft_topk(rows, k, tau, detach_t, threshold=thresholds.get(key), return_threshold=True)
        return soft

    if pattern.per_row_budget:
        soft = solve("rows", torch.cat(values, dim=0), pattern.n)
        parts = soft.split([v.shape[0] for v in values], dim=0)
    elif scope == "global":
        flat = torch.cat([v.reshape(-1) for v in values])
        sizes = [v.numel() for v in values]
        if allocation is None:
            soft = solve("global", flat, keep_count(flat.numel(), sparsity))
        elif allocation.by_cost:  # a FLOPs budget: exact cost, every unit weighted by its layer's cost
            counts = dict(zip(names, sizes))
            costs = torch.cat(
                [
                    torch.full((n,), c, dtype=torch.float64, device=flat.device)
                    for n, c in zip(sizes, allocation.layer_costs(names))
                ]
            )
            minimum = [allocation.minimum(c) for c in sizes]

            def solve_cost(rows: Tensor, budget: float, held: bool) -> Tensor:
                key = _held_key(held)
                soft, thresholds[key] = soft_topk_cost(
                    rows, costs, budget, tau, detach_t, threshold=thresholds.get(key), return_threshold=True
                )
                return soft

            soft = _floored(flat, sizes, allocation.cost_target(counts, sparsity), minimum, tau, solve_cost, costs)
        else:
            counts = dict(zip(names, sizes))
            minimum = [allocation.minimum(c) for c in sizes]
            k = allocation.global_keep(counts, sparsity)
            soft = _floored(flat, sizes, k, minimum, tau, lambda rows, k, held: solve(_held_key(held), rows, k))
        parts = soft.split(sizes)
    else:
        parts = [
            solve(
                name,
                v.reshape(-1),
                keep_count(v.numel(), sparsity) if allocation is None else allocation.layer_keep(v.numel(), sparsity),
            )
            for name, v in zip(names, values)
        ]
        soft = torch.cat(parts)
    return {name: part.reshape(v.shape) for name, part, v in zip(names, parts, values)}, soft
