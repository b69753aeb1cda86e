"""Object detection with mmdet (RetinaNet R18-FPN) trained by mmengine's Runner.

``scenes-det`` / ``scenes-det-tiny``: FMNIST-Scenes written as a real COCO dataset
(bench/data/scenes.py), read by mmdet's ``CocoDataset`` and scored by mmdet's ``CocoMetric``.
The row's metric is ``bbox_mAP`` = COCO mAP@[.5:.95] x 100 (mmdet reports it in [0, 1] rounded to
3 decimals, so the row holds one decimal of a percent); ``mm_metrics`` keeps every number mmdet
reports (``coco/bbox_mAP_50`` ...). ``val_metric`` is on the scenes' val split (Fashion-MNIST
train images 50000..59999), ``metric`` on the test split (Fashion-MNIST test images).

``coco-det``: the same model and code on a user's COCO 2017 copy (``$SMARTBENCH_COCO``, or
``$SMARTBENCH_DATA/coco``); COCO has no labelled test split, so val and test are both val2017.

Prunable layers (default): every conv of the backbone except the stem (the model's first conv) and
every conv of the FPN neck. The head (its stacked convs, shared by the 5 FPN levels, and the final
classification / box-regression convs) stays dense; widen ``include`` to prune it. No mm* import at
module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.data import layouts
from bench.data.scenes import CLASS_NAMES, ScenesSpec, build_scenes
from bench.tasks.base import Budget, register_task
from bench.tasks.mm_common import MMTask, layout_fingerprint, require_path


class DetectionTask(MMTask):
    family = "detection"
    metric_name = "bbox_mAP"
    scope = "mmdet"
    metric_key = "coco/bbox_mAP"
    metric_scale = 100.0
    default_model = "retinanet_r18_fpn"

    def trivial_metric(self) -> float:
        """bbox mAP of a detector that outputs nothing."""
        return 0.0

    def metric_of(self, results: dict[str, float]) -> float:
        # CocoMetric returns nothing (and logs "results ... empty") when no box passed score_thr: mAP 0
        return super().metric_of(results or {self.metric_key: 0.0})

    include = ["backbone.*", "neck.*"]


class ScenesDetection(DetectionTask):
    config_name = "scenes_det.py"
    spec: ScenesSpec
    dense_optimizer = "AdamW"  # from scratch in a few hundred steps: SGD reached 0.9 bbox_mAP after 12 epochs

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.spec.size, self.spec.size)

    def data_identity(self) -> dict[str, Any]:
        return {"name": "fmnist-scenes", **self.spec.__dict__}

    def dataset_hash(self) -> str:
        return self.spec.content_key()

    def data_root(self) -> Path:
        return build_scenes(self.spec)

    def adjust_config(self, cfg) -> None:
        """The config's no-op ``Resize`` follows the scene size (it only records ``scale_factor``)."""
        for split in ("train", "val", "test"):
            for step in cfg[f"{split}_dataloader"].dataset.pipeline:
                if step["type"] == "Resize":
                    step["scale"] = (self.spec.size, self.spec.size)

    def bind_data(self, cfg) -> None:
        super().bind_data(cfg)
        for split in ("train", "val", "test"):
            cfg[f"{split}_dataloader"].dataset.metainfo = dict(classes=CLASS_NAMES)


@register_task
class ScenesDetTiny(ScenesDetection):
    name = "scenes-det-tiny"
    description = "mmdet RetinaNet R18-FPN on 1k 64x64 FMNIST-Scenes (COCO bbox mAP)"
    spec = ScenesSpec(n_train=1000, n_val=200, n_test=300, size=64, seed=0)
    # lr as scenes-det and 10 dense epochs (the quick suite's critical path): val bbox_mAP, seed 0,
    # 10.4 with (5e-4, 10 epochs) against 10.6 with (2e-3, 12 epochs)
    budget = Budget(
        dense_epochs=10, prune_epochs=2, finetune_epochs=1, batch_size=16, lr=0.0005, prune_lr=1e-4, weight_decay=1e-4
    )


@register_task
class ScenesDet(ScenesDetection):
    name = "scenes-det"
    description = "mmdet RetinaNet R18-FPN on 2k 64x64 FMNIST-Scenes (COCO bbox mAP)"
    spec = ScenesSpec(n_train=2000, n_val=300, n_test=500, size=64, seed=0)
    # dense AdamW lr chosen on the val split (seed 0, 16 epochs): 2e-3 -> 0.5 bbox_mAP (the tiny task's
    # lr fails at 2000 scenes), 1e-3 -> 25.0, 5e-4 -> 26.4
    budget = Budget(
        dense_epochs=16, prune_epochs=2, finetune_epochs=1, batch_size=16, lr=0.0005, prune_lr=1e-4, weight_decay=1e-4
    )


