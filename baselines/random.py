"""Control: random pruning (the floor every method must beat).

``random``: every unit gets a score drawn once at ``attach`` from U(0, 1) (a generator seeded
with the run's torch seed, so reruns and DDP ranks agree and the global random stream is left
alone); the exact top-k of those scores at the target is taken at the first step of the pruning
stage and frozen, the rest of the budget is fine-tuning. With the default ``scope=global`` every
layer keeps about the target fraction of its units (a random ranking has no allocation prior);
N:M keeps N random weights per row of M.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.pruner import Progress, register_pruner
from bench.core.pruning_blocks import HardMaskPruner


@register_pruner("random")
class RandomPruner(HardMaskPruner):
    table_note = "control: random unit scores fixed at attach, exact k under the same allocation rule"
    comparable_scores = True  # learned under one global budget (or random): ranked as they are
    control = True
    transplantable = True  # one-shot: the transplant control's selection (allocation: from:RUN_ID)
    state_attrs = ("scores",)

    def attach(self, layers) -> None:
        super().attach(layers)
        generator = torch.Generator().manual_seed(torch.initial_seed())
        self.scores = {
            layer.name: torch.rand(layer.unit_shape, generator=generator).to(layer.weight.device) for layer in layers
        }

    def on_step(self, progress: Progress) -> None:
        if self.mask is None:
            self.mask = self.select(self.scores)

    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.scores)
