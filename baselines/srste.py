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

from bench.core.pruner import Pruner, PrunerConfig, check_range, register_pruner


@dataclass(frozen=True)
class SRSTEConfig(PrunerConfig):
    lambda_w: float = 2e-4  # sparse-refined decay on the pruned weights (reference: decay=0.0002)
    search_space: ClassVar[dict[str, tuple]] = {"lambda_w": (2e-5, 2e-4, 2e-3, 2e-2)}

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "lambda_w", 0.0, float("inf"))


@register_pruner("srste")
class SRSTEPruner(Pruner):
    Config = SRSTEConfig
    patterns = ("nm",)
    straight_through = True
    current: dict[str, Tensor] | None = None  # bool unit masks M(W) of this step (masks() sets them)

    def masks(self) -> dict[str, Tensor]:
        self.current = self.select(self.weight_norms())
        return {name: mask.float() for name, mask in self.current.items()}

    def penalty(self) -> Tensor | float:
        if self.config.lambda_w == 0.0:
            return 0.0
        current = self.current or self.select(self.weight_norms())
        total = 0.0
        for layer in self.layers:
            kept = self.pattern.expand(current[layer.name].to(layer.weight.dtype), layer.weight.shape)
            total = total + ((1.0 - kept) * layer.weight).pow(2).sum()
        return 0.5 * self.config.lambda_w * total

    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.weight_norms())
