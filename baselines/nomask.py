"""Control: the dense model trained on for the same epochs with the same recipe, no mask.

``nomask`` never masks anything: the run is the cell's dense checkpoint trained for the cell's
``prune_epochs + finetune_epochs`` with the pruning-stage optimizer and schedule every pruner
gets, then evaluated like every row. It answers "how much of a pruner's number is the extra
training?" -- the v1 "dense" row was the checkpoint itself, while every pruned row had trained
3-5 epochs more (on the under-trained ViT every 2:4 pruner landed above it).

``finalize`` keeps every unit (``keeps_all = True``): the row's achieved sparsity is 0, tables
show it as a reference row (no best mark, no sparsity mark) and the conformance kit checks that
it keeps everything instead of the target count. The pattern and sparsity of the cell only name
the column it is compared in; they are not used, and the run id leaves them out (with the
allocation): one run per (task, budget, seed) fills every column of a suite, and its row records
the column it happened to run under (tests/test_suite.py checks that the numbers are the same
bit for bit under two different columns).
"""

from __future__ import annotations

from torch import Tensor

from bench.core.pruner import Pruner, every_unit_kept, register_pruner


@register_pruner("nomask")
class NoMaskControl(Pruner):
    table_note = "control: the dense model trained on for the same prune + fine-tune epochs and recipe, no mask (one run per task and seed, shown in every column)"
    control = True
    keeps_all = True

    def finalize(self) -> dict[str, Tensor]:
        return every_unit_kept(self.layers)
