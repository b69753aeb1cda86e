"""Exact hard selection of units: the one place where "keep k" is decided.

Every pruner ends by calling :func:`hard_topk` on its final per-layer unit scores, so the
invariant "achieved sparsity == target at unit granularity" holds by construction:

* block / channel / unstructured, ``scope="global"``: k = round((1 - r) * G) units kept over
  all layers together, at least one unit per layer (a layer with nothing left would cut the
  network); ties are broken by layer order then position (stable sort), so it is deterministic.
* ``scope="layer"``: k_l = round((1 - r) * G_l) per layer (at least 1).
* N:M: exactly N per row of M, whatever the scope (``target=``: proportionally more per row at a
  sparsity below the target, M at 0 -- a ramp).

Pruners reach these through ``Pruner.select`` and ``Pruner.keep_above``, so the N:M dispatch
lives here and nowhere else.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.sparsity import Pattern


def keep_count(total_units: int, sparsity: float) -> int:
    return max(1, min(total_units, int(round((1.0 - sparsity) * total_units))))


def nm_topk(scores: Tensor, n: int) -> Tensor:
    """(rows, M) scores -> bool mask with exactly n True per row (stable ties)."""
    order = torch.argsort(scores.detach().to(torch.float64), dim=-1, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(-1, order[..., :n], True)
    return mask


def global_topk(scores: dict[str, Tensor], keep: int) -> dict[str, Tensor]:
    """Keep the ``keep`` highest scores across all layers, at least one per layer."""
    names = list(scores)
    flat = [scores[name].detach().reshape(-1).to(torch.float64).cpu() for name in names]
    if keep < len(names):
        raise ValueError(f"cannot keep {keep} units over {len(names)} layers (need >= 1 per layer)")
    offsets = torch.tensor([0] + [f.numel() for f in flat]).cumsum(0)
    everything = torch.cat(flat)
    chosen = torch.zeros(everything.numel(), dtype=torch.bool)
    for i, f in enumerate(flat):  # guarantee one unit per layer
        chosen[offsets[i] + int(torch.argmax(f))] = True
    rest = everything.masked_fill(chosen, float("-inf"))
    order = torch.argsort(rest, descending=True, stable=True)
    chosen[order[: keep - len(names)]] = True
    return {
        name: chosen[offsets[i] : offsets[i + 1]].reshape(scores[name].shape).to(scores[name].device)
        for i, name in enumerate(names)
    }


def nm_keep(pattern: Pattern, sparsity: float, target: float) -> int:
    """Weights kept per row of M at ``sparsity`` on a ramp to ``target``: M at 0, N at the target."""
    if sparsity >= target:
        return pattern.n
    m, n = pattern.m, pattern.n
    return max(n, round(m - (m - n) * sparsity / target))


def hard_topk(
    scores: dict[str, Tensor], pattern: Pattern, sparsity: float, scope: str = "global", target: float | None = None
) -> dict[str, Tensor]:
    """Exact boolean unit masks for the target sparsity (see module docstring).

    ``target``: the run's final sparsity when ``sparsity`` is a level on the way there; only N:M
    reads it (``nm_keep``), everything else keeps round((1 - sparsity) * G)."""
    if pattern.per_row_budget:
        keep = pattern.n if target is None else nm_keep(pattern, sparsity, target)
        return {name: nm_topk(s, keep) for name, s in scores.items()}
    if scope == "global":
        total = sum(s.numel() for s in scores.values())
        return global_topk(scores, keep_count(total, sparsity))
    if scope == "layer":
        return {name: global_topk({name: s}, keep_count(s.numel(), sparsity))[name] for name, s in scores.items()}
    raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")


def keep_above(scores: dict[str, Tensor], pattern: Pattern, threshold: float) -> dict[str, Tensor]:
    """Bool unit masks ``score > threshold``: every unit decides alone (learned gates), no budget.

    N:M: the top N of every row of M instead (a threshold cannot keep exactly N per row)."""
    if pattern.per_row_budget:
        return {name: nm_topk(s, pattern.n) for name, s in scores.items()}
    return {name: s.detach() > threshold for name, s in scores.items()}


def expected_kept(unit_counts: dict[str, int], pattern: Pattern, sparsity: float, scope: str = "global") -> int:
    """Number of units hard_topk keeps, for audits and tests."""
    if pattern.per_row_budget:
        return sum(c // pattern.m * pattern.n for c in unit_counts.values())
    if scope == "global":
        return keep_count(sum(unit_counts.values()), sparsity)
    return sum(keep_count(c, sparsity) for c in unit_counts.values())
