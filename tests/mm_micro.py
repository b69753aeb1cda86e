"""Micro mmdet / mmseg tasks (8..16 scenes, 1 epoch per stage) shared by test_mm and the golden test."""

from __future__ import annotations

from bench.data.scenes import ScenesSpec
from bench.tasks.base import Budget
from bench.tasks.detection import ScenesDetection
from bench.tasks.segmentation import ScenesSegmentation

MICRO_SPEC = ScenesSpec(n_train=16, n_val=4, n_test=4, size=32, seed=5)
MICRO_BUDGET = Budget(
    dense_epochs=1, prune_epochs=1, finetune_epochs=1, batch_size=8, lr=0.01, prune_lr=0.005, calib_batches=1
)


def no_flip(cfg) -> None:
    """Drop RandomFlip, so the golden masks and metrics (tests/golden, recorded without it) stay
    comparable. The resume tests use ``MicroSegFlip``, which keeps it: its draws come from numpy's
    global RNG, which the checkpoints restore."""
    pipeline = cfg.train_dataloader.dataset.pipeline
    cfg.train_dataloader.dataset.pipeline = [t for t in pipeline if t["type"] != "RandomFlip"]


class MicroDet(ScenesDetection):
    name = "micro-det"
    spec = MICRO_SPEC
    budget = MICRO_BUDGET

    def bind_data(self, cfg) -> None:
        super().bind_data(cfg)
        no_flip(cfg)


class MicroSeg(ScenesSegmentation):
    name = "micro-seg"
    spec = MICRO_SPEC
    budget = MICRO_BUDGET
    flip = False

    def bind_data(self, cfg) -> None:
        super().bind_data(cfg)
        if not self.flip:
            no_flip(cfg)


class MicroSegFlip(MicroSeg):
    """The micro segmentation task with the scenes pipeline's RandomFlip (numpy's global RNG)."""

    name = "micro-seg-flip"
    flip = True


MICRO = {"det": MicroDet, "seg": MicroSeg, "seg-flip": MicroSegFlip}
