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

from torch import Tensor

from bench.pruner import Pruner, PrunerConfig, check_range, register_pruner
from bench.select import nm_topk


@dataclass(frozen=True)
class SRSTEConfig(PrunerConfig):
    lambda_w: float = 2e-4  # sparse-refined decay on the pruned weights (reference: decay=0.0002)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "lambda_w", 0.0, float("inf"))


@register_pruner("srste")
class SRSTEPruner(Pruner):
    Config = SRSTEConfig
    patterns = ("nm",)
    straight_through = True

    def __init__(self, config: SRSTEConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.current: dict[str, Tensor] | None = None  # bool unit masks of this step

    def magnitudes(self) -> dict[str, Tensor]:
        """|w| of every weight as (rows, M) unit scores."""
        return {layer.name: self.pattern.unit_norms(layer.weight.detach()) for layer in self.layers}

    def masks(self) -> dict[str, Tensor]:
        self.current = {name: nm_topk(scores, self.pattern.n) for name, scores in self.magnitudes().items()}
        return {name: mask.float() for name, mask in self.current.items()}

    def penalty(self) -> Tensor | float:
        if self.config.lambda_w == 0.0:
            return 0.0
        if self.current is None:
            self.masks()
        total = 0.0
        for layer in self.layers:
            weight = layer.weight
            pruned = 1.0 - self.pattern.expand(self.current[layer.name].to(weight.dtype), weight.shape)
            total = total + (pruned * weight).pow(2).sum()
        return 0.5 * self.config.lambda_w * total

    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.magnitudes())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
