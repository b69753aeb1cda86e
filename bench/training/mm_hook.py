"""Pruning inside mmengine's Runner: a thin hook around the shared stage driver.

The Runner is the loop; :class:`bench.training.stages.StageDriver` (the same object the native loop
``bench.training.train.PruneTrainer`` calls) owns the stages, the masks and their checkpoint state.

- :class:`PruningHook` (registered in mmengine's ``HOOKS``) forwards the Runner's call points to
  the driver: ``before_train_epoch`` -> ``start_epoch`` (the first fine-tune epoch finalizes the
  hard masks), ``before_train_iter`` -> ``before_forward`` (``pruner.on_step`` and the masks),
  ``after_train_epoch`` -> the epoch's log line, and the driver's state travels in mmengine
  checkpoints (``before_save_checkpoint`` / ``after_load_checkpoint``).
- :class:`PenaltyOptimWrapper` (registered in ``OPTIM_WRAPPERS``) is the optimizer wrapper the
  Runner steps: it adds ``driver.penalty()`` to the model loss before the backward pass and calls
  ``driver.after_optimizer_step(optimizer)`` right after every ``optimizer.step()``.
- :meth:`PruningHook.optim_wrapper` builds the stages' optimizer (the task's recipe family,
  bench.training.optim) with the pruner's
  ``param_groups()`` as their own groups *before* the Runner is built, because mmengine builds
  its LR schedulers from the optimizer's groups before any hook runs; this way the pruner's
  groups follow the same cosine schedule as the weights, as in the native loop. A ``restart``
  budget (``Budget.finetune_schedule``) has no mmengine scheduler: the hook sets the lr of every
  group before each iteration with the native loop's ``set_stage_lr``.

Resuming uses torch's ``weights_only=True`` loader: :func:`allow_mmengine_checkpoints` allow-lists
the few non-tensor classes mmengine writes into its checkpoints (``HistoryBuffer`` and numpy
scalars/arrays of its message hub).
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, OPTIM_WRAPPERS
from torch import Tensor, nn

from bench.core.artifacts import CorruptArtifact, load_artifact
from bench.core.device import autocast
from bench.training.stages import StageDriver
from bench.training.train import make_optimizer, set_stage_lr

CHECKPOINT_KEY = "smartbench"


PLAIN_HISTORY = "smartbench_history_buffer"
RNG_KEY = "smartbench_torch_rng"


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
    return {
        PLAIN_HISTORY: True,
        "max_length": int(buffer.max_length),
        "log_history": torch.from_numpy(np.asarray(logs, dtype=np.float64)),
        "count_history": torch.from_numpy(np.asarray(counts, dtype=np.float64)),
    }


@OPTIM_WRAPPERS.register_module()
class PenaltyOptimWrapper(OptimWrapper):
    """OptimWrapper that adds ``extra_loss()`` to the loss and calls ``after_step(optimizer)``;
    with ``autocast_device`` ("cuda:0", "cpu") the forward pass autocasts to bf16 (``--amp``: no
    loss scaling needed in bf16, so it works on the CPU too, unlike mmengine's AmpOptimWrapper)."""

    def __init__(self, *args, autocast_device: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_loss: Callable[[], Tensor | float] | None = None
        self.after_step: Callable[[torch.optim.Optimizer], None] | None = None
        self.autocast_device = autocast_device

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module):
        amp = self.autocast_device is not None
        with super().optim_context(model), autocast(torch.device(self.autocast_device or "cpu"), amp):
            yield

    def update_params(self, loss: Tensor, step_kwargs=None, zero_kwargs=None) -> None:
        if self.extra_loss is not None:
            loss = loss + self.extra_loss()
        super().update_params(loss, step_kwargs, zero_kwargs)

    def step(self, **kwargs) -> None:
        super().step(**kwargs)
        if self.after_step is not None:
            self.after_step(self.optimizer)


def rng_states() -> dict[str, Tensor]:
    """Every global random state training draws from -- torch (dropout), CUDA, numpy and Python
    (mm data pipelines: RandomFlip...) -- as tensors, so a weights-only load reads them back."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_meta": torch.tensor([position, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor(gauss, dtype=torch.float64),
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if gauss_next is None else gauss_next, dtype=torch.float64),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict[str, Tensor]) -> None:
    """Restore what ``rng_states`` saved (the CUDA state only where CUDA is present)."""
    torch.set_rng_state(states["torch"])
    position, has_gauss = (int(v) for v in states["numpy_meta"])
    keys = states["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, position, has_gauss, float(states["numpy_gauss"])))
    python = [int(v) for v in states["python"]]
    gauss_next = float(states["python_gauss"])
    random.setstate((python[0], tuple(python[1:]), None if math.isnan(gauss_next) else gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Checkpoints that ``torch.load(weights_only=True)`` reads back and that resume exactly:
    message-hub histories are stored as plain tensors (``plain_history``) and rebuilt on load; the
    global random states (dropout, data augmentation; mmengine only re-seeds) are saved and
    restored (``rng_states``); a resume is logged."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        allow_mmengine_checkpoints()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_states()
        scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
        for key, buffer in scalars.items():
            if isinstance(buffer, HistoryBuffer):
                scalars[key] = plain_history(buffer)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
        for key, value in scalars.items():
            if isinstance(value, dict) and PLAIN_HISTORY in value:
                scalars[key] = HistoryBuffer(
                    value["log_history"].numpy(), value["count_history"].numpy(), value["max_length"]
                )
        if RNG_KEY in checkpoint:  # absent from checkpoints written before it was saved
            set_rng_states(checkpoint[RNG_KEY])
        self.log(f"resumed after epoch {checkpoint['meta']['epoch']}")


@HOOKS.register_module()
class PruningHook(SafeCheckpointHook):
    """Calls the stage driver at the Runner's call points (pruning, then fine-tuning with hard masks)."""

    priority = "VERY_HIGH"  # masks must be in place before anything else looks at the model

    def __init__(self, driver: StageDriver, budget=None):
        # budget: a Budget whose finetune_schedule is not "shared" -- the hook then sets every group's
        # lr before each iteration with the native loop's bench.training.train.set_stage_lr (no
        # mmengine param scheduler); None: the Runner's own scheduler ("shared", one cosine)
        super().__init__(driver.log)
        self.driver, self.budget = driver, budget
        self._last_loss: float = float("nan")

    def optim_wrapper(
        self,
        model: nn.Module,
        task,
        clip_grad: dict | None = None,
        autocast_device: str | None = None,
    ) -> PenaltyOptimWrapper:
        """The native loop's stages' optimizer (``bench.training.train.make_optimizer``: the task's
        recipe family over the model's trainable weights at ``Budget.prune_lr``, plus the pruner's
        own groups), every group with its peak ``base_lr`` (set_stage_lr scales from it)."""
        optimizer = make_optimizer(model, task, task.budget.prune_lr, self.driver.param_groups())
        wrapper = PenaltyOptimWrapper(optimizer, clip_grad=clip_grad, autocast_device=autocast_device)
        wrapper.extra_loss = self.driver.penalty
        wrapper.after_step = self.driver.after_optimizer_step
        return wrapper

    # -- mmengine hooks ---------------------------------------------------------------------
    def before_train(self, runner) -> None:
        self.driver.begin(len(runner.train_dataloader))

    def before_train_epoch(self, runner) -> None:
        self.driver.start_epoch(runner.epoch)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.budget is not None:
            total = self.driver.epochs * len(runner.train_dataloader)
            set_stage_lr(runner.optim_wrapper.optimizer, runner.iter, self.driver.prune_steps, total, self.budget)
        self.driver.before_forward(runner.iter, runner.epoch)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            self._last_loss = float(outputs["loss"].detach())

    def after_train_epoch(self, runner) -> None:
        self.driver.log(self.driver.epoch_line(runner.epoch, self._last_loss))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.driver.state_dict()
        super().before_save_checkpoint(runner, checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            self.driver.load_state_dict(state)
        super().after_load_checkpoint(runner, checkpoint)


def discard_unreadable_checkpoint(work_dir: Path, log: Callable[[str], None]) -> None:
    """Before a resuming Runner starts: an unreadable last checkpoint is deleted with its work dir
    (the run restarts from the dense model) instead of ending the run in a loader traceback."""
    pointer = work_dir / "last_checkpoint"
    if not pointer.exists():
        return
    path = Path(pointer.read_text().strip())
    allow_mmengine_checkpoints()
    try:
        load_artifact(path, "resume checkpoint")
    except (CorruptArtifact, FileNotFoundError) as err:
        log(f"warning: {err}; deleted {work_dir}, restarting the pruning stages")
        shutil.rmtree(work_dir, ignore_errors=True)


@HOOKS.register_module()
class EpochLogHook(Hook):
    """One log line per epoch (mmengine's own logger runs at ERROR level in our Runners), then
    ``on_epoch(epochs_done)`` when given."""

    def __init__(
        self, log: Callable[[str], None], stage: str, epochs: int, on_epoch: Callable[[int], None] | None = None
    ):
        self.log, self.stage, self.epochs, self.on_epoch = log, stage, epochs, on_epoch
        self.loss = float("nan")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            self.loss = float(outputs["loss"].detach())

    def after_train_epoch(self, runner) -> None:
        self.log(f"{self.stage} epoch {runner.epoch + 1}/{self.epochs} loss {self.loss:.4f}")
        if self.on_epoch is not None:
            self.on_epoch(runner.epoch + 1)
