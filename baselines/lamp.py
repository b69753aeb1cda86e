"""LAMP: Layer-Adaptive Magnitude-based Pruning (Lee et al., ICLR 2021, arXiv 2010.07611).

``lamp``: one-shot at the first step of the pruning stage, like ``magnitude``: every unit gets its
LAMP score, the exact top-k of those scores at the target (``Pruner.select``) is taken and frozen,
the rest of the budget trains with that mask. With a layer's units ordered so that
e_(1) >= e_(2) >= ... (e_u: the unit's energy, the sum of squares of its weights; w^2 for one
weight; equal energies by position, the earlier first)::

    score(u) = e_u / (sum of e_v over the units v ranked at or above u)

The largest unit of a layer scores exactly 1 and the scores fall along that order (strictly while
positive), so within a layer LAMP ranks as magnitude does; across layers the scores are comparable
by construction (a ratio within one layer: rescaling a layer changes nothing), so one global ranking
of them is LAMP's layer-wise allocation. Hence ``comparable_scores = True``: the protocol's
``global`` allocation (and v1's default ``scope=global``) ranks them raw, with the allocation's
floors; under ``uniform`` (or ``scope=layer``) LAMP keeps magnitude's units.

Units: a block or an output channel is scored by its energy among the layer's units of the same
pattern (all of one size within a layer); unstructured and N:M units are single weights. N:M: the
score is monotone in |w| within the layer, hence within every row of M, so the N:M selection is
magnitude's. A unit of zero energy scores 0 (an all-zero layer too: 0/0 -> 0). Equations, sources
and deviations from the paper: docs/pruners/lamp.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.pruner import Progress, register_pruner
from bench.core.pruning_blocks import HardMaskPruner
from bench.core.sparsity import Pattern


def lamp_scores(energies: Tensor) -> Tensor:
    """LAMP score of every entry of ``energies`` (non-negative, any shape: one layer's units),
    in float64: e_u over the sum of the energies ranked at or above u (a stable descending order)."""
    e = energies.detach().to(torch.float64).reshape(-1)
    order = torch.argsort(e, descending=True, stable=True)
    ranked = e[order]
    denominators = torch.cumsum(ranked, dim=0)
    ratio = torch.where(denominators > 0, ranked / denominators, 0.0)  # an all-zero layer: 0/0 -> 0
    scores = torch.empty_like(e)
    scores[order] = ratio
    return scores.reshape(energies.shape)


def unit_energies(pattern: Pattern, weight: Tensor) -> Tensor:
    """Sum of squares of every unit's weights (shape ``unit_shape``), in float64."""
    return pattern.units(weight.detach().to(torch.float64)).pow(2).sum(dim=-1)


@register_pruner("lamp")
class LAMPPruner(HardMaskPruner):
    """One-shot hard top-k of the LAMP scores of the dense weights, frozen for the rest of the run."""

    comparable_scores = True  # normalised per layer by construction: one global ranking is LAMP's allocation

    def unit_scores(self) -> dict[str, Tensor]:
        """LAMP score of every unit of every layer (float64, shaped like the layer's units)."""
        return {layer.name: lamp_scores(unit_energies(self.pattern, layer.weight)) for layer in self.layers}

    def on_step(self, progress: Progress) -> None:
        if self.mask is None:
            self.mask = self.select(self.unit_scores())

    def finalize(self) -> dict[str, Tensor]:
        return self.mask if self.mask is not None else self.select(self.unit_scores())