@register_task
class ScenesDetLite(ScenesDetection):
    name = "scenes-det-lite"
    description = "mmdet RetinaNet R18-FPN at half width on 1k 64x64 FMNIST-Scenes (COCO bbox mAP; leaderboard v2)"
    default_model = "retinanet_r18_fpn-half"
    spec = ScenesSpec(n_train=1000, n_val=300, n_test=500, size=64, seed=0)
    # The leaderboard-v2 detection task (issue 15: a 6 + 3-epoch cell of scenes-det cost ~7.5 min at
    # one thread; this one ~1.7 min). Half width: backbone base 32 channels, FPN and head 64
    # (scenes-det: 64 / 128); train step 0.13 s vs 0.35 s for scenes-det-tiny's model (batch 16, one
    # thread). 300 val / 500 test scenes as scenes-det.
    # Dense recipe chosen on the val split over seeds 0-2 by the rule "best mean val bbox_mAP among
    # the recipes whose val spread over the seeds is <= 2 points" (issue 15: the dense models must
    # vary little across seeds): AdamW 5e-4 16 epochs 12.1 / 12.9 / 12.7 (test 10.9 / 10.8 / 11.3);
    # 1e-3 32 epochs 22.1 / 13.8 / 17.8; 5e-4 32 epochs 19.7 / 17.6 / (not run: already > 2 apart).
    # The longer recipes train better models whose quality depends on the seed (as scenes-det's
    # 24.9-34.2 test); the chosen one is under-trained (the nomask control shows what the 9 extra
    # epochs add). Measured 2026-12-05 (/tmp scripts, the task's own train_dense).
    # Dense recipe 32 epochs since protocol v3 (leaderboard v2 and the protocol-v3 checks ran 16 and
    # state `dense_epochs: 16`). Plateau check (`python scripts/dense_plateau.py scenes-det-lite
    # --epochs E`, 2026-12-07), val bbox_mAP over seeds 0-2 after 80% / all of the epochs:
    #   16 epochs: 11.8 / 12.4, 13.0 / 13.0, 13.0 / 13.1: +0.23 over the last 20% against a seed
    #     spread (SD) of 0.38 -- passes the tail test, but 32 epochs gain +5.9 mAP: not converged;
    #   32 epochs: 18.1 / 18.0, 19.2 / 19.2, 19.0 / 18.8: -0.10 against SD 0.61 -- at a plateau
    #     (final mean 18.67 vs 12.83 at 16 epochs).
    dense_plateau_epochs = 32
    model_overrides = {
        "backbone.base_channels": 32,
        "neck.in_channels": [32, 64, 128, 256],
        "neck.out_channels": 64,
        "bbox_head.in_channels": 64,
        "bbox_head.feat_channels": 64,
    }
    budget = Budget(
        dense_epochs=32, prune_epochs=6, finetune_epochs=3, batch_size=16, lr=0.0005, prune_lr=1e-4, weight_decay=1e-4
    )


@register_task
class CocoDet(DetectionTask):
    name = "coco-det"
    description = "mmdet RetinaNet R18-FPN on a user's COCO 2017 copy ($SMARTBENCH_COCO; GPU-scale; CI runs it on a miniature copy)"
    config_name = "coco_det.py"
    # train2017 images that keep an annotation after mmdet's filter_empty_gt (of 118,287); val2017 5,000
    nominal_sizes = {"train": 117_266, "val": 5_000, "test": 5_000}
    image_size = (800, 1344)
    warmup_iters = 500
    budget = Budget(
        dense_epochs=12, prune_epochs=4, finetune_epochs=4, batch_size=16, lr=0.02, prune_lr=0.005, weight_decay=1e-4
    )

    def data_root(self) -> Path:
        root = require_path("SMARTBENCH_COCO", "SMARTBENCH_DATA", "coco", "COCO 2017", layouts.COCO_TREE)
        return layouts.check_coco_root(root)["root"]

    def data_identity(self) -> dict[str, Any]:
        return {"name": "coco2017", "files": self.dataset_hash()}

    def check_data(self) -> None:
        """Both annotation files name exactly the task's 80 classes (mmdet maps category ids by name)."""
        found = layouts.check_coco_root(self.data_root())
        for split in ("train", "val"):
            layouts.check_coco_categories(found[f"{split}_ann"], self.classes())

    def dataset_hash(self) -> str:
        return layout_fingerprint(
            self.data_root(), ["annotations/instances_train2017.json", "annotations/instances_val2017.json"]
        )
