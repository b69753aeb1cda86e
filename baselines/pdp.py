"""PDP: Parameter-free Differentiable Pruning (Cho, Adya, Naik; NeurIPS 2023, arXiv 2305.11203).

Soft mask from the weights themselves, no extra parameters (equations and every deviation from
the paper: docs/pruners/pdp.md):

    s  = unit score: |w| (unstructured, N:M) or the unit's L2 norm (block, channel)
    t  = midpoint of the smallest kept and the largest pruned score at the layer's current
         target (N:M: per row of M, the N-th and (N+1)-th largest |w|); recomputed from the
         current weights at every step and detached (no gradient through t)
    m  = sigmoid((s^2 - t^2) / tau_l),   tau_l = tau(now) * std_l(s^2)   (scale-aware; v1: tau * t^2)
    tau(now) = tau * (tau_end / tau)^a, a = 0 at the end of warm-up -> 1 at the end of the stage
           (annealed, so the soft mask is binary when the hard mask takes over)

Schedule inside the trainer's pruning stage: dense for ``warmup_fraction`` (masks() is None);
then the per-layer budgets r_l are fixed once by one global threshold over the unit scores
(RMS-normalised, so units of different size compare), and the layer target follows
r_l(e) = min(1, eps * (e + 1)) * r_l, e = steps since the end of warm-up, eps = 1 / (ramp steps),
so the ramp ends after ``ramp_fraction`` of the stage.  N:M has no ramp: the per-row soft mask
starts right after warm-up.  ``finalize`` keeps, per layer, exactly the budgeted number of
units with the highest current scores (the paper's m >= 0.5 mask), which sums to the global
target exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from bench.core.errors import ConfigError
from bench.core.pruner import Progress, Pruner, PrunerConfig, check_choice, check_range, register_pruner
from bench.core.schedules import LinearRamp
from bench.core.select import global_topk, order_pair, per_row_of_layers, row_order_values


@dataclass(frozen=True)
class PDPConfig(PrunerConfig):
    tau: float = 0.1  # temperature at the end of warm-up, relative to the layer's scale (tau_scale)
    tau_end: float = 1e-3  # temperature at the end of the pruning stage (geometric anneal from tau)
    # scale of tau: "spread" = std of the layer's squared unit scores (channel/block norms
    # concentrate near the threshold, so t^2 made them 1e4-1e6x softer than |w| scores);
    # "threshold" = t^2 (v1)
    tau_scale: str = "spread"
    warmup_fraction: float = 0.1  # share of the pruning stage trained dense before any mask
    ramp_fraction: float = 0.6  # share of the pruning stage over which r_l(e) climbs to r_l
    search_space: ClassVar[dict[str, tuple]] = {"tau": (0.03, 0.1, 0.3), "ramp_fraction": (0.4, 0.6, 0.8)}
    final_mask: str = "budgets"  # budgets: per-layer top-k at the PDP layer budgets | global: self.select

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "tau", 0.0, float("inf"), low_open=True)
        check_range(self, "tau_end", 0.0, self.tau, low_open=True)
        check_choice(self, "tau_scale", ("spread", "threshold"))
        check_range(self, "warmup_fraction", 0.0, 1.0, high_open=True)
        check_range(self, "ramp_fraction", 0.0, 1.0, low_open=True)
        check_choice(self, "final_mask", ("budgets", "global"))
        if self.warmup_fraction + self.ramp_fraction > 1.0 + 1e-9:
            raise ConfigError(
                "ramp_fraction",
                f"warmup_fraction + ramp_fraction = {self.warmup_fraction + self.ramp_fraction:g} must be <= 1",
            )


def soft_mask(squared_scores: Tensor, threshold: Tensor, tau: float, spread: Tensor | None = None) -> Tensor:
    """m = sigmoid((s^2 - t^2) / (tau * scale)), scale = ``spread`` (detached) or t^2 when None;
    ``threshold`` is detached and broadcast."""
    t2 = threshold.detach().pow(2)
    unit = t2 if spread is None else spread.detach()
    scale = (tau * unit).clamp_min(torch.finfo(squared_scores.dtype).tiny)
    return torch.sigmoid((squared_scores - t2) / scale)


def squared_norms(units: Tensor) -> Tensor:
    """(*unit_shape, size) -> s^2 of every unit (differentiable in w). A unit of one weight
    (unstructured, N:M) gives its w^2 as is: a sum over one entry has the same value (w^2 >= +0)
    but copies every weight."""
    return units.pow(2).squeeze(-1) if units.shape[-1] == 1 else units.pow(2).sum(dim=-1)


def layer_threshold(squared: Tensor, pruned: int) -> Tensor:
    """Midpoint between the largest pruned and the smallest kept score s = sqrt(s^2), from the
    squared scores (1 <= pruned < numel). The pair is selected on s^2 and its square roots taken:
    sqrt is monotone, so they are the pair of s bit for bit, without a pass over every score."""
    largest_pruned, smallest_kept = order_pair(squared, pruned)
    return 0.5 * (largest_pruned.sqrt() + smallest_kept.sqrt())


def row_thresholds(squared: Tensor, n: int) -> Tensor:
    """(rows, M) squared scores -> (rows, 1): midpoint of the n-th and (n+1)-th largest s = sqrt(s^2)
    in each row (selected on s^2, as ``layer_threshold``)."""
    top = row_order_values(squared, (n - 1, n)).sqrt()
    return 0.5 * (top[..., 0:1] + top[..., 1:2])


@register_pruner("pdp")
class PDPPruner(Pruner):
    Config = PDPConfig
    state_attrs = ("kept_budget", "ramp_start", "ramp", "tau_now")

    def __init__(self, config: PDPConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.kept_budget: dict[str, int] | None = None  # units kept per layer at the target
        self.ramp_start = 0  # step at which warm-up ended
        self.ramp = 0.0  # min(1, eps * (e + 1)); 0 during warm-up
        self.schedule = LinearRamp(config.ramp_fraction)
        self.tau_now = config.tau
        self._last: list[Tensor] = []  # the last soft masks (detached), for ``mask_soft_fraction``

    # -- schedule ---------------------------------------------------------------------
    def layer_budgets(self) -> dict[str, int]:
        """Kept units per layer from one threshold over all layers (scope=layer: r per layer)."""
        masks = self.select(self.unit_rms())
        counts = torch.stack([mask.sum() for mask in masks.values()]).tolist()  # one host read for every layer
        return dict(zip(masks, counts))

    def on_step(self, progress: Progress) -> None:
        cfg = self.config
        if progress.fraction < cfg.warmup_fraction:
            return
        last = (progress.steps - 1) / max(1, progress.steps)  # fraction at the stage's last step: tau_end
        span = last - cfg.warmup_fraction
        anneal = 1.0 if span <= 0 else min(1.0, (progress.fraction - cfg.warmup_fraction) / span)
        self.tau_now = cfg.tau * (cfg.tau_end / cfg.tau) ** anneal
        if self.budget_fixed:  # N:M: N per row of M right after warm-up; no layer budgets, no ramp
            self.ramp = 1.0
            return
        if self.kept_budget is None:
            self.kept_budget, self.ramp_start = self.layer_budgets(), progress.step
        self.ramp = self.schedule.at(progress.step - self.ramp_start, progress.steps)

    def pruned_now(self, name: str, units: int) -> int:
        """Units below the threshold at the current ramp: round(ramp * (G_l - kept_l))."""
        return int(round(self.ramp * (units - self.kept_budget[name])))

    # -- masks ------------------------------------------------------------------------
    def thresholds(self, squared: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """t of every layer at the current budget, from the detached squared unit scores: per row
        of M (N:M; the rows of all layers in one selection when they share dtype, device and M)
        or per layer (None while nothing is pruned)."""
        if self.budget_fixed:
            return per_row_of_layers(squared, lambda rows: row_thresholds(rows, self.pattern.n))
        out = {}
        for name, v in squared.items():
            pruned = self.pruned_now(name, v.numel())
            out[name] = layer_threshold(v, pruned) if pruned else None
        return out

    def masks(self) -> dict[str, Tensor] | None:
        if self.ramp == 0.0:
            return None
        squared = {layer.name: squared_norms(self.pattern.units(layer.weight)) for layer in self.layers}
        thresholds = self.thresholds({name: sq.detach() for name, sq in squared.items()})
        out = {}
        for name, sq in squared.items():
            t = thresholds[name]
            spread = sq.detach().std() if self.config.tau_scale == "spread" and sq.numel() > 1 else None
            out[name] = torch.ones_like(sq) if t is None else soft_mask(sq, t, self.tau_now, spread)
            if t is not None and self.allocation is not None and not self.budget_fixed:
                need = self.allocation.minimum(sq.numel())
                if sq.numel() - self.pruned_now(name, sq.numel()) <= need:  # a layer held at its floor:
                    # its kept units (s >= t: the ``need`` best, ties included) at 1, so the soft mass
                    # never dips under the floor (the sigmoid around the midpoint threshold gives the
                    # kept units a little less than 1); no selection beyond the threshold's
                    held = sq.detach() >= t.detach().pow(2)
                    out[name] = torch.where(held, torch.ones_like(out[name]), out[name])
        self._last = [mask.detach() for mask in out.values()]
        return out

    @property
    def soft_fraction(self) -> float:
        """Share of the last soft masks' values in (0.1, 0.9), computed when logged (no host sync per step)."""
        total = sum(mask.numel() for mask in self._last)
        soft = sum(int(((mask > 0.1) & (mask < 0.9)).sum()) for mask in self._last)
        return soft / max(1, total)

    def finalize(self) -> dict[str, Tensor]:
        scores = self.unit_rms()
        if not self.kept_budget or self.config.final_mask == "global":  # N:M: no layer budgets
            return self.select(scores)
        return {name: global_topk({name: s}, self.kept_budget[name])[name] for name, s in scores.items()}

    def log_values(self) -> dict[str, float]:
        return {"ramp": self.ramp, "tau": self.tau_now, "mask_soft_fraction": self.soft_fraction}
