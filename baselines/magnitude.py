"""Magnitude floors.

``magnitude``: one-shot global magnitude pruning at the start of the pruning stage; the mask is
then fixed and the remaining budget is fine-tuning (prune-then-finetune baseline).

``gmp``: gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): sparsity
follows s_t = s_f * (1 - (1 - t / T)^3) over the first ``ramp_fraction`` of the pruning stage,
masks recomputed every ``update_every`` steps from the *masked* weights (pruned units stay
pruned), then held.  For N:M the kept count per row falls from M to N on the same cubic curve.

Unit score: RMS of the unit's weights (L2 norm / sqrt(unit size)), so output channels of layers
with different fan-in compare on one scale; for equal-size units this is the plain L2 ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bench.pruner import Progress, Pruner, PrunerConfig, check_range, register_pruner
from bench.select import hard_topk, nm_topk


def rms_scores(pruner: Pruner, masks: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    scores = {}
    for layer in pruner.layers:
        units = pruner.pattern.units(layer.weight.detach())
        score = units.pow(2).mean(dim=-1).sqrt()
        if masks is not None:
            score = score * masks[layer.name].to(score.dtype)
        scores[layer.name] = score
    return scores


@register_pruner("magnitude")
class OneShotMagnitude(Pruner):
    def __init__(self, config, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.mask: dict[str, Tensor] | None = None

    def on_step(self, progress: Progress) -> None:
        if self.mask is None:
            self.mask = self.select(rms_scores(self))

    def masks(self) -> dict[str, Tensor] | None:
        return None if self.mask is None else {n: m.float() for n, m in self.mask.items()}

    def finalize(self) -> dict[str, Tensor]:
        return self.mask if self.mask is not None else self.select(rms_scores(self))

    def state_dict(self) -> dict:
        return {"mask": self.mask}

    def load_state_dict(self, state: dict) -> None:
        self.mask = state["mask"]


@dataclass(frozen=True)
class GMPConfig(PrunerConfig):
    ramp_fraction: float = 0.75  # share of the pruning stage over which sparsity ramps up
    update_every: int = 10  # steps between mask updates

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "ramp_fraction", 0.0, 1.0, low_open=True)
        check_range(self, "update_every", 1, 1_000_000)


@register_pruner("gmp")
class GradualMagnitude(Pruner):
    Config = GMPConfig

    def __init__(self, config, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.mask: dict[str, Tensor] | None = None
        self.level = 0.0

    def target_at(self, fraction: float) -> float:
        ramp = min(1.0, fraction / self.config.ramp_fraction)
        return self.sparsity * (1.0 - (1.0 - ramp) ** 3)

    def _masks_at(self, level: float) -> dict[str, Tensor]:
        scores = rms_scores(self, self.mask)
        if self.pattern.per_row_budget:
            m = self.pattern.m
            keep = max(self.pattern.n, round(m - (m - self.pattern.n) * level / self.sparsity))
            return {name: nm_topk(s, keep) for name, s in scores.items()}
        return hard_topk(scores, self.pattern, level, self.config.scope)

    def on_step(self, progress: Progress) -> None:
        if progress.stage != "prune" or progress.step % self.config.update_every:
            return
        level = self.target_at(progress.fraction)
        if level > self.level:
            self.level = level
            self.mask = self._masks_at(level)

    def masks(self) -> dict[str, Tensor] | None:
        return None if self.mask is None else {n: m.float() for n, m in self.mask.items()}

    def finalize(self) -> dict[str, Tensor]:
        return self._masks_at(self.sparsity) if self.pattern.per_row_budget else self.select(rms_scores(self, self.mask))

    def log_values(self) -> dict[str, float]:
        return {"sparsity": self.level}

    def state_dict(self) -> dict:
        return {"mask": self.mask, "level": self.level}

    def load_state_dict(self, state: dict) -> None:
        self.mask, self.level = state["mask"], state["level"]
