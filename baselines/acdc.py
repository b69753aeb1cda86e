"""AC/DC: Alternating Compressed/DeCompressed training (Peste, Iofinova, Vladu, Alistarh; NeurIPS 2021).

The reference ImageNet plan (100 epochs; IST-DASLab/ACDC configs/neurips/*_s90_ep100.yaml) is
dense warm-up 0-9, compressed (C) phases of 5 epochs starting at 10, 20, ..., 70, decompressed (D)
phases starting at 15, ..., 65, a long D phase 75-84 and a final C phase 85-99.  ``phase_plan``
rescales those fractions (10% / 5% / 10% / 15%) to the steps of the trainer's pruning stage and
always ends on C; the trainer's fine-tune stage then keeps the last C mask, so in effect the final
C phase continues into fine-tuning.

* start of every C phase: hard top-k of the current unit scores at the target (``self.select``;
  RMS of the unit so units of different size compare, = |w| for single weights; N:M: top-N per row);
* during C: the mask is applied in the forward (the parametrization also masks the gradient) and
  after every optimizer step the pruned entries of the dense weight are set to zero, so weight
  decay and momentum cannot move them;
* start of every D phase: masks() is None, pruned weights re-enter at zero, and the momentum
  buffers are zeroed before the first D step (``momentum_reset``: all parameters as in the
  reference optimizer, only the pruned layers' weights, or none).
See docs/pruners/acdc.md for the mapping and the deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.errors import ConfigError
from bench.pruner import Progress, Pruner, PrunerConfig, check_choice, check_range, register_pruner

DENSE, COMPRESSED, DECOMPRESSED = "dense", "compressed", "decompressed"


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def phase_plan(total: int, warmup: float = 0.10, phase: float = 0.05, long_decompressed: float = 0.10,
               final_compressed: float = 0.15) -> list[tuple[int, int, str]]:
    """Phases [(start, end, kind)] covering range(total) (epochs or steps); the last one is compressed.

    dense [0, W) | C, D, C, ..., C alternating (odd count, about ``phase * total`` each, boundaries
    spread evenly) | long D | final C of ``max(1, final_compressed * total)``.  Adjacent phases of
    the same kind are merged (a zero-length long D phase, tiny budgets).
    """
    if total < 1:
        raise ValueError(f"phase_plan needs total >= 1, got {total}")
    final_len = min(total, max(1, _round(final_compressed * total)))
    final_start = total - final_len
    long_start = max(0, final_start - _round(long_decompressed * total))
    warm_end = min(long_start, _round(warmup * total))
    region = long_start - warm_end
    count = min(region, max(1, _round(region / max(1, _round(phase * total))))) if region > 0 else 0
    if count and count % 2 == 0:
        count -= 1  # the alternating block starts and ends on C
    phases = [(0, warm_end, DENSE)]
    bounds = [warm_end + _round(i * region / count) for i in range(count + 1)] if count else []
    phases += [(a, b, COMPRESSED if i % 2 == 0 else DECOMPRESSED) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    phases += [(long_start, final_start, DECOMPRESSED), (final_start, total, COMPRESSED)]
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in phases:
        if end <= start:
            continue
        if merged and merged[-1][2] == kind:
            merged[-1] = (merged[-1][0], end, kind)
        else:
            merged.append((start, end, kind))
    return merged


@dataclass(frozen=True)
class ACDCConfig(PrunerConfig):
    warmup_fraction: float = 0.10  # dense warm-up (reference: 10 of 100 epochs)
    phase_fraction: float = 0.05  # length of each alternating C/D phase (reference: 5 epochs)
    long_decompressed_fraction: float = 0.10  # last D phase (reference: epochs 75-84)
    final_compressed_fraction: float = 0.15  # final C phase (reference: epochs 85-99)
    momentum_reset: str = "all"  # at each D start: all | pruned_layers | none

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "warmup_fraction", 0.0, 1.0, high_open=True)
        check_range(self, "phase_fraction", 0.0, 1.0, low_open=True)
        check_range(self, "long_decompressed_fraction", 0.0, 1.0, high_open=True)
        check_range(self, "final_compressed_fraction", 0.0, 1.0, low_open=True)
        check_choice(self, "momentum_reset", ("all", "pruned_layers", "none"))
        used = self.warmup_fraction + self.long_decompressed_fraction + self.final_compressed_fraction
        if used > 1.0 + 1e-9:
            raise ConfigError("final_compressed_fraction", f"warmup + long decompressed + final compressed "
                              f"fractions = {used:g} must be <= 1")


@register_pruner("acdc")
class ACDCPruner(Pruner):
    Config = ACDCConfig

    def __init__(self, config: ACDCConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.mask: dict[str, Tensor] | None = None  # hard unit masks of the current C phase
        self.phase = DENSE  # kind of the current step
        self.step, self.steps = 0, 1
        self.plan: list[tuple[int, int, str]] = []

    def plan_for(self, steps: int) -> list[tuple[int, int, str]]:
        if not self.plan or self.plan[-1][1] != steps:
            c = self.config
            self.plan = phase_plan(steps, c.warmup_fraction, c.phase_fraction, c.long_decompressed_fraction,
                                   c.final_compressed_fraction)
        return self.plan

    def phase_at(self, step: int) -> str:
        """Kind of phase at a step of the pruning stage; past its end the last (compressed) one."""
        for start, end, kind in self.plan_for(self.steps):
            if start <= step < end:
                return kind
        return self.plan[-1][2]

    def on_step(self, progress: Progress) -> None:
        if progress.stage != "prune":
            return
        self.step, self.steps = progress.step, progress.steps
        kind = self.phase_at(progress.step)
        if kind == COMPRESSED and self.phase != COMPRESSED:
            self.mask = self.select(self.unit_rms())  # IHT step: top-k of the current dense weights
        elif kind != COMPRESSED:
            self.mask = None
        self.phase = kind

    def masks(self) -> dict[str, Tensor] | None:
        return None if self.mask is None else {name: m.float() for name, m in self.mask.items()}

    @torch.no_grad()
    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.mask is not None:
            for layer in self.layers:
                weight = layer.weight
                weight.mul_(self.pattern.expand(self.mask[layer.name].to(weight.dtype), weight.shape))
        if self.phase == COMPRESSED and self.phase_at(self.step + 1) == DECOMPRESSED:
            self.reset_momentum(optimizer)  # before the first D step, like the reference

    @torch.no_grad()
    def reset_momentum(self, optimizer: torch.optim.Optimizer) -> None:
        if self.config.momentum_reset == "none":
            return
        if self.config.momentum_reset == "all":
            params = [p for group in optimizer.param_groups for p in group["params"]]
        else:
            params = [layer.weight for layer in self.layers]
        for param in params:
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.zero_()

    def finalize(self) -> dict[str, Tensor]:
        return self.mask if self.mask is not None else self.select(self.unit_rms())

    def log_values(self) -> dict[str, float]:
        return {"compressed": float(self.phase == COMPRESSED)}

    def state_dict(self) -> dict:
        return {"mask": self.mask, "phase": self.phase, "step": self.step, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.mask, self.phase, self.step, self.steps = state["mask"], state["phase"], state["step"], state["steps"]
