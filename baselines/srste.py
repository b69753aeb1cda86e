"""SR-STE: sparse-refined straight-through estimator for N:M sparsity (Zhou et al., ICLR 2021).

Reference: aojunzz/NM-sparsity ``devkit/sparse_ops/sparse_ops.py`` (``Sparse`` autograd function).

    forward:   W~ = M(W) * W,   M(W) = top-N |w| in each row of M along the reduction dimension,
               recomputed from the current dense weights at every step
    backward:  g_W = dL/dW~ + lambda_w * (1 - M(W)) * W      (all dense weights get a gradient)

The straight-through part is the Masker's (``straight_through = True``: the masked forward passes
the upstream gradient to every weight unchanged).  The sparse-refined term is written as the
penalty lambda_w / 2 * sum_l ||(1 - M_l) * W_l||^2 whose gradient is exactly lambda_w * (1 - M) * W
(M is a constant of the step).  ``finalize`` = top-N of the final dense weights.  See
docs/pruners/srste.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from bench.core.pruner import Progress, Pruner, PrunerConfig, check_choice, check_range, register_pruner

# the reference recipe's lr sum (ResNet-50 2:4: lr 0.1 at batch 256, 5 linear warm-up epochs, then
# cosine, 120 ImageNet epochs of 5005 steps): 5005 * 5 * 0.05 + 5005 * 115 * 0.05 = 30030, so the
# reference lambda_w = 2e-4 decays a pruned weight by about exp(-2e-4 * 30030) = exp(-6) in training
REFERENCE_LR_SUM = 30030.0
# cap of the recipe-scaled lambda: the mean per-step shrink lr * lambda of a pruned weight stays <= this
MAX_MEAN_SHRINK = 0.25


@dataclass(frozen=True)
class SRSTEConfig(PrunerConfig):
    lambda_w: float = 2e-4  # sparse-refined decay on the pruned weights (reference: decay=0.0002)
    # recipe: lambda = lambda_w * REFERENCE_LR_SUM / (our pruning stage's lr sum), so a pruned
    # weight decays as much over our stage as over the reference's 120 epochs; none: lambda_w as is
    lambda_scale: str = "recipe"
    # the total decay lambda * sum(lr): 1.5, 3, 6 (the reference's), 12
    search_space: ClassVar[dict[str, tuple]] = {"lambda_w": (5e-5, 1e-4, 2e-4, 4e-4)}

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "lambda_w", 0.0, float("inf"))
        check_choice(self, "lambda_scale", ("recipe", "none"))


@register_pruner("srste")
class SRSTEPruner(Pruner):
    Config = SRSTEConfig
    patterns = ("nm",)
    straight_through = True
    state_attrs = ("lam",)
    current: dict[str, Tensor] | None = None  # bool unit masks M(W) of this step (masks() sets them)

    def __init__(self, config: SRSTEConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.lam = config.lambda_w  # the lambda in use (recipe-scaled at the first step)

    def on_step(self, progress: Progress) -> None:
        if self.config.lambda_scale == "recipe" and progress.lr_sum:
            scaled = self.config.lambda_w * REFERENCE_LR_SUM / progress.lr_sum
            self.lam = min(scaled, MAX_MEAN_SHRINK * progress.steps / progress.lr_sum)

    def masks(self) -> dict[str, Tensor]:
        self.current = self.select(self.weight_norms())
        return {name: mask.float() for name, mask in self.current.items()}

    def penalty(self) -> Tensor | float:
        if self.lam == 0.0:
            return 0.0
        current = self.current or self.select(self.weight_norms())
        total = 0.0
        for layer in self.layers:
            kept = self.pattern.expand(current[layer.name].to(layer.weight.dtype), layer.weight.shape)
            total = total + ((1.0 - kept) * layer.weight).pow(2).sum()
        return 0.5 * self.lam * total

    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.weight_norms())

    def log_values(self) -> dict[str, float]:
        return {"lambda": self.lam}
