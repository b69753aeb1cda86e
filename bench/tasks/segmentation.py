"""Semantic segmentation with mmsegmentation (FCN R18-D8) trained by mmengine's Runner.

The FMNIST-Scenes tasks use the model at half width (``fcn_r18-d8-half``: 32-channel stem and base,
see bench/configs/mm/scenes_seg.py) so that their dense models train in minutes on 2 CPU cores.

``scenes-seg`` / ``scenes-seg-tiny``: FMNIST-Scenes label maps (bench/data/scenes.py writes
``seg/img_dir`` + ``seg/ann_dir``) read by mmseg's ``BaseSegDataset`` with our 11 class names
(0 = background, 1..10 = Fashion-MNIST classes), scored by mmseg's ``IoUMetric``. The row's metric is
``mIoU`` in percent over the 11 classes, as mmseg reports it (2 decimals).

``ade20k-seg`` (``$SMARTBENCH_ADE20K``) and ``cityscapes-seg`` (``$SMARTBENCH_CITYSCAPES``) run the same
model and code on a user's copy; both have no labelled test split, so val and test are the val split.
Cityscapes is read from the official ``*_gtFine_labelIds.png`` files; :class:`CityscapesTrainIds`
maps the 34 label ids to the 19 train ids (255 = ignore) in the pipeline, so no conversion script
is needed.

Prunable layers (default): every conv of the backbone except the stem's first conv, and the
decode head's convs; the decode head's classifier (``conv_seg``) stays dense and the auxiliary
head (used only by the training loss) is not pruned. No mm* import at module level.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bench.data import layouts
from bench.data.scenes import CLASS_NAMES, ScenesSpec, build_scenes
from bench.tasks.base import Budget, register_task
from bench.tasks.mm_common import MMTask, layout_fingerprint, quiet_stdout, require_path

SCENES_CLASSES = ("background", *CLASS_NAMES)
SCENES_PALETTE = [[0, 0, 0]] + [[(37 * i) % 256, (91 * i) % 256, (53 * i + 128) % 256] for i in range(1, 11)]

# mmseg 1.2.2 warns about its own internals on every model build (its heads call its deprecated
# ``build_loss``; CrossEntropyLoss's ``avg_non_ignore`` default); neither concerns our configs.
warnings.filterwarnings("ignore", message=r"``build_loss`` would be deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=r"Default ``avg_non_ignore`` is False", category=UserWarning)

# Cityscapes label id -> train id (the 19 evaluated classes; every other id is ignored).
CITYSCAPES_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


class CityscapesTrainIds:
    """Pipeline step (after ``LoadAnnotations``): ``gt_seg_map`` label ids -> train ids, 255 elsewhere."""

    def __init__(self):
        self.table = np.full(256, 255, np.uint8)
        for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
            self.table[label_id] = train_id

    def __call__(self, results: dict) -> dict:
        results["gt_seg_map"] = self.table[results["gt_seg_map"]]
        return results


class SegmentationTask(MMTask):
    family = "segmentation"
    metric_name = "mIoU"
    scope = "mmseg"
    metric_key = "mIoU"
    default_model = "fcn_r18-d8"
    include = ["backbone.*", "decode_head.*"]
    exclude = ["decode_head.conv_seg"]
    ignore_index: ClassVar[int] = 255  # mmseg's default; pixels it scores as neither class

    @torch.no_grad()
    def trivial_metric(self) -> float:
        """mIoU of predicting the test split's most frequent class (background on the scenes) at
        every pixel, as mmseg's IoUMetric scores it: that class's IoU is its pixel share, every
        other class present in the ground truth scores 0, absent classes are left out."""
        counts = None
        with quiet_stdout():
            for batch in self.dataloader("test"):
                for sample in batch["data_samples"]:
                    labels = sample.gt_sem_seg.data.flatten().long()
                    labels = labels[labels != self.ignore_index]
                    hist = torch.bincount(labels, minlength=256)[:256]
                    counts = hist if counts is None else counts + hist
        present = int((counts > 0).sum())
        return round(100.0 * float(counts.max()) / float(counts.sum()) / present, 4)

    def register(self) -> None:
        super().register()
        from mmseg.registry import TRANSFORMS

        TRANSFORMS.register_module(module=CityscapesTrainIds, force=True)


class ScenesSegmentation(SegmentationTask):
    config_name = "scenes_seg.py"
    default_model = "fcn_r18-d8-half"
    spec: ScenesSpec
    dense_optimizer = "AdamW"  # from scratch in a few hundred steps

    def data_identity(self) -> dict[str, Any]:
        return {"name": "fmnist-scenes", **self.spec.__dict__}

    def dataset_hash(self) -> str:
        return self.spec.content_key()

    def data_root(self) -> Path:
        return build_scenes(self.spec)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.spec.size, self.spec.size)

    def adjust_config(self, cfg) -> None:
        cfg.model.data_preprocessor.size = (self.spec.size, self.spec.size)

    def bind_data(self, cfg) -> None:
        super().bind_data(cfg)
        for split in ("train", "val", "test"):
            cfg[f"{split}_dataloader"].dataset.metainfo = dict(classes=SCENES_CLASSES, palette=SCENES_PALETTE)


@register_task
class ScenesSegTiny(ScenesSegmentation):
    name = "scenes-seg-tiny"
    description = "mmseg FCN R18-D8 (half width) on 1k 64x64 FMNIST-Scenes (mIoU, 11 classes)"
    spec = ScenesSpec(n_train=1000, n_val=200, n_test=300, size=64, seed=0)
    # dense AdamW lr chosen on the val split (seed 0, 12 epochs, half-width model): 2e-3 -> 14.23 mIoU
    # (close to all-background, 7.6), 5e-3 -> 30.03, 1e-2 -> 34.58
    budget = Budget(dense_epochs=12, prune_epochs=1, finetune_epochs=1, batch_size=16, lr=0.01, prune_lr=2e-3)


@register_task
class ScenesSeg(ScenesSegmentation):
    name = "scenes-seg"
    description = "mmseg FCN R18-D8 (half width) on 2k 64x64 FMNIST-Scenes (mIoU, 11 classes)"
    spec = ScenesSpec(n_train=2000, n_val=300, n_test=500, size=64, seed=0)
    budget = Budget(dense_epochs=16, prune_epochs=2, finetune_epochs=1, batch_size=16, lr=0.002, prune_lr=4e-4)


@register_task
class ScenesSegLite(ScenesSegmentation):
    name = "scenes-seg-lite"
    description = "mmseg FCN R18-D8 at quarter width on 1k 64x64 FMNIST-Scenes (mIoU, 11 classes; leaderboard v2)"
    default_model = "fcn_r18-d8-quarter"
    spec = ScenesSpec(n_train=1000, n_val=300, n_test=500, size=64, seed=0)
    # The leaderboard-v2 segmentation task. Quarter width: stem/base 16 channels, heads 32/16
    # (scenes-seg: half width, 32 and 64/32); train step 0.09 s vs 0.19 s at half width (batch 16,
    # one thread). Dense AdamW lr 1e-2 (scenes-seg-tiny's, chosen on val there), 16 epochs: val
    # 31.27 / 32.65 / 32.05 mIoU over seeds 0-2 (test 32.73 / 33.39 / 33.65; half-width
    # scenes-seg-tiny: 34.58 val), measured 2026-12-05.
    model_overrides = {
        "backbone.stem_channels": 16,
        "backbone.base_channels": 16,
        "decode_head.in_channels": 128,
        "decode_head.channels": 32,
        "auxiliary_head.in_channels": 64,
        "auxiliary_head.channels": 16,
    }
    # Dense recipe 32 epochs since protocol v3 (leaderboard v2 and the protocol-v3 checks ran 16 and
    # state `dense_epochs: 16`). Plateau check (`python scripts/dense_plateau.py scenes-seg-lite
    # --epochs E`, 2026-12-07), val mIoU over seeds 0-2 after 80% / all of the epochs:
    #   16 epochs: 31.86 / 32.84, 32.00 / 33.33, 30.19 / 32.17: +1.43 over the last 20% against a
    #     seed spread (SD) of 0.58 -- not at a plateau;
    #   32 epochs: 40.43 / 40.53, 39.81 / 40.46, 39.07 / 39.13: +0.27 against SD 0.79 -- at a
    #     plateau (final mean 40.04 vs 32.78 at 16 epochs).
    budget = Budget(dense_epochs=32, prune_epochs=6, finetune_epochs=3, batch_size=16, lr=0.01, prune_lr=2e-3)
    dense_plateau_epochs = 32


@register_task
class Ade20kSeg(SegmentationTask):
    name = "ade20k-seg"
    description = (
        "mmseg FCN R18-D8 on a user's ADE20K copy ($SMARTBENCH_ADE20K; GPU-scale; CI runs it on a miniature copy)"
    )
    config_name = "ade20k_seg.py"
    nominal_sizes = {"train": 20_210, "val": 2_000, "test": 2_000}  # ADEChallengeData2016
    image_size = (512, 512)
    warmup_iters = 500
    budget = Budget(dense_epochs=40, prune_epochs=8, finetune_epochs=8, batch_size=16, lr=0.01, prune_lr=0.005)

    def data_root(self) -> Path:
        root = require_path(
            "SMARTBENCH_ADE20K", "SMARTBENCH_DATA", "ADEChallengeData2016", "ADE20K", layouts.ADE20K_TREE
        )
        return layouts.check_ade20k_root(root)["root"]

    def data_identity(self) -> dict[str, Any]:
        return {"name": "ade20k", "files": self.dataset_hash()}

    def check_data(self) -> None:
        """Every image has its annotation; annotations hold ids 0 (other) .. 150 (a sample is read)."""
        found = layouts.check_ade20k_root(self.data_root())
        fix = "ADEChallengeData2016 annotations are one-channel PNGs with ids 0 (other) to 150; re-extract the release"
        for split in ("train", "val"):
            images = {p.stem: p for p in found[f"{split}_img"].glob("*.jpg")}
            labels = {p.stem: p for p in found[f"{split}_ann"].glob("*.png")}
            layouts.check_pairs("ADE20K", images, labels, split, fix)
            layouts.check_label_files("ADE20K", list(labels.values()), set(range(151)), fix)

    def dataset_hash(self) -> str:
        return layout_fingerprint(self.data_root(), ["images/training", "images/validation"])


@register_task
class CityscapesSeg(SegmentationTask):
    name = "cityscapes-seg"
    description = "mmseg FCN R18-D8 on a user's Cityscapes copy ($SMARTBENCH_CITYSCAPES; GPU-scale; CI runs it on a miniature copy)"
    config_name = "cityscapes_seg.py"
    nominal_sizes = {"train": 2_975, "val": 500, "test": 500}  # gtFine train / val
    image_size = (512, 1024)
    warmup_iters = 500
    budget = Budget(dense_epochs=100, prune_epochs=20, finetune_epochs=20, batch_size=8, lr=0.01, prune_lr=0.005)

    def data_root(self) -> Path:
        root = require_path(
            "SMARTBENCH_CITYSCAPES", "SMARTBENCH_DATA", "cityscapes", "Cityscapes", layouts.CITYSCAPES_TREE
        )
        return layouts.check_cityscapes_root(root)["root"]

    def data_identity(self) -> dict[str, Any]:
        return {"name": "cityscapes", "files": self.dataset_hash()}

    def check_data(self) -> None:
        """Every picture has its ``*_gtFine_labelIds.png``; those hold label ids 0..33 (255: unlabelled
        license plates), not train ids or colours (a sample is read)."""
        found = layouts.check_cityscapes_root(self.data_root())
        fix = (
            "Use gtFine_trainvaltest's *_gtFine_labelIds.png (label ids 0..33; this task maps them to the 19 "
            "train ids itself, do not convert them)"
        )
        for split in ("train", "val"):
            images = {
                str(p.relative_to(found[f"{split}_img"])).removesuffix("_leftImg8bit.png"): p
                for p in found[f"{split}_img"].glob("*/*_leftImg8bit.png")
            }
            labels = {
                str(p.relative_to(found[f"{split}_ann"])).removesuffix("_gtFine_labelIds.png"): p
                for p in found[f"{split}_ann"].glob("*/*_gtFine_labelIds.png")
            }
            layouts.check_pairs("Cityscapes", images, labels, split, fix)
            layouts.check_label_files("Cityscapes", list(labels.values()), set(range(34)) | {255}, fix)

    def dataset_hash(self) -> str:
        return layout_fingerprint(self.data_root(), ["leftImg8bit/train", "leftImg8bit/val"])
