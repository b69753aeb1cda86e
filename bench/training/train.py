"""Native training loop: dense training (cached) and the prune -> finetune stages.

The loop trains on ``task.device`` (the model is moved there; tasks move each batch to the
model's device) with bf16 autocast of the loss when ``task.amp``, and through ``torch.compile`` of
the model when ``task.compile`` (``Task.training_model``; evaluation stays eager). The loop owns data, optimizer and schedule; everything about pruning is the stage driver's
(bench.training.stages.StageDriver), which the mmengine path calls the same way. Checkpoints are written
atomically at every epoch end, so a killed run resumes exactly (data order depends only on
(seed, epoch)); an unreadable dense or resume checkpoint is deleted and rebuilt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.artifacts import atomic_save, load_or_discard
from bench.core.device import autocast
from bench.core.errors import ConfigError
from bench.core.schedules import cosine_lr, stage_lr
from bench.tasks.base import DenseModel, Task
from bench.training.optim import stage_optimizer
from bench.training.stages import StageDriver

__all__ = ["PruneTrainer", "atomic_save", "cpu_state", "fit_dense", "seed_everything", "train_dense"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state_dict with every tensor on the CPU (what caches and rows hold, so a
    checkpoint written on a GPU loads on a CPU-only machine)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def make_optimizer(model: nn.Module, task: Task, lr: float, extra_groups: list[dict]) -> torch.optim.Optimizer:
    """The pruning and fine-tuning stages' optimizer: the task's recipe family over the model's
    weights at peak ``lr``, the pruner's groups ``extra_groups`` (bench.training.optim)."""
    b = task.budget
    weights = [p for p in model.parameters() if p.requires_grad]
    return stage_optimizer(
        task.stage_optimizer, weights, extra_groups, lr, b.momentum, b.weight_decay, task.dense_weight_decay
    )


