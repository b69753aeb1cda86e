"""PaS: Pruning-as-Search (Li et al., IJCAI 2022, arXiv 2206.01198), generalised to our patterns.

One learnable gate g_u per unit (init ``gate_init`` = 0.6), binarised in the forward pass with a
straight-through estimator (forward b_u = 1[g_u > 0.5], backward identity):

    b = 1[g > 0.5] + (g - g.detach())

trained jointly with the weights (own optimiser group) under the resource penalty

    alpha * (MACs(b) / U - (1 - p) * MACs_dense / U)^2,   MACs(b) = sum_l positions_l * sum_u b_u * size_u

where positions_l (output positions per sample) comes from ``bench.masks.calibrate`` and U is
``mac_unit`` (0 = MACs_dense, so the penalty is alpha * (MAC fraction - (1 - p))^2).
N:M: per-weight gates, forward mask = top-N of g per row of M (STE), no penalty.
``finalize`` projects g to exactly the target (top-k) unless ``projection=False``.
See docs/pruners/pas.md for every deviation from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.masks import PrunableLayer
from bench.pruner import Pruner, PrunerConfig, check_choice, check_range, register_pruner
from bench.select import nm_topk


@dataclass(frozen=True)
class PaSConfig(PrunerConfig):
    alpha: float = 5.0  # weight of the MAC penalty (official: 5 for ResNet-50/MobileNet)
    gate_init: float = 0.6  # initial gate value (official 0.6); N:M: mean of the |w|-proportional init
    gate_lr: float = 2e-4  # gate SGD lr, multiplied by the number of gates when lr_per_gate
    lr_per_gate: bool = True  # lr = gate_lr * G: per-gate gradients of a MAC *fraction* are O(1/G)
    gate_momentum: float = 0.9
    gate_weight_decay: float = 0.0  # official code: 1e-4 (one SGD for weights and gates)
    mac_unit: float = 0.0  # MAC divisor in the penalty; 0 = dense MACs of the pruned layers; 1e9 = official
    projection: bool = True  # finalize: exact top-k of g at the target; False: b = 1[g > 0.5] as is
    resource: str = "macs"  # macs: positions * kept weights (PaS); units: kept unit count (the benchmark's sparsity)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "alpha", 0.0, float("inf"))
        check_range(self, "gate_init", 0.5, 100.0, low_open=True)
        check_range(self, "gate_lr", 0.0, float("inf"), low_open=True)
        check_range(self, "gate_momentum", 0.0, 1.0, high_open=True)
        check_range(self, "gate_weight_decay", 0.0, 1.0)
        check_range(self, "mac_unit", 0.0, float("inf"))
        check_choice(self, "resource", ("macs", "units"))


def straight_through_gate(gates: Tensor, hard: Tensor) -> Tensor:
    """Forward exactly ``hard`` (0/1), backward identity to ``gates``."""
    return hard.to(gates.dtype) + (gates - gates.detach())


@register_pruner("pas")
class PaSPruner(Pruner):
    Config = PaSConfig

    def __init__(self, config: PaSConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.gates = nn.ParameterDict()
        self.unit_macs: dict[str, float] = {}  # MACs per sample of one unit of each layer

    def attach(self, layers: list[PrunableLayer]) -> None:
        super().attach(layers)
        for layer in layers:
            units = self.pattern.units(layer.weight.detach().float())
            self.unit_macs[layer.name] = float(layer.positions * units.shape[-1]) if self.config.resource == "macs" else 1.0
            if self.pattern.per_row_budget:  # N:M: rank by |w| at init (constant gates would tie)
                magnitude = units[..., 0].abs()
                init = self.config.gate_init * magnitude / magnitude.mean().clamp_min(1e-12)
            else:
                init = torch.full(units.shape[:-1], self.config.gate_init)
            self.gates[_key(layer.name)] = nn.Parameter(init.to(layer.weight.device))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.gates.values())

    def param_groups(self) -> list[dict]:
        cfg = self.config
        num_gates = sum(p.numel() for p in self.parameters())
        lr = cfg.gate_lr * num_gates if cfg.lr_per_gate else cfg.gate_lr
        return [{"params": self.parameters(), "lr": lr, "momentum": cfg.gate_momentum,
                 "weight_decay": cfg.gate_weight_decay}]

    # -- masks and penalty ------------------------------------------------------------
    def hard_gates(self) -> dict[str, Tensor]:
        """Current binary decisions b (no gradient): 1[g > 0.5], or top-N of g per row for N:M."""
        out = {}
        for layer in self.layers:
            g = self.gates[_key(layer.name)].detach()
            out[layer.name] = nm_topk(g, self.pattern.n) if self.pattern.per_row_budget else g > 0.5
        return out

    def masks(self) -> dict[str, Tensor]:
        hard = self.hard_gates()
        return {name: straight_through_gate(self.gates[_key(name)], hard[name]) for name in hard}

    def macs(self, unit_masks: dict[str, Tensor]) -> Tensor:
        """MACs per sample of the pruned layers' own kept weights under (possibly STE) unit masks."""
        return sum(mask.sum() * self.unit_macs[name] for name, mask in unit_masks.items())

    def dense_macs(self) -> float:
        return sum(self.unit_macs[layer.name] * layer.num_units for layer in self.layers)

    def penalty(self) -> Tensor | float:
        if self.pattern.per_row_budget or self.config.alpha == 0:
            return 0.0
        unit = self.config.mac_unit or self.dense_macs()
        target = (1.0 - self.sparsity) * self.dense_macs() / unit
        return self.config.alpha * (self.macs(self.masks()) / unit - target) ** 2

    # -- end of search ----------------------------------------------------------------
    def finalize(self) -> dict[str, Tensor]:
        if self.config.projection:
            return self.select({layer.name: self.gates[_key(layer.name)].detach() for layer in self.layers})
        return self.hard_gates()

    def log_values(self) -> dict[str, float]:
        if not self.layers:
            return {}
        hard = self.hard_gates()
        kept = sum(int(m.sum()) for m in hard.values())
        total = sum(m.numel() for m in hard.values())
        mac_ratio = float(self.macs({n: m.float() for n, m in hard.items()})) / self.dense_macs()
        return {"gate_sparsity": 1.0 - kept / total, "resource_ratio": mac_ratio}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "unit_macs": dict(self.unit_macs)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.unit_macs = dict(state["unit_macs"])


def _key(name: str) -> str:
    return name.replace(".", "__")
