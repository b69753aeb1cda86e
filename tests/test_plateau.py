"""The dense loops' per-epoch callback that scripts/dense_plateau.py measures plateaus with."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_native_fit_dense_calls_on_epoch_after_each_epoch_and_trains_on_in_train_mode():
    from bench.tasks.registry import get_task
    from bench.training.train import fit_dense, seed_everything

    task = get_task("fmnist-tiny")
    seed_everything(0)
    model = task.build_model()
    seen = []

    def on_epoch(done):
        model.eval()  # what an evaluation does; the loop must put the model back in train mode
        seen.append(done)

    fit_dense(task, model, 2, 0, lambda line: None, on_epoch=on_epoch)
    assert seen == [1, 2] and model.training


def test_mm_epoch_hook_calls_on_epoch_with_the_epochs_done():
    pytest.importorskip("mmengine")
    from bench.training.mm_hook import EpochLogHook

    seen, lines = [], []
    hook = EpochLogHook(lines.append, "dense", 3, seen.append)
    for epoch in range(3):
        hook.after_train_epoch(SimpleNamespace(epoch=epoch))
    assert seen == [1, 2, 3] and lines[-1].startswith("dense epoch 3/3")