def make_dense_optimizer(model: nn.Module, task: Task, lr: float | None = None) -> torch.optim.Optimizer:
    """The task's dense-training optimizer (Task.dense_optimizer), peak lr ``lr`` (default Budget.lr)."""
    lr = task.budget.lr if lr is None else lr
    if task.dense_optimizer == "SGD":
        b = task.budget
        group = {"params": [p for p in model.parameters() if p.requires_grad], "base_lr": lr}
        return torch.optim.SGD([group], lr=lr, momentum=b.momentum, weight_decay=b.weight_decay)
    if task.dense_optimizer != "AdamW":
        raise ConfigError("dense_optimizer", f"{task.name}: unknown {task.dense_optimizer!r}; allowed: SGD, AdamW")
    group = {"params": [p for p in model.parameters() if p.requires_grad], "base_lr": lr}
    return torch.optim.AdamW([group], lr=lr, weight_decay=task.dense_weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    for g in optimizer.param_groups:
        g["lr"] = cosine_lr(g["base_lr"], step, total)


def set_stage_lr(optimizer: torch.optim.Optimizer, step: int, prune_steps: int, total: int, budget) -> None:
    """The lr of the pruning + fine-tuning stages at ``step`` (Budget.finetune_schedule, see
    bench.core.schedules.stage_lr): every group from its own peak ``base_lr``."""
    scale = (budget.finetune_lr or budget.prune_lr) / budget.prune_lr
    for g in optimizer.param_groups:
        g["lr"] = stage_lr(g["base_lr"], step, prune_steps, total, budget.finetune_schedule, scale)


def train_dense(task: Task, seed: int, path: Path, log: Callable[[str], None] = print) -> DenseModel:
    """Train (or load the cached) dense model for (task, seed); the cache holds its state_dict.
    Training writes an epoch checkpoint beside the cache (``<cache>.resume``, removed once the cache
    is written), so a killed or requeued job resumes the dense stage from its last finished epoch."""
    cached = load_or_discard(path, "dense checkpoint", log)
    if cached is not None:
        return DenseModel(cached)
    seed_everything(seed)
    model = task.build_model().to(task.device)
    resume = path.with_name(path.name + ".resume")
    fit_dense(task, model, task.budget.dense_epochs, seed, log, checkpoint=resume)
    state = cpu_state(model)
    atomic_save(state, path)
    resume.unlink(missing_ok=True)
    return DenseModel(state)


def fit_dense(
    task: Task,
    model: nn.Module,
    epochs: int,
    seed: int,
    log: Callable[[str], None] = print,
    lr: float | None = None,
    checkpoint: Path | None = None,
    stage: str = "dense",
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train ``model`` (on ``task.device``) with the task's dense recipe -- its optimizer, peak ``lr``
    (default Budget.lr), one cosine over ``epochs`` -- resumable from ``checkpoint`` (written at
    every epoch end) when given. Masks installed in the model (a Masker's parametrizations) stay
    applied: the from-scratch control trains its narrow model this way (bench.runs.run).
    ``on_epoch(epochs_done)`` is called after every epoch (scripts/dense_plateau.py evaluates there)."""
    total = epochs * task.steps_per_epoch()
    optimizer = make_dense_optimizer(model, task, lr)
    start = 0
    state = None if checkpoint is None else load_or_discard(checkpoint, "resume checkpoint", log)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["epochs_done"]
        log(f"resumed after epoch {start}")
    step = start * task.steps_per_epoch()
    model.train()
    net = task.training_model(model)  # the model, or its torch.compile wrapper (Task.compile)
    for epoch in range(start, epochs):
        for batch in task.train_batches(epoch, seed):
            loss = dense_step(task, optimizer, lambda batch=batch: task.loss(net, batch), step, total)
            step += 1
        log(f"{stage} epoch {epoch + 1}/{epochs} loss {loss.item():.4f}")
        if on_epoch is not None:
            on_epoch(epoch + 1)
            model.train()
        if checkpoint is not None:
            atomic_save(
                {
                    "epochs_done": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                checkpoint,
            )


def dense_step(task: Task, optimizer, loss_of: Callable[[], Tensor], step: int, total: int) -> Tensor:
    """One optimizer step of the dense recipe (``fit_dense``; ``suite plan --estimate`` times it):
    the cosine lr of ``step`` of ``total``, ``loss_of()`` under the task's autocast, backward, step."""
    set_lr(optimizer, step, total)
    with autocast(task.device, task.amp):
        loss = loss_of()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def stage_step(
    task: Task, driver, optimizer, loss_of: Callable[[], Tensor], step: int, epoch: int, total: int
) -> Tensor:
    """One optimizer step of the pruning / fine-tuning stages (``PruneTrainer.run``; ``suite plan
    --estimate`` times it): the stage lr, the driver's ``before_forward``, the task loss plus the
    pruner's penalty while pruning, backward, step, the driver's ``after_optimizer_step``. Returns
    the task loss (without the penalty)."""
    set_stage_lr(optimizer, step, driver.prune_steps, total, task.budget)
    driver.before_forward(step, epoch)
    with autocast(task.device, task.amp):
        loss = loss_of()
    objective = loss + driver.penalty() if driver.pruning else loss
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()
    driver.after_optimizer_step(optimizer)
    return loss


class PruneTrainer:
    """The native loop of the pruning and fine-tuning stages, resumable from ``checkpoint``.

    ``model`` is already on ``task.device`` (moved before the pruner attached)."""

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        driver: StageDriver,
        seed: int,
        checkpoint: Path | None = None,
        log: Callable[[str], None] = print,
    ):
        self.task, self.model, self.driver = task, model, driver
        self.seed, self.checkpoint, self.log = seed, checkpoint, log
        self.steps_per_epoch = task.steps_per_epoch()
        self.total_steps = driver.epochs * self.steps_per_epoch

    def run(self) -> dict[str, Tensor]:
        """Returns the final hard unit masks (already installed in the masker)."""
        task, model, driver = self.task, self.model, self.driver
        optimizer = make_optimizer(model, task, task.budget.prune_lr, driver.param_groups())
        driver.begin(self.steps_per_epoch)
        start_epoch = self._resume(optimizer)
        model.train()
        net = task.training_model(model)  # the model, or its torch.compile wrapper (Task.compile)
        for epoch in range(start_epoch, driver.epochs):
            driver.start_epoch(epoch)
            for i, batch in enumerate(task.train_batches(epoch, self.seed)):
                step = epoch * self.steps_per_epoch + i
                loss = stage_step(
                    task, driver, optimizer, lambda batch=batch: task.loss(net, batch), step, epoch, self.total_steps
                )
            self.log(driver.epoch_line(epoch, loss.item()))
            self._save(optimizer, epoch + 1)
        return driver.finish()

    def _save(self, optimizer, epochs_done: int) -> None:
        if self.checkpoint is None:
            return
        atomic_save(
            {
                "epochs_done": epochs_done,
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                **self.driver.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.task.device.type == "cuda" else None,
            },
            self.checkpoint,
        )

    def _resume(self, optimizer) -> int:
        """Epochs already done (0 without a readable checkpoint)."""
        state = None if self.checkpoint is None else load_or_discard(self.checkpoint, "resume checkpoint", self.log)
        if state is None:
            return 0
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.driver.load_state_dict(state)
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.task.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.log(f"resumed after epoch {state['epochs_done']}")
        return state["epochs_done"]
