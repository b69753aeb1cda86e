"""Pruning inside mmengine's Runner: the same pruner object and hooks as ``bench.train.PruneTrainer``.

Pieces (all generic: they only use the ``bench.pruner.Pruner`` interface):

- :class:`PruningHook` (registered in mmengine's ``HOOKS``) drives the stages. Per iteration of
  the pruning stage (``before_train_iter``): ``pruner.on_step(Progress("prune", ...))`` then
  ``masker.set_masks(pruner.masks(), straight_through=...)`` before the forward. At the first
  fine-tune epoch (``before_train_epoch``) ``pruner.finalize()`` gives the exact hard masks, which
  stay installed for the rest of training. Pruner state, hard masks and the stage travel in
  mmengine checkpoints (``before_save_checkpoint`` / ``after_load_checkpoint``).
- :class:`PenaltyOptimWrapper` (registered in ``OPTIM_WRAPPERS``) is the optimizer wrapper the
  Runner steps: it adds ``pruner.penalty()`` to the model loss before the backward pass and calls
  ``pruner.after_optimizer_step(optimizer)`` right after every ``optimizer.step()``.
- :meth:`PruningHook.setup` runs calibration and ``pruner.attach`` and
  :meth:`PruningHook.optim_wrapper` builds the SGD optimizer with the pruner's
  ``param_groups()`` as their own groups. Both run *before* the Runner is built, because mmengine
  builds its LR schedulers from the optimizer's groups before any hook runs; this way the
  pruner's groups follow the same cosine schedule as the weights, as in the native loop.

Resuming uses torch's ``weights_only=True`` loader: :func:`allow_mmengine_checkpoints` allow-lists
the few non-tensor classes mmengine writes into its checkpoints (``HistoryBuffer`` and numpy
scalars/arrays of its message hub).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, OPTIM_WRAPPERS
from torch import Tensor, nn

from bench.masks import Masker, calibrate
from bench.pruner import Progress, Pruner

CHECKPOINT_KEY = "smartbench"


PLAIN_HISTORY = "smartbench_history_buffer"


def allow_mmengine_checkpoints() -> None:
    """Allow-list what mmengine stores besides tensors, for ``torch.load(weights_only=True)``.

    That is numpy arrays and scalars (message-hub values) and ``HistoryBuffer``. A pickled
    ``HistoryBuffer`` also holds bound methods, which unpickle through ``builtins.getattr``: that one is
    never allow-listed; :class:`PruningHook` stores message-hub histories as plain tensors instead.
    """
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numpy_types = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    numpy_types += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals([HistoryBuffer, *numpy_types])


def plain_history(buffer: HistoryBuffer) -> dict:
    """A HistoryBuffer as tensors (its pickle would need ``builtins.getattr``)."""
    logs, counts = buffer.data
    return {PLAIN_HISTORY: True, "max_length": int(buffer.max_length),
            "log_history": torch.from_numpy(np.asarray(logs, dtype=np.float64)),
            "count_history": torch.from_numpy(np.asarray(counts, dtype=np.float64))}


@OPTIM_WRAPPERS.register_module()
class PenaltyOptimWrapper(OptimWrapper):
    """OptimWrapper that adds ``extra_loss()`` to the loss and calls ``after_step(optimizer)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_loss: Callable[[], Tensor | float] | None = None
        self.after_step: Callable[[torch.optim.Optimizer], None] | None = None

    def update_params(self, loss: Tensor, step_kwargs=None, zero_kwargs=None) -> None:
        if self.extra_loss is not None:
            loss = loss + self.extra_loss()
        super().update_params(loss, step_kwargs, zero_kwargs)

    def step(self, **kwargs) -> None:
        super().step(**kwargs)
        if self.after_step is not None:
            self.after_step(self.optimizer)


