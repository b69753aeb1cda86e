"""Schedules as objects: where a pruner stands in its plan, given the progress of the pruning stage.

Every schedule is a small ``Schedule`` object built from config values. Most are pure functions
of the progress; one with state (``AdaptiveTau``) overrides ``state_dict``/``load_state_dict``,
and naming a schedule in a pruner's ``state_attrs`` checkpoints whatever state it has.

Sparsity (the level a pruner prunes to now):

* ``OneShot(final)``: the final level from the first step on (prune once, then train).
* ``PolynomialRamp(final, ramp_fraction, power=3)``: s(f) = s_f * (1 - (1 - min(1, f / ramp))^power)
  (Zhu & Gupta's cubic with the default power); f is ``progress.fraction``.
* ``StaircaseRamp(final, stairs)``: ``stairs`` equal steps up to the final level over f in [0, 1].
* ``LinearRamp(ramp_fraction)``: 0 -> 1 in steps after a start step, ramp_steps = round(ramp * steps).

Phases: ``PhasePlan`` (AC/DC's dense warm-up | C, D, C, ... | long D | final C), from ``phase_plan``.

Learning rate of the pruning + fine-tuning stages (what both training loops set, and what a
pruner may need to know of its recipe): ``cosine_lr``, ``stage_lr`` (Budget.finetune_schedule
``shared``: one cosine over both stages; ``restart``: a cosine over pruning, then a fresh one from
``finetune_lr``; ``hold``: a cosine over pruning, then ``finetune_lr`` held for half of fine-tuning
and a cosine to 0 over the other half), ``prune_lr_sum`` (the sum of the weights' lr over the pruning stage's steps).

Temperature (``at(anneal, anneal_steps, nonbinary)`` with anneal <= 0 during warm-up):

* ``ExponentialTau(tau0, tau_min)``: tau(p) = tau0 * (tau_min / tau0) ** p.
* ``AdaptiveTau(tau0, tau_min, gain)``: tau <- max(tau_min, tau * r ** (1 + gain * d)) per step,
  r = (tau_min / tau0) ** (1 / steps), d = mean(4 f (1 - f)) of the current soft mask f (the
  ``nonbinary`` callable, read only here): faster while the mask is far from binary, so it reaches
  tau_min no later than the exponential schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class Schedule:
    """Base: no state to checkpoint."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# -- sparsity ---------------------------------------------------------------------------------


class OneShot(Schedule):
    def __init__(self, final: float):
        self.final = final

    def at(self, fraction: float) -> float:
        return self.final


class PolynomialRamp(Schedule):
    def __init__(self, final: float, ramp_fraction: float, power: int = 3):
        self.final, self.ramp_fraction, self.power = final, ramp_fraction, power

    def at(self, fraction: float) -> float:
        ramp = min(1.0, fraction / self.ramp_fraction)
        return self.final * (1.0 - (1.0 - ramp) ** self.power)


class StaircaseRamp(Schedule):
    def __init__(self, final: float, stairs: int):
        self.final, self.stairs = final, stairs

    def at(self, fraction: float) -> float:
        level = min(self.stairs, 1 + int(max(fraction, 0.0) * self.stairs))
        return self.final * level / self.stairs


class LinearRamp(Schedule):
    def __init__(self, ramp_fraction: float):
        self.ramp_fraction = ramp_fraction

    def at(self, steps_done: int, steps: int) -> float:
        """min(1, (steps_done + 1) / ramp_steps): the ramp's value at its ``steps_done``-th step."""
        ramp_steps = max(1, round(self.ramp_fraction * steps))
        return 1.0 if steps_done + 1 >= ramp_steps else (steps_done + 1) / ramp_steps


# -- phases (AC/DC) ---------------------------------------------------------------------------

