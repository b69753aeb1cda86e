"""Control: the width-scaled dense model, trained from scratch for the same total epochs.

``scratch`` answers "is pruning a trained model worth more than training the small model
directly?" (Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019: "scratch-B"). Every
covered layer keeps the same fraction of its output channels -- the count uniform allocation
gives at the column's sparsity, its floor included -- so the model is the dense architecture
uniformly narrowed, at the MACs of a uniform-allocation pruned model of the column. It never sees
the dense checkpoint: the run pipeline (bench.runs.run, ``trains_from_scratch``) re-initialises
the model with the run's seed, installs these masks, and trains it with the task's *dense*
recipe (optimizer, peak lr, one cosine, warm-up, clipping) for ``dense + prune`` epochs, then
runs the fine-tuning stage every label runs (the stages' optimizer and schedule, its peak
``finetune_lr`` = the cell's retraining lr multiplier x ``prune_lr``, which ``smartbench tune``
searches as for every pruner): the epochs a pruned row has seen in all, and the lr multiplier
scales the same stage for every label (protocol v3, issue 32 item 3). Channel patterns only (a
width multiplier has no meaning for blocks, single weights or N:M rows).

``method_version`` 2 (2026-12-07): version 1 (leaderboard v2's and protocol-v3-check's rows) ran
one dense-recipe cosine over all ``dense + prune + finetune`` epochs at the dense peak lr times the
multiplier, so its multiplier scaled every epoch while a pruner's scaled only its fine-tuning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.pruner import ALL_PATTERNS, Pruner, every_unit_kept, register_pruner
from bench.core.select import Allocation


@register_pruner("scratch")
class ScratchControl(Pruner):
    table_note = "control: every layer narrowed uniformly, trained from scratch with the dense recipe for dense + prune epochs, then fine-tuned as every row"
    patterns = ("channel",)
    control = True
    trains_from_scratch = True
    method_version = 2  # v1: one cosine over every epoch, the lr multiplier on all of them (module docstring)
    earlier_table_notes = {
        1: "control: every layer narrowed uniformly, trained from scratch with the dense recipe for dense + prune + fine-tune epochs"
    }

    def method_version_for(self, budget) -> int:
        """Version 1 under ``scratch_recipe: single`` (leaderboard v2's recipe, still run), else 2."""
        return 1 if budget is not None and budget.scratch_recipe == "single" else self.method_version

    def finalize(self) -> dict[str, Tensor]:
        """The first k output channels of every layer, k = uniform allocation's count at the target
        (never below the column's floor): a narrower layer, whichever channels, from scratch."""
        floor = self.allocation.floor if self.allocation is not None else 0.0
        rule = Allocation("uniform", floor)
        masks = {}
        for layer in self.layers:
            units = layer.num_units
            mask = torch.zeros(units, dtype=torch.bool, device=layer.weight.device)
            mask[: rule.layer_keep(units, self.sparsity)] = True
            masks[layer.name] = mask.reshape(layer.unit_shape)
        return masks

    def masks(self) -> dict[str, Tensor] | None:
        return {name: mask.float() for name, mask in self.finalize().items()}


@register_pruner("scratch-full")
class FullWidthScratchControl(ScratchControl):
    """Control: the full-width dense model trained from scratch with the scratch recipe -- the
    scratch control at sparsity 0, the ceiling a ``scratch`` row is read against.

    ``scratch`` trains a narrowed model for ``dense + prune + finetune`` epochs, more than the dense
    reference saw; where it beats ``nomask`` (the dense checkpoint trained on for prune + finetune
    epochs) the question is whether narrowing helped or the longer from-scratch recipe did. This
    row answers it: the same recipe (the dense recipe from the run's seed's initialisation for the
    dense + prune epochs, then every label's fine-tuning stage at the cell's retraining lr) on the
    unpruned model. Like ``nomask`` it keeps every unit (``keeps_all``): one run per (task, budget,
    seed) fills every column, any pattern."""

    table_note = "control: the full-width model trained from scratch with the scratch recipe (dense recipe for dense + prune epochs, then fine-tuned as every row; one run per task and seed, shown in every column)"
    earlier_table_notes = {
        1: "control: the full-width model trained from scratch with the scratch recipe (dense + prune + fine-tune epochs; one run per task and seed, shown in every column)"
    }
    patterns = ALL_PATTERNS
    keeps_all = True

    def finalize(self) -> dict[str, Tensor]:
        return every_unit_kept(self.layers)
