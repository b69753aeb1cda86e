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
  reference optimizer, only the pruned layers' weights, or none);
* ``channel`` pattern (``regrow="silent"``): a whole output channel re-entering at zero under a
  BatchNorm has zero batch variance, so its normalised output is 0/sqrt(eps) and the gradient on
  its filter is amplified by gamma/sqrt(eps); instead it re-enters with a fresh filter (normal,
  ``regrow_scale`` x the std of the layer's kept filters, a generator seeded by the run seed and
  the step) and a silent
  BatchNorm (gamma = beta = 0, running mean 0 / var 1, conv bias 0): its output starts at exactly
  0 and grows as gamma learns. ``regrow="zero"``: v1 (zero filter, stale BN).
See docs/pruners/acdc.md for the mapping and the deviations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.core.errors import ConfigError
from bench.core.masks import channel_tensors
from bench.core.pruner import Progress, PrunerConfig, check_choice, check_range, register_pruner
from bench.core.pruning_blocks import HardMaskPruner
from bench.core.schedules import (  # noqa: F401 (phase_plan: re-export)
    COMPRESSED,
    DECOMPRESSED,
    DENSE,
    PhasePlan,
    phase_plan,
)
from bench.core.sparsity import OutputChannel
from bench.core.syncs import may_read


@dataclass(frozen=True)
class ACDCConfig(PrunerConfig):
    warmup_fraction: float = 0.10  # dense warm-up (reference: 10 of 100 epochs)
    phase_fraction: float = 0.05  # length of each alternating C/D phase (reference: 5 epochs)
    long_decompressed_fraction: float = 0.10  # last D phase (reference: epochs 75-84)
    final_compressed_fraction: float = 0.15  # final C phase (reference: epochs 85-99)
    momentum_reset: str = "all"  # at each D start: all | pruned_layers | none
    regrow: str = "silent"  # channel pattern, D start: silent (fresh filter, BN gamma=beta=0) | zero (v1)
    regrow_scale: float = 0.1  # silent: std of the fresh filter, in units of the kept filters' std
    # shortest alternating C/D phase in steps: a short stage gets fewer, longer phases instead of
    # phases of a few steps (phase_fraction 0.05 of a 62-step stage is 3 steps: nothing regrows)
    min_phase_steps: int = 1
    search_space: ClassVar[dict[str, tuple]] = {"phase_fraction": (0.03, 0.05, 0.1), "min_phase_steps": (1, 10, 20)}

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "warmup_fraction", 0.0, 1.0, high_open=True)
        check_range(self, "phase_fraction", 0.0, 1.0, low_open=True)
        check_range(self, "long_decompressed_fraction", 0.0, 1.0, high_open=True)
        check_range(self, "final_compressed_fraction", 0.0, 1.0, low_open=True)
        check_choice(self, "momentum_reset", ("all", "pruned_layers", "none"))
        check_choice(self, "regrow", ("silent", "zero"))
        check_range(self, "regrow_scale", 0.0, 10.0, low_open=True)
        check_range(self, "min_phase_steps", 1, 1_000_000)
        used = self.warmup_fraction + self.long_decompressed_fraction + self.final_compressed_fraction
        if used > 1.0 + 1e-9:
            raise ConfigError(
                "final_compressed_fraction",
                f"warmup + long decompressed + final compressed fractions = {used:g} must be <= 1",
            )