DENSE, COMPRESSED, DECOMPRESSED = "dense", "compressed", "decompressed"


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def phase_plan(
    total: int,
    warmup: float = 0.10,
    phase: float = 0.05,
    long_decompressed: float = 0.10,
    final_compressed: float = 0.15,
    min_phase: int = 1,
) -> list[tuple[int, int, str]]:
    """Phases [(start, end, kind)] covering range(total) (epochs or steps); the last one is compressed.

    dense [0, W) | C, D, C, ..., C alternating (odd count, about ``phase * total`` each but at
    least ``min_phase`` long where the region allows, boundaries spread evenly) | long D | final C
    of ``max(1, final_compressed * total)``.  Adjacent phases of the same kind are merged (a
    zero-length long D phase, tiny budgets).
    """
    if total < 1:
        raise ValueError(f"phase_plan needs total >= 1, got {total}")
    final_len = min(total, max(1, _round(final_compressed * total)))
    final_start = total - final_len
    long_start = max(0, final_start - _round(long_decompressed * total))
    warm_end = min(long_start, _round(warmup * total))
    region = long_start - warm_end
    length = max(min_phase, _round(phase * total), 1)
    count = min(region, max(1, _round(region / length))) if region > 0 else 0
    count = min(count, max(1, region // max(1, min_phase)))
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


class PhasePlan(Schedule):
    """``phase_plan`` with these fractions, for the stage's step count (computed once per count)."""

    def __init__(
        self, warmup: float, phase: float, long_decompressed: float, final_compressed: float, min_phase: int = 1
    ):
        self.fractions = (warmup, phase, long_decompressed, final_compressed, min_phase)
        self.plan: list[tuple[int, int, str]] = []

    def plan_for(self, steps: int) -> list[tuple[int, int, str]]:
        if not self.plan or self.plan[-1][1] != steps:
            self.plan = phase_plan(steps, *self.fractions)
        return self.plan

    def kind_at(self, step: int, steps: int) -> str:
        """Kind of phase at a step of the stage; past its end the last (compressed) one."""
        plan = self.plan_for(steps)
        for start, end, kind in plan:
            if start <= step < end:
                return kind
        return plan[-1][2]


# -- temperature ------------------------------------------------------------------------------


def exponential_tau(tau0: float, tau_min: float, fraction: float) -> float:
    fraction = min(max(fraction, 0.0), 1.0)
    return tau0 * (tau_min / tau0) ** fraction


class ExponentialTau(Schedule):
    def __init__(self, tau0: float, tau_min: float):
        self.tau0, self.tau_min = tau0, tau_min

    def at(self, anneal: float, anneal_steps: int, nonbinary: Callable[[], float]) -> float:
        return exponential_tau(self.tau0, self.tau_min, anneal)


class AdaptiveTau(Schedule):
    def __init__(self, tau0: float, tau_min: float, gain: float):
        self.tau0, self.tau_min, self.gain = tau0, tau_min, gain
        self.tau = tau0

    def at(self, anneal: float, anneal_steps: int, nonbinary: Callable[[], float]) -> float:
        """tau0 during warm-up (anneal <= 0); one multiplicative step per call afterwards."""
        return self.tau0 if anneal <= 0 else self.step(anneal_steps, nonbinary())

    def step(self, steps: int, nonbinary: float) -> float:
        rate = math.log(self.tau_min / self.tau0) / max(1, steps)  # log of r, negative
        self.tau = max(self.tau_min, self.tau * math.exp(rate * (1.0 + self.gain * nonbinary)))
        return self.tau

    def state_dict(self) -> dict:
        return {"tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.tau = state["tau"]


# -- learning rate of the pruning + fine-tuning stages -----------------------------------------
def cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


# fine-tuning schedules with a stage of their own (their peak: Budget.finetune_lr); "shared" is not one
OWN_FINETUNE_SCHEDULES = ("restart", "hold")
HOLD_FRACTION = 0.5  # "hold": the share of the fine-tuning steps at the constant peak lr


def stage_lr(base: float, step: int, prune_steps: int, total: int, schedule: str, finetune_scale: float = 1.0) -> float:
    """lr of a parameter group with peak ``base`` at ``step`` of the pruning + fine-tuning stages.

    ``shared``: one cosine over ``total`` steps. The others run a cosine over the ``prune_steps``,
    then fine-tune from the peak ``base * finetune_scale`` (finetune_lr / prune_lr): ``restart``, a
    fresh cosine over the rest (a warm restart); ``hold``, constant at the peak for the first
    ``HOLD_FRACTION`` of the fine-tuning steps, then a cosine to 0 over the others
    (constant-then-decay)."""
    if schedule not in OWN_FINETUNE_SCHEDULES:
        return cosine_lr(base, step, total)
    if step < prune_steps:
        return cosine_lr(base, step, prune_steps)
    peak, done, length = base * finetune_scale, step - prune_steps, total - prune_steps
    if schedule == "restart":
        return cosine_lr(peak, done, length)
    held = round(HOLD_FRACTION * length)
    return peak if done < held else cosine_lr(peak, done - held, length - held)


def prune_lr_sum(prune_lr: float, prune_steps: int, total: int, schedule: str) -> float:
    """Sum of the weights' lr over the pruning stage (e.g. the total decay lr * lambda a
    weight-decay-like term applies in it)."""
    return sum(stage_lr(prune_lr, t, prune_steps, total, schedule) for t in range(prune_steps))
