"""Native training loop: dense training (cached) and the prune -> finetune stages.

The trainer owns the stages and the budget; pruners only see their hooks (bench.pruner).
Checkpoints are written atomically at every epoch end, so a killed run resumes exactly
(data order depends only on (seed, epoch)).
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.masks import Masker, calibrate
from bench.pruner import Progress, Pruner
from bench.tasks.base import Task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def make_optimizer(model: nn.Module, task: Task, lr: float, extra_groups: list[dict]) -> torch.optim.Optimizer:
    b = task.budget
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}] + extra_groups
    for g in groups:
        g["base_lr"] = g.get("lr", lr)
    return torch.optim.SGD(groups, lr=lr, momentum=b.momentum, weight_decay=b.weight_decay)


def make_dense_optimizer(model: nn.Module, task: Task) -> torch.optim.Optimizer:
    """The task's dense-training optimizer (Task.dense_optimizer), peak lr Budget.lr."""
    if task.dense_optimizer == "SGD":
        return make_optimizer(model, task, task.budget.lr, [])
    if task.dense_optimizer != "AdamW":
        raise ConfigError("dense_optimizer", f"{task.name}: unknown {task.dense_optimizer!r}; allowed: SGD, AdamW")
    group = {"params": [p for p in model.parameters() if p.requires_grad], "base_lr": task.budget.lr}
    return torch.optim.AdamW([group], lr=task.budget.lr, weight_decay=task.dense_weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    for g in optimizer.param_groups:
        g["lr"] = cosine_lr(g["base_lr"], step, total)


def train_dense(task: Task, seed: int, path: Path, log: Callable[[str], None] = print) -> dict[str, Tensor]:
    """Train (or load the cached) dense model for (task, seed); returns its state_dict."""
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    seed_everything(seed)
    model = task.build_model()
    b = task.budget
    total = b.dense_epochs * task.steps_per_epoch()
    optimizer = make_dense_optimizer(model, task)
    step = 0
    model.train()
    for epoch in range(b.dense_epochs):
        for batch in task.train_batches(epoch, seed):
            set_lr(optimizer, step, total)
            loss = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        log(f"dense epoch {epoch + 1}/{b.dense_epochs} loss {loss.item():.4f}")
    state = model.state_dict()
    atomic_save(state, path)
    return state


class PruneTrainer:
    """Runs the pruning and fine-tuning stages of one run, resumable from ``checkpoint``."""

    def __init__(self, task: Task, model: nn.Module, masker: Masker, pruner: Pruner, seed: int,
                 checkpoint: Path | None = None, log: Callable[[str], None] = print):
        self.task, self.model, self.masker, self.pruner = task, model, masker, pruner
        self.seed, self.checkpoint, self.log = seed, checkpoint, log
        b = task.budget
        self.steps_per_epoch = task.steps_per_epoch()
        self.prune_steps = b.prune_epochs * self.steps_per_epoch
        self.total_steps = (b.prune_epochs + b.finetune_epochs) * self.steps_per_epoch

    def run(self) -> dict[str, Tensor]:
        """Returns the final hard unit masks (already installed in the masker)."""
        task, model, pruner = self.task, self.model, self.pruner
        b = task.budget
        calibrate(model, self.masker.layers, task.calibration_batches(), task.forward)
        pruner.attach(self.masker.layers)
        optimizer = make_optimizer(model, task, b.prune_lr, pruner.param_groups())
        start_epoch, hard = 0, None
        if self.checkpoint is not None and self.checkpoint.exists():
            start_epoch, hard = self._resume(optimizer)
        model.train()
        for epoch in range(start_epoch, b.prune_epochs + b.finetune_epochs):
            pruning = epoch < b.prune_epochs
            if not pruning and hard is None:
                hard = self._finalize()
            for i, batch in enumerate(task.train_batches(epoch, self.seed)):
                step = epoch * self.steps_per_epoch + i
                set_lr(optimizer, step, self.total_steps)
                if pruning:
                    pruner.on_step(Progress("prune", step, self.prune_steps, epoch))
                    self.masker.set_masks(pruner.masks(), straight_through=pruner.straight_through)
                loss = task.loss(model, batch)
                total = loss + pruner.penalty() if pruning else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                if pruning:
                    pruner.after_optimizer_step(optimizer)
            extras = " ".join(f"{k} {v:.4g}" for k, v in pruner.log_values().items()) if pruning else "hard mask"
            self.log(f"{'prune' if pruning else 'finetune'} epoch {epoch + 1}/{b.prune_epochs + b.finetune_epochs} "
                     f"loss {loss.item():.4f} {extras}")
            self._save(optimizer, epoch + 1, hard)
        if hard is None:  # no fine-tune epochs
            hard = self._finalize()
        return hard

    def _finalize(self) -> dict[str, Tensor]:
        hard = {name: mask.bool() for name, mask in self.pruner.finalize().items()}
        self.masker.set_masks({n: m.float() for n, m in hard.items()})
        return hard

    def _save(self, optimizer, epochs_done: int, hard) -> None:
        if self.checkpoint is None:
            return
        atomic_save({"epochs_done": epochs_done, "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                     "pruner": self.pruner.state_dict(), "hard": hard, "torch_rng": torch.get_rng_state()},
                    self.checkpoint)

    def _resume(self, optimizer) -> tuple[int, dict | None]:
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.pruner.load_state_dict(state["pruner"])
        torch.set_rng_state(state["torch_rng"])
        hard = state["hard"]
        if hard is not None:
            self.masker.set_masks({n: m.float() for n, m in hard.items()})
        self.log(f"resumed after epoch {state['epochs_done']}")
        return state["epochs_done"], hard
