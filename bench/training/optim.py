"""The optimizer of the pruning and fine-tuning stages: one recipe per task (protocol v3).

The model's weights are trained in every stage with the family of the task's dense recipe
(``Task.stage_optimizer``: ``Task.dense_optimizer`` unless the budget says ``stage_optimizer: SGD``,
the v1/v2 recipe):

- **SGD** (momentum and weight decay of the Budget): one ``torch.optim.SGD`` over the weights and
  the pruner's own groups, exactly as before protocol v3 (bit-identical rows);
- **AdamW** (the dense recipe's decoupled weight decay ``Task.dense_weight_decay``): AdamW over the
  weights, and SGD over the pruner's own groups (SMART's scores, PaS's and AWG's gates): their
  configs state SGD learning rates and momenta (``score_lr``, ``gate_lr``, ``gate_momentum``), and a
  method's own parameters keep the optimizer its config states whatever the task's recipe.

:class:`StageOptimizer` is the two as one ``torch.optim.Optimizer`` for the loops, the lr schedules
(native ``set_stage_lr``, mmengine's param schedulers) and checkpoints: ``param_groups`` are the
two optimizers' own group dicts, ``state`` reads both, ``step`` / ``state_dict`` /
``load_state_dict`` delegate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from bench.core.errors import ConfigError

STAGE_OPTIMIZERS = ("SGD", "AdamW")


class _JointState(Mapping):
    """The parts' per-parameter states, read-only, without creating entries (each part's ``state`` is
    a defaultdict: a ChainMap lookup would answer {} from the first part for the second's params)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    def __getitem__(self, param):
        for part in self.parts:
            if param in part.state:
                return part.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator:
        return (param for part in self.parts for param in part.state)

    def __len__(self) -> int:
        return sum(len(part.state) for part in self.parts)


class StageOptimizer(torch.optim.Optimizer):
    """AdamW over the weights + SGD over the pruner's groups, stepped as one optimizer."""

    def __init__(self, weights: torch.optim.Optimizer, own: torch.optim.Optimizer | None):
        self.parts = [weights] + ([own] if own is not None else [])
        # the parts' own group dicts: an lr set here (schedules) is the lr the part steps with
        super().__init__([g for part in self.parts for g in part.param_groups], {})
        # the weights' optimizer's defaults (set after init: they must not be merged into the other
        # part's groups): mmengine's OptimWrapper tracks the base lr of a multi-group optimizer from
        # ``defaults["lr"]``
        self.defaults = dict(weights.defaults)
        self.state = _JointState(self.parts)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = state_dict.get("parts")
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ValueError("optimizer state: not a StageOptimizer checkpoint of the same groups")
        for part, state in zip(self.parts, parts):
            part.load_state_dict(state)


def stage_optimizer(
    family: str,
    params: list[nn.Parameter],
    own_groups: list[dict],
    lr: float,
    momentum: float,
    weight_decay: float,
    adamw_weight_decay: float,
) -> torch.optim.Optimizer:
    """The stages' optimizer: ``family`` (``Task.stage_optimizer``) over ``params`` (the model's
    trainable weights) at peak ``lr``, the pruner's ``own_groups`` with their own lr / momentum /
    decay. Every group carries its peak ``base_lr`` (the stage schedules scale from it)."""
    if family not in STAGE_OPTIMIZERS:
        raise ConfigError("stage_optimizer", f"unknown {family!r}; allowed: {', '.join(STAGE_OPTIMIZERS)}")
    weights = {"params": list(params), "base_lr": lr}
    for g in own_groups:
        g["base_lr"] = g.get("lr", lr)
    if family == "SGD":
        return torch.optim.SGD([weights, *own_groups], lr=lr, momentum=momentum, weight_decay=weight_decay)
    adamw = torch.optim.AdamW([weights], lr=lr, weight_decay=adamw_weight_decay)
    own = torch.optim.SGD(own_groups, lr=lr, momentum=momentum, weight_decay=0.0) if own_groups else None
    return StageOptimizer(adamw, own)
