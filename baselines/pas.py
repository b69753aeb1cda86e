"""PaS: Pruning-as-Search (Li et al., IJCAI 2022, arXiv 2206.01198), generalised to our patterns.

One learnable gate g_u per unit (init ``gate_init`` = 0.6), binarised in the forward pass with a
straight-through estimator (forward b_u = 1[g_u > 0.5], backward identity):

    b = 1[g > 0.5] + (g - g.detach())

trained jointly with the weights (own optimiser group, lr ``gate_lr``) under the resource penalty

    G * alpha * (R(b) / U - (1 - p) * R_dense / U)^2        (G = number of gates; 1 without penalty_per_gate)

R = MACs (``resource=macs``, PaS): sum_l positions_l * sum_u b_u * size_u, with positions_l (output
positions per sample) from ``bench.core.masks.calibrate``; or R = kept units (``resource=units``, the
default: the benchmark's sparsity). Under a FLOPs budget (``--budget flops``) R is what the budget
counts whatever ``resource`` says: sum_l c_l * kept units_l, c_l = the layer's measured FLOPs per
unit (bench.core.costs). U is ``mac_unit`` (0 = R_dense, so the penalty is
alpha * (kept fraction - (1 - p))^2).
N:M: per-weight gates, forward mask = top-N of g per row of M (STE), no penalty.
``finalize`` projects g to exactly the target (top-k) unless ``projection=False``.
See docs/pruners/pas.md for every deviation from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bench.core.masks import PrunableLayer
from bench.core.pruner import Pruner, PrunerConfig, check_choice, check_range, register_pruner
from bench.core.pruning_blocks import straight_through


@dataclass(frozen=True)
class PaSConfig(PrunerConfig):
    alpha: float = 5.0  # weight of the resource penalty (official: 5 for ResNet-50/MobileNet)
    gate_init: float = 0.6  # initial gate value (official 0.6); N:M: mean of the |w|-proportional init
    init_noise: float = 0.02  # gates start uniform in gate_init +- init_noise (breaks lockstep flips; not in PaS)
    gate_lr: float = 1e-3  # gate SGD lr (task loss and penalty alike)
    search_space: ClassVar[dict[str, tuple]] = {"alpha": (2.0, 5.0, 10.0), "gate_lr": (3e-4, 1e-3, 3e-3)}
    # penalty x G (G = number of gates): the per-gate gradient of a resource *fraction* is O(1/G);
    # only the penalty's gradient is scaled (it reaches nothing but the gates), not the task loss's
    penalty_per_gate: bool = True
    gate_momentum: float = 0.0
    gate_weight_decay: float = 0.0  # official code: 1e-4 (one SGD for weights and gates)
    resource: str = "units"  # units: kept unit count (the benchmark's sparsity); macs: positions * kept weights (PaS)
    mac_unit: float = 0.0  # divisor of the resource in the penalty; 0 = its dense value; 1e9 with macs = official
    projection: bool = True  # finalize: exact top-k of g at the target; False: b = 1[g > 0.5] as is

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "alpha", 0.0, float("inf"))
        check_range(self, "gate_init", 0.5, 100.0, low_open=True)
        check_range(self, "init_noise", 0.0, self.gate_init - 0.5, high_open=True)
        check_range(self, "gate_lr", 0.0, float("inf"), low_open=True)
        check_range(self, "gate_momentum", 0.0, 1.0, high_open=True)
        check_range(self, "gate_weight_decay", 0.0, 1.0)
        check_choice(self, "resource", ("units", "macs"))
        check_range(self, "mac_unit", 0.0, float("inf"))


@register_pruner("pas")
class PaSPruner(Pruner):
    comparable_scores = True  # learned under one global budget (or random): ranked as they are
    gates_see_activation = True  # channel gates before a BN act on its affine output only (Pruner)
    Config = PaSConfig
    state_attrs = ("unit_cost",)

    def __init__(self, config: PaSConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.gates: dict[str, nn.Parameter] = {}
        self.unit_cost: dict[str, float] = {}  # resource of one unit: 1, or its MACs per sample

    def attach(self, layers: list[PrunableLayer]) -> None:
        super().attach(layers)
        generator = torch.Generator().manual_seed(0)  # fixed: the init does not depend on the run seed
        for layer in layers:
            units = self.pattern.units(layer.weight.detach().float())
            macs = self.config.resource == "macs"
            if self.allocation is not None and self.allocation.budget == "flops":  # the budget's own unit cost
                self.unit_cost[layer.name] = float(self.allocation.layer_costs([layer.name])[0])
            else:
                self.unit_cost[layer.name] = float(layer.positions * units.shape[-1]) if macs else 1.0
            if self.budget_fixed:  # N:M: rank by |w| at init (constant gates would tie in the top-N per row)
                magnitude = units[..., 0].abs()
                init = self.config.gate_init * magnitude / magnitude.mean().clamp_min(1e-12)
            else:
                noise = torch.rand(units.shape[:-1], generator=generator) * 2 - 1
                init = self.config.gate_init + self.config.init_noise * noise
            self.gates[layer.name] = nn.Parameter(init.to(layer.weight.device))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.gates.values())

    def param_groups(self) -> list[dict]:
        cfg = self.config
        return [
            {
                "params": self.parameters(),
                "lr": cfg.gate_lr,
                "momentum": cfg.gate_momentum,
                "weight_decay": cfg.gate_weight_decay,
            }
        ]

    # -- masks and penalty ------------------------------------------------------------
    def hard_gates(self) -> dict[str, Tensor]:
        """Current binary decisions b (no gradient): 1[g > 0.5], or top-N of g per row for N:M."""
        return self.keep_above(self.gates, 0.5)

    def masks(self) -> dict[str, Tensor]:
        masks = {name: straight_through(self.gates[name], hard) for name, hard in self.hard_gates().items()}
        return self.keep_step_masks(masks)

    def resource(self, unit_masks: dict[str, Tensor]) -> Tensor:
        """Kept units, or MACs per sample of the layers' own kept weights, under (STE) unit masks."""
        return sum(mask.sum() * self.unit_cost[name] for name, mask in unit_masks.items())

    def dense_resource(self) -> float:
        return sum(self.unit_cost[layer.name] * layer.num_units for layer in self.layers)

    def penalty(self) -> Tensor | float:
        # this step's masks, not computed again (Pruner.take_step_masks); fresh ones when none were kept
        masks = self.take_step_masks()
        if self.budget_fixed or self.config.alpha == 0:
            return 0.0
        masks = masks if masks is not None else self.masks()
        unit = self.config.mac_unit or self.dense_resource()
        target = (1.0 - self.sparsity) * self.dense_resource() / unit
        scale = sum(g.numel() for g in self.gates.values()) if self.config.penalty_per_gate else 1.0
        return scale * self.config.alpha * (self.resource(masks) / unit - target) ** 2

    # -- end of search ----------------------------------------------------------------
    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.gates) if self.config.projection else self.hard_gates()

    def log_values(self) -> dict[str, float]:
        if not self.layers:
            return {}
        hard = self.hard_gates()
        kept = sum(int(m.sum()) for m in hard.values())
        total = sum(m.numel() for m in hard.values())
        ratio = float(self.resource({n: m.float() for n, m in hard.items()})) / self.dense_resource()
        return {"gate_sparsity": 1.0 - kept / total, "resource_ratio": ratio}