@HOOKS.register_module()
class PruningHook(Hook):
    """Runs the pruning stage (``prune_epochs``) then fine-tuning with frozen hard masks."""

    priority = "VERY_HIGH"  # masks must be in place before anything else looks at the model

    def __init__(self, pruner: Pruner, masker: Masker, prune_epochs: int, finetune_epochs: int,
                 log: Callable[[str], None] = print):
        self.pruner, self.masker = pruner, masker
        self.prune_epochs, self.finetune_epochs = prune_epochs, finetune_epochs
        self.log = log
        self.hard: dict[str, Tensor] | None = None
        self.prune_steps = 0
        self.pruning = True
        self._last_loss: float = float("nan")
        allow_mmengine_checkpoints()

    # -- set-up before the Runner exists --------------------------------------------------
    def setup(self, calibration_batches, forward: Callable[[nn.Module, object], object]) -> None:
        """Calibration statistics on the (dense) model, then ``pruner.attach``."""
        calibrate(self.masker.model, self.masker.layers, calibration_batches, forward)
        self.pruner.attach(self.masker.layers)

    def optim_wrapper(self, model: nn.Module, lr: float, momentum: float, weight_decay: float,
                      clip_grad: dict | None = None) -> PenaltyOptimWrapper:
        """SGD over the model's trainable parameters plus the pruner's own groups."""
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}] + self.pruner.param_groups()
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        wrapper = PenaltyOptimWrapper(optimizer, clip_grad=clip_grad)
        wrapper.extra_loss = self._penalty
        wrapper.after_step = self._after_optimizer_step
        return wrapper

    # -- mmengine hooks ---------------------------------------------------------------------
    def before_train(self, runner) -> None:
        self.prune_steps = self.prune_epochs * len(runner.train_dataloader)

    def before_train_epoch(self, runner) -> None:
        self.pruning = runner.epoch < self.prune_epochs
        if not self.pruning and self.hard is None:
            self._finalize()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.pruning:
            return
        self.pruner.on_step(Progress("prune", runner.iter, self.prune_steps, runner.epoch))
        self.masker.set_masks(self.pruner.masks(), straight_through=self.pruner.straight_through)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            self._last_loss = float(outputs["loss"].detach())

    def after_train_epoch(self, runner) -> None:
        total = self.prune_epochs + self.finetune_epochs
        extras = " ".join(f"{k} {v:.4g}" for k, v in self.pruner.log_values().items()) if self.pruning else "hard mask"
        self.log(f"{'prune' if self.pruning else 'finetune'} epoch {runner.epoch + 1}/{total} "
                 f"loss {self._last_loss:.4f} {extras}")

    def after_train(self, runner) -> None:
        if self.hard is None:  # no fine-tune epochs
            self._finalize()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {"pruner": self.pruner.state_dict(), "hard": self.hard}
        scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
        for key, buffer in scalars.items():
            if isinstance(buffer, HistoryBuffer):
                scalars[key] = plain_history(buffer)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
        for key, value in scalars.items():
            if isinstance(value, dict) and PLAIN_HISTORY in value:
                scalars[key] = HistoryBuffer(value["log_history"].numpy(), value["count_history"].numpy(),
                                             value["max_length"])
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        self.pruner.load_state_dict(state["pruner"])
        self.hard = state["hard"]
        if self.hard is not None:
            self.pruning = False
            self.masker.set_masks({n: m.float() for n, m in self.hard.items()})
        self.log(f"resumed after epoch {checkpoint['meta']['epoch']}")

    # -- called by PenaltyOptimWrapper ------------------------------------------------------
    def _penalty(self) -> Tensor | float:
        if not self.pruning:
            return 0.0
        return self.pruner.penalty()

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.pruning:
            self.pruner.after_optimizer_step(optimizer)

    def _finalize(self) -> None:
        self.hard = {name: mask.bool() for name, mask in self.pruner.finalize().items()}
        self.masker.set_masks({n: m.float() for n, m in self.hard.items()})
        self.pruning = False


@HOOKS.register_module()
class EpochLogHook(Hook):
    """One log line per epoch (mmengine's own logger runs at ERROR level in our Runners)."""

    def __init__(self, log: Callable[[str], None], stage: str, epochs: int):
        self.log, self.stage, self.epochs = log, stage, epochs
        self.loss = float("nan")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            self.loss = float(outputs["loss"].detach())

    def after_train_epoch(self, runner) -> None:
        self.log(f"{self.stage} epoch {runner.epoch + 1}/{self.epochs} loss {self.loss:.4f}")
