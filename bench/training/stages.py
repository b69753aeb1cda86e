"""The one stage driver: prune -> finalize -> fine-tune, for every training loop.

A loop (the native one in ``bench.training.train``, mmengine's Runner through ``bench.training.mm_hook``) owns
the data, the forward/backward and the optimizer; it calls the driver at fixed points and the
driver owns everything about pruning (the mmengine pattern: the loop calls the feature, the
feature owns no loop)::

    driver.setup(calibration_batches, forward)   # calibration statistics, pruner.attach
    groups = driver.param_groups()               # the pruner's learnables, own optimizer groups
    driver.begin(steps_per_epoch)
    for epoch in ...:
        driver.start_epoch(epoch)                # the first fine-tune epoch finalizes the masks
        for step in ...:
            driver.before_forward(step, epoch)   # pruning: on_step, then soft/hard masks installed
            loss = task_loss + driver.penalty()  # 0 outside the pruning stage
            backward; optimizer.step()
            driver.after_optimizer_step(optimizer)
        log(driver.epoch_line(epoch, loss))
        checkpoint["smartbench"] = driver.state_dict()
    hard = driver.finish()                       # finalizes if there were no fine-tune epochs

Checkpoint state (``state_dict`` / ``load_state_dict``): the pruner's state and the hard masks
once they exist; restoring hard masks reinstalls them and ends the pruning stage.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.device import flush_denormals
from bench.core.masks import Masker, calibrate
from bench.core.pruner import Progress, Pruner
from bench.core.schedules import prune_lr_sum
from bench.core.syncs import may_read


class StageDriver:
    """Drives one pruner through ``prune_epochs`` of pruning and ``finetune_epochs`` of fine-tuning."""

    def __init__(
        self,
        pruner: Pruner,
        masker: Masker,
        prune_epochs: int,
        finetune_epochs: int,
        log: Callable[[str], None] = print,
        evaluate: Callable[[], Any] | None = None,
        budget=None,
    ):
        self.pruner, self.masker, self.log = pruner, masker, log
        self.prune_epochs, self.finetune_epochs = prune_epochs, finetune_epochs
        self.budget = budget  # the task's Budget (its lr schedule); None: a user's own loop (bench.api)
        self.prune_steps = 0  # set by begin()
        self.lr_sum: float | None = None  # set by begin() when the budget is known
        self.hard: dict[str, Tensor] | None = None
        self.pruning = True
        self.evaluate = evaluate  # called once, right after the hard switch (before fine-tuning)
        self.before_finetune: Any = None  # what it returned

    @property
    def epochs(self) -> int:
        return self.prune_epochs + self.finetune_epochs

    # -- before training ----------------------------------------------------------------------
    def setup(self, calibration_batches, forward: Callable[[nn.Module, Any], Any]) -> None:
        """Calibration statistics on the (dense) model, then ``pruner.attach``. Subnormal floats
        are flushed to zero from here on (:func:`bench.core.device.flush_denormals`)."""
        flush_denormals()
        calibrate(self.masker.model, self.masker.layers, calibration_batches, forward)
        self.pruner.attach(self.masker.layers)

    def param_groups(self) -> list[dict]:
        return self.pruner.param_groups()

    def begin(self, steps_per_epoch: int) -> None:
        """Called by the loop once it knows its epoch length (before the first step)."""
        self.prune_steps = self.prune_epochs * steps_per_epoch
        b = self.budget
        if b is not None:
            total = self.epochs * steps_per_epoch
            self.lr_sum = prune_lr_sum(b.prune_lr, self.prune_steps, total, b.finetune_schedule)

    # -- the loop's call points -------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.pruning = epoch < self.prune_epochs
        if not self.pruning and self.hard is None:
            self._finalize()

    def before_forward(self, step: int, epoch: int) -> None:
        """``step``: optimizer steps done since the pruning stage began."""
        if self.pruning:
            self.pruner.on_step(Progress("prune", step, self.prune_steps, epoch, self.lr_sum))
            self.masker.set_masks(
                self.pruner.masks(),
                straight_through=self.pruner.straight_through,
                affine_only=self.pruner.gates_see_activation,
            )

    def penalty(self) -> Tensor | float:
        return self.pruner.penalty() if self.pruning else 0.0

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.pruning:
            self.pruner.after_optimizer_step(optimizer)
        else:
            self.masker.rezero()  # held hard masks (accelerator path): the zeros the step moved

    def epoch_line(self, epoch: int, loss: float) -> str:
        extras = " ".join(f"{k} {v:.4g}" for k, v in self.pruner.log_values().items()) if self.pruning else "hard mask"
        return f"{'prune' if self.pruning else 'finetune'} epoch {epoch + 1}/{self.epochs} loss {loss:.4f} {extras}"

    def finish(self) -> dict[str, Tensor]:
        """The final hard unit masks (installed in the masker)."""
        if self.hard is None:  # no fine-tune epochs
            self._finalize()
        return self.hard

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict(), "hard": self.hard, "before_finetune": self.before_finetune}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state["pruner"])
        self.hard = state["hard"]
        self.before_finetune = state.get("before_finetune")  # absent from older checkpoints
        if self.hard is not None:
            self.pruning = False
            self._install_hard()

    def _install_hard(self) -> None:
        """The hard masks for fine-tuning: parametrized on the CPU (bit for bit what every committed
        row ran), held in the weights on an accelerator (``Masker.hold``: no per-layer mask product in
        a step, the zeros restored after every optimizer step; the same kept weights)."""
        masks = {n: m.float() for n, m in self.hard.items()}
        if not self.masker.layers or may_read(self.masker.layers[0].weight):
            self.masker.set_masks(masks)
        else:
            self.masker.hold(masks)

    def _finalize(self) -> None:
        self.hard = {name: mask.bool() for name, mask in self.pruner.finalize().items()}
        self._install_hard()
        self.pruning = False
        if self.evaluate is not None and self.finetune_epochs > 0:  # without fine-tuning: the final metric
            with preserved_rng():  # an evaluation must not change what training draws next
                self.before_finetune = self.evaluate()


@contextlib.contextmanager
def preserved_rng():
    """Restore Python's, numpy's and torch's global random states on exit (data loaders built for
    an evaluation may draw from them, e.g. mmengine's sampler seed)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
