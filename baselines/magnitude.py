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
from typing import ClassVar

from torch import Tensor

from bench.core.pruner import Progress, PrunerConfig, check_range, register_pruner
from bench.core.pruning_blocks import HardMaskPruner
from bench.core.schedules import OneShot, PolynomialRamp


class MagnitudeOnSchedule(HardMaskPruner):
    """Hard top-k of the unit RMS of the surviving weights at the schedule's sparsity, recomputed
    whenever that level rises (looked at every ``update_every`` steps)."""

    state_attrs = ("level",)
    update_every = 1

    def __init__(self, config, pattern, sparsity, schedule):
        super().__init__(config, pattern, sparsity)
        self.schedule, self.level = schedule, 0.0

    def on_step(self, progress: Progress) -> None:
        level = self.schedule.at(progress.fraction)
        if progress.step % self.update_every == 0 and level > self.level:
            self.level, self.mask = level, self.select(self.unit_rms(self.mask), level)


@register_pruner("magnitude")
class OneShotMagnitude(MagnitudeOnSchedule):
    transplantable = True  # one-shot: the transplant control's selection (allocation: from:RUN_ID)

    def __init__(self, config, pattern, sparsity):
        super().__init__(config, pattern, sparsity, OneShot(sparsity))


@dataclass(frozen=True)
class GMPConfig(PrunerConfig):
    ramp_fraction: float = 0.75  # share of the pruning stage over which sparsity ramps up
    update_every: int = 10  # steps between mask updates
    search_space: ClassVar[dict[str, tuple]] = {"ramp_fraction": (0.5, 0.75, 0.9), "update_every": (5, 10, 20)}

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "ramp_fraction", 0.0, 1.0, low_open=True)
        check_range(self, "update_every", 1, 1_000_000)


@register_pruner("gmp")
class GradualMagnitude(MagnitudeOnSchedule):
    Config = GMPConfig

    def __init__(self, config: GMPConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity, PolynomialRamp(sparsity, config.ramp_fraction, power=3))
        self.update_every = config.update_every

    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.unit_rms(self.mask))

    def log_values(self) -> dict[str, float]:
        return {"sparsity": self.level}