@register_pruner("acdc")
class ACDCPruner(HardMaskPruner):
    """``self.mask``: the hard unit masks of the current C phase (None outside C)."""

    Config = ACDCConfig
    state_attrs = ("phase",)

    def __init__(self, config: ACDCConfig, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.phases = PhasePlan(
            config.warmup_fraction,
            config.phase_fraction,
            config.long_decompressed_fraction,
            config.final_compressed_fraction,
            config.min_phase_steps,
        )
        self.phase = DENSE  # kind of the current step
        self.step, self.steps = 0, 1

    def on_step(self, progress: Progress) -> None:
        self.step, self.steps = progress.step, progress.steps
        kind = self.phases.kind_at(progress.step, progress.steps)
        if kind != COMPRESSED:
            self.mask = None
        elif self.phase != COMPRESSED:
            self.mask = self.select(self.unit_rms())  # IHT step: top-k of the current dense weights
        self.phase = kind

    @torch.no_grad()
    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.mask is not None:  # the C phase's weights stay zero where pruned: one foreach multiply
            torch._foreach_mul_([layer.weight for layer in self.layers], self.expanded_masks())
        if self.phase == COMPRESSED and self.phases.kind_at(self.step + 1, self.steps) == DECOMPRESSED:
            self.reset_momentum(optimizer)  # before the first D step, like the reference
            if self.config.regrow == "silent" and isinstance(self.pattern, OutputChannel):
                self.regrow_channels()

    _expanded: tuple | None = None  # (the float masks of masks(), their expansions)

    def expanded_masks(self) -> list[torch.Tensor]:
        """The C phase's masks expanded to the weights' shapes and dtypes, made once per mask, not
        at every step: ``masks()`` returns the same float tensors while the masks are unchanged."""
        floats = self.masks()
        floats = [floats[layer.name] for layer in self.layers]
        if self._expanded is None or any(a is not b for a, b in zip(self._expanded[0], floats)):
            expanded = [
                self.pattern.expand(m.to(layer.weight.dtype), layer.weight.shape)
                for m, layer in zip(floats, self.layers)
            ]
            self._expanded = (floats, expanded)
        return self._expanded[1]

    @torch.no_grad()
    def regrow_channels(self) -> None:
        """Channels of the ending C phase's mask re-enter with a fresh filter and a silent BatchNorm."""
        generator = torch.Generator().manual_seed(torch.initial_seed() + self.step)
        pruned_of = [~self.mask[layer.name].to(layer.weight.device) for layer in self.layers]
        # the channels re-entering in every layer: one host read for all layers, at this phase boundary
        counts = torch.stack([pruned.sum() for pruned in pruned_of]).tolist()
        for layer, pruned, count in zip(self.layers, pruned_of, counts):
            if count == 0:
                continue
            weight = layer.weight
            rows = pruned.reshape(-1, *[1] * (weight.dim() - 1)).expand_as(weight)  # the pruned filters' weights
            if may_read(weight):  # the CPU: the kept filters gathered (bit for bit the committed rows)
                kept = weight[~pruned]
                std = float(kept.std()) if kept.numel() > 1 else float(weight.std())
            else:  # on the device: the same std from masked sums, no gather of a data-dependent size
                n = (weight.numel() // weight.shape[0]) * (weight.shape[0] - count)
                std = _masked_std(weight, ~rows, n) if n > 1 else weight.std()
            fresh = torch.randn((count, *weight.shape[1:]), generator=generator).to(weight) * std
            weight.masked_scatter_(rows, fresh * self.config.regrow_scale)
            for owner, attr in channel_tensors(layer):  # conv bias, BN affine
                _underlying(owner, attr).masked_fill_(pruned, 0.0)
            bn = layer.batchnorm
            if bn is not None and bn.running_mean is not None:
                bn.running_mean.masked_fill_(pruned, 0.0)
                bn.running_var.masked_fill_(pruned, 1.0)

    @torch.no_grad()
    def reset_momentum(self, optimizer: torch.optim.Optimizer) -> None:
        if self.config.momentum_reset == "none":
            return
        if self.config.momentum_reset == "all":
            params = [p for group in optimizer.param_groups for p in group["params"]]
        else:
            params = [layer.weight for layer in self.layers]
        for param in params:  # SGD's momentum buffer; AdamW's first moment (AdamW stages, protocol v3)
            state = optimizer.state.get(param, {})
            buffer = state.get("momentum_buffer", state.get("exp_avg"))
            if buffer is not None:
                buffer.zero_()

    def log_values(self) -> dict[str, float]:
        return {"compressed": float(self.phase == COMPRESSED)}


def _masked_std(values: torch.Tensor, keep: torch.Tensor, n: int) -> torch.Tensor:
    """The sample std of the ``n`` entries of ``values`` where ``keep`` is true (``n`` > 1), on the device."""
    kept = values * keep
    mean = kept.sum() / n
    return (((values - mean) * keep).pow(2).sum() / (n - 1)).sqrt()


def _underlying(module, attr: str) -> torch.Tensor:
    """The trainable tensor behind ``module.attr`` (the parametrization's original when masked)."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and attr in parametrizations:
        return getattr(parametrizations, attr).original
    return getattr(module, attr)
