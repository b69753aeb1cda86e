"""SmartPruner: separate learnable unit scores m, soft mask f_tau(m) with exactly k kept.

Stages (the trainer's pruning stage is split by ``warmup_fraction``; its fine-tune stage is the
third):
  1. joint warm-up of weights and scores at tau0 (soft mask, exact-k),
  2. pruning: tau annealed from tau0 to tau_min (exponential or adaptive), optional multi-step
     sparsity ramp (k lowered in ``ramp_steps`` equal steps to the target),
  3. fine-tune with the exact hard top-k of m frozen (done by the trainer after ``finalize``).
See docs/pruners.md for what is confirmed from the paper and what is our reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bench.core.masks import PrunableLayer, input_norm_like_weight
from bench.core.pruner import Progress, Pruner, PrunerConfig, check_choice, check_range, register_pruner
from bench.core.schedules import AdaptiveTau, ExponentialTau, StaircaseRamp
from bench.core.sparsity import OutputChannel
from smart.topk import soft_select


@dataclass(frozen=True)
class SmartConfig(PrunerConfig):
    tau0: float = 1.0  # initial temperature (scores are standardised per layer at init)
    tau_min: float = 0.001  # final temperature: low enough that the soft mask is binary (soft -> hard is seamless)
    schedule: str = "exponential"  # exponential | adaptive
    adaptive_gain: float = 2.0  # adaptive: extra decay while the mask is far from binary
    warmup_fraction: float = 0.1  # share of the pruning stage spent at tau0 (stage 1)
    init: str = "activation"  # activation: |W| * ||X|| (Wanda-like) | weight: |W| only
    standardise: str = "auto"  # initial scores: global (one mean/std) | layer | auto: layer for channel, else global
    score_lr: float = 0.05  # SGD learning rate of the scores (own optimizer group, no decay)
    detach_t: bool = False  # treat the shift t as a constant in the backward pass
    ramp_steps: int = 1  # >1: lower k to the target in this many equal steps while annealing
    search_space: ClassVar[dict[str, tuple]] = {"score_lr": (0.02, 0.05, 0.1), "tau0": (0.5, 1.0, 2.0)}

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "tau0", 0.0, float("inf"), low_open=True)
        check_range(self, "tau_min", 0.0, self.tau0, low_open=True)
        check_choice(self, "schedule", ("exponential", "adaptive"))
        check_range(self, "adaptive_gain", 0.0, 100.0)
        check_range(self, "warmup_fraction", 0.0, 1.0, high_open=True)
        check_choice(self, "init", ("activation", "weight"))
        check_choice(self, "standardise", ("auto", "global", "layer"))
        check_range(self, "score_lr", 0.0, float("inf"), low_open=True)
        check_range(self, "ramp_steps", 1, 100)


def log_importance(layer: PrunableLayer, pattern, use_activations: bool) -> Tensor:
    """log of the unit L2 norm of |W| * sqrt(E[x^2]) (or of |W| alone)."""
    weight = layer.weight.detach().float()
    importance = weight.abs() * (input_norm_like_weight(layer) if use_activations else 1.0)
    return torch.log(pattern.units(importance).norm(dim=-1) + 1e-12)


def standardised(score: Tensor, reference: Tensor) -> Tensor:
    """(score - mean) / std of ``reference`` (0 when the reference has a single entry)."""
    if reference.numel() < 2:
        return score * 0
    return (score - reference.mean()) / reference.std().clamp_min(1e-8)


def initial_scores(layers: list[PrunableLayer], pattern, use_activations: bool, scope: str) -> list[Tensor]:
    """Initial unit scores of every layer: log importance, standardised per layer or over all layers.

    ``layer`` gives every layer the same score distribution, so a global top-k on the initial
    scores keeps about the same fraction of every layer; ``global`` keeps the cross-layer order
    of the importances, so the global top-k starts from an activation-aware global ranking.
    """
    raw = [log_importance(layer, pattern, use_activations) for layer in layers]
    if scope == "layer":
        return [standardised(score, score) for score in raw]
    everything = torch.cat([score.reshape(-1) for score in raw])
    return [standardised(score, everything) for score in raw]


@register_pruner("smart")
class SmartPruner(Pruner):
    comparable_scores = True  # learned under one global budget (or random): ranked as they are
    gates_see_activation = True  # channel gates before a BN act on its affine output only (Pruner)
    Config = SmartConfig
    state_attrs = ("tau", "current_sparsity", "nonbinary", "thresholds", "temperature")

    def __init__(self, config: SmartConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.scores: dict[str, nn.Parameter] = {}
        self.temperature = (
            ExponentialTau(config.tau0, config.tau_min)
            if config.schedule == "exponential"
            else AdaptiveTau(config.tau0, config.tau_min, config.adaptive_gain)
        )
        self.ramp = StaircaseRamp(sparsity, config.ramp_steps)
        self.tau, self.current_sparsity = config.tau0, self.ramp.at(0.0)
        self.thresholds: dict[str, Tensor] = {}  # solved soft top-k thresholds: next step's warm start
        self._soft: Tensor | None = None  # the last soft mask (detached), for ``nonbinary``
        self._nonbinary = 1.0  # ``nonbinary`` before the first mask (or as restored)

    def attach(self, layers: list[PrunableLayer]) -> None:
        super().attach(layers)
        use_act = self.config.init == "activation"
        standardise = self.config.standardise
        if standardise == "auto":  # a BatchNorm after each conv makes its channel norms incomparable across layers
            standardise = "layer" if isinstance(self.pattern, OutputChannel) else "global"
        for layer, score in zip(layers, initial_scores(layers, self.pattern, use_act, standardise)):
            self.scores[layer.name] = nn.Parameter(score.to(layer.weight.device))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.scores.values())

    def param_groups(self) -> list[dict]:
        return [{"params": self.parameters(), "lr": self.config.score_lr, "weight_decay": 0.0, "momentum": 0.9}]

    def on_step(self, progress: Progress) -> None:
        """Stage 1 (warm-up) at tau0, then tau annealed and k ramped over the rest (anneal in (0, 1])."""
        cfg = self.config
        anneal = (progress.fraction - cfg.warmup_fraction) / (1.0 - cfg.warmup_fraction)
        anneal_steps = int(progress.steps * (1.0 - cfg.warmup_fraction))
        self.tau = self.temperature.at(anneal, anneal_steps, lambda: self.nonbinary)
        self.current_sparsity = self.ramp.at(anneal)

    def masks(self) -> dict[str, Tensor]:
        masks, soft = soft_select(
            self.scores,
            self.pattern,
            self.current_sparsity,
            self.scope,
            self.tau,
            self.config.detach_t,
            self.thresholds,
            self.allocation,
        )
        self._soft = soft.detach()
        return masks

    @property
    def nonbinary(self) -> float:
        """Mean of 4 f (1 - f) over the last soft mask f: 1 when every entry is 0.5, 0 when binary."""
        if self._soft is None:
            return self._nonbinary
        with torch.no_grad():
            return float((4 * self._soft * (1 - self._soft)).mean())

    @nonbinary.setter
    def nonbinary(self, value: float) -> None:  # load_state_dict
        self._nonbinary, self._soft = value, None

    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.scores)

    def log_values(self) -> dict[str, float]:
        return {"tau": self.tau, "mask_nonbinary": self.nonbinary, "ramp_sparsity": self.current_sparsity}
