"""The full-size tasks end to end, each on a miniature copy of its dataset in the official on-disk layout.

``coco-det``, ``ade20k-seg``, ``cityscapes-seg``, ``imagenet-resnet50`` and ``imagenet-deit`` are what a
user with a GPU cluster runs. Here each one runs through ``smartbench run`` on a few pictures written in
its dataset's official layout (COCO 2017, ADEChallengeData2016, Cityscapes ``leftImg8bit``/``gtFine``
with ``labelIds``, ImageNet class folders), from a dense checkpoint built by the task's own model, with
one pruning epoch; then ``export`` and ``speed`` run on the row.

What the tests override, and so do not cover (docs/your-data.md says the same): the picture scale.
Each test runs a subclass of the real task (``mini-*``) that changes only the input size: the packaged
mm pipelines' resize/crop scales (1333x800, 2048x512 with 512x512 crops, 2048x1024 with 512x1024 crops)
and the ImageNet crop (224) become small ones, so the models run in seconds on 2 CPU cores. Everything
else is the task's own: config, model width, class count (80 / 150 / 19 / 1000), label mapping,
holdout, batch size, data checks. The speed of full-resolution pipelines is not tested.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli.main import main
from bench.core.errors import ConfigError, DataError
from bench.tasks import base as tasks_base
from bench.tasks import registry as tasks_registry
from bench.tasks.detection import CocoDet
from bench.tasks.imagefolder import ImagenetResnet50
from bench.tasks.segmentation import Ade20kSeg, CityscapesSeg
from bench.tasks.vit import IMAGENET_ENV, ImagenetDeiT

COCO_IDS = [
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- miniature copies in the official layouts ---------------------------------------------------


def mini_coco(root: Path, classes: tuple[str, ...], counts=(("train", 8), ("val", 4))) -> Path:
    """COCO 2017: ``train2017/*.jpg``, ``val2017/*.jpg``, ``annotations/instances_{split}2017.json`` with
    the official 80 categories (ids 1..90 with gaps) and 1-3 boxes per picture."""
    rng = np.random.default_rng(0)
    categories = [{"supercategory": "thing", "id": i, "name": n} for i, n in zip(COCO_IDS, classes, strict=True)]
    image_id, ann_id = 139, 1
    for split, count in counts:
        images, annotations = [], []
        for _ in range(count):
            height, width = 96, 128
            name = f"{image_id:012d}.jpg"
            write_image(root / f"{split}2017" / name, picture(rng, height, width))
            images.append({"id": image_id, "file_name": name, "height": height, "width": width, "license": 1})
            for _ in range(int(rng.integers(1, 4))):
                w, h = (int(v) for v in rng.integers(16, 48, 2))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": int(rng.choice(COCO_IDS[:10])),
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    }
                )
                ann_id += 1
            image_id += 1
        info = {"description": "miniature COCO 2017", "version": "1.0", "year": 2017}
        document = {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(document))
    return root


def mini_ade20k(parent: Path, counts=(("training", 6), ("validation", 3))) -> Path:
    """ADEChallengeData2016: ``images/{training,validation}/ADE_*.jpg`` and ``annotations/.../ADE_*.png``
    (ids 0 = other .. 150)."""
    rng, root = np.random.default_rng(1), parent / "ADEChallengeData2016"
    for sub, count in counts:
        tag = "train" if sub == "training" else "val"
        for i in range(1, count + 1):
            stem = f"ADE_{tag}_{i:08d}"
            write_image(root / "images" / sub / f"{stem}.jpg", picture(rng, 96, 128))
            labels = rng.integers(0, 151, (12, 16), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            write_image(root / "annotations" / sub / f"{stem}.png", labels)
    return parent


def mini_cityscapes(root: Path, counts=(("train", ("aachen", "bochum"), 4), ("val", ("frankfurt",), 2))) -> Path:
    """Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and, beside each,
    ``gtFine/<split>/<city>/..._gtFine_labelIds.png`` (label ids 0..33) plus the ``_color`` twin the
    task must not read."""
    rng = np.random.default_rng(2)
    for split, cities, per_city in counts:
        for city in cities:
            for frame in range(per_city):
                stem = f"{city}_{frame:06d}_000019"
                write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", picture(rng, 64, 128))
                ids = rng.integers(0, 34, (8, 16), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
                write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                write_image(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", picture(rng, 64, 128))
    return root


def mini_imagenet(root: Path, classes: int = 1000, train_per_class: int = 11, val_per_class: int = 1) -> Path:
    """ILSVRC-2012 class folders: ``train/<wnid>/<wnid>_<n>.JPEG`` and ``val/<wnid>/ILSVRC2012_val_*.JPEG``
    (val sorted into the wnid folders), 16x16 pictures."""
    rng = np.random.default_rng(3)
    val = 1
    for c in range(classes):
        wnid = f"n{1440764 + c:08d}"
        for i in range(train_per_class):
            write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", picture(rng, 16, 16))
        for _ in range(val_per_class):
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{val:08d}.JPEG", picture(rng, 16, 16))
            val += 1
    return root


@pytest.fixture(scope="module")
def imagenet_copy(tmp_path_factory) -> Path:
    """One 1000-class copy for both ImageNet tasks: 11 train pictures per class (10 held out as val)."""
    return mini_imagenet(tmp_path_factory.mktemp("imagenet"))


# -- the tasks at a small picture scale (the only override) ---------------------------------------


def set_step(pipeline, kind: str, **values) -> None:
    steps = [step for step in pipeline if step["type"] == kind]
    assert steps, f"no {kind} in the packaged pipeline"
    for step in steps:
        step.update(values)


class MiniCocoDet(CocoDet):
    name = "mini-coco-det"
    image_size = (96, 128)

    def adjust_config(self, cfg) -> None:
        for split in ("train", "val", "test"):
            set_step(cfg[f"{split}_dataloader"].dataset.pipeline, "Resize", scale=(128, 96))


class MiniSegmentation:
    """The packaged pipelines' resize / crop scale (2048 x H with H x W crops) made small."""

    image_size: tuple[int, int]

    def adjust_config(self, cfg) -> None:
        cfg.model.data_preprocessor.size = self.image_size
        scale = (256, self.image_size[0])
        set_step(cfg.train_dataloader.dataset.pipeline, "RandomResize", scale=scale)
        set_step(cfg.train_dataloader.dataset.pipeline, "RandomCrop", crop_size=self.image_size)
        for split in ("val", "test"):
            set_step(cfg[f"{split}_dataloader"].dataset.pipeline, "Resize", scale=scale)


class MiniAde20kSeg(MiniSegmentation, Ade20kSeg):
    name = "mini-ade20k-seg"
    image_size = (64, 64)


class MiniCityscapesSeg(MiniSegmentation, CityscapesSeg):
    name = "mini-cityscapes-seg"
    image_size = (64, 128)


class MiniImagenetResnet50(ImagenetResnet50):
    name = "mini-imagenet-resnet50"
    image_size = 16
    eval_resize = 16
    workers = 0


class MiniImagenetDeiT(ImagenetDeiT):
    name = "mini-imagenet-deit"
    image_size = 16
    eval_resize = 16
    workers = 0


MINI = {
    cls.name: cls for cls in (MiniCocoDet, MiniAde20kSeg, MiniCityscapesSeg, MiniImagenetResnet50, MiniImagenetDeiT)
}


@pytest.fixture(autouse=True)
def mini_tasks(monkeypatch):
    tasks_registry.load_tasks()
    for name, cls in MINI.items():
        monkeypatch.setitem(tasks_base.TASKS, name, cls)


def dense_checkpoint(task_name: str, path: Path, data: str | None = None) -> str:
    """A dense checkpoint built by the task's own model (initial weights: what a user's trained one replaces)."""
    task = tasks_registry.get_task(task_name, data=data)
    torch.manual_seed(0)
    model = task.build_model()
    task.initialise(model)
    torch.save(model.state_dict(), path)
    return str(path)


def run_end_to_end(task_name: str, pattern: str, tmp_path: Path, capsys, data: str | None = None, sparsity="0.5"):
    """``smartbench run`` from the task's own dense checkpoint, one pruning epoch; then export and speed."""
    checkpoint = dense_checkpoint(task_name, tmp_path / "dense.pt", data)
    args = ["run", "--task", task_name, "--pruner", "magnitude", "--pattern", pattern, "--json"]
    args += ["--dense-checkpoint", checkpoint, "--prune-epochs", "1", "--finetune-epochs", "0"]
    args += ["--sparsity", sparsity] if sparsity else []
    args += ["--data", data] if data else []
    capsys.readouterr()
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["pattern_valid"] and math.isfinite(row["metric"]) and math.isfinite(row["val_metric"])
    assert row["achieved_sparsity"] == pytest.approx(float(sparsity or 0.5), abs=1e-9)
    exported = tmp_path / "exported.pt"
    assert main(["export", row["run_id"], "--out", str(exported)]) == 0 and exported.stat().st_size > 0
    assert main(["speed", row["run_id"], "--repeats", "2", "--warmup", "0", "--batch-sizes", "1"]) == 0
    return row


# -- the end-to-end runs ----------------------------------------------------------------------------


@pytest.mark.slow
def test_coco_det_end_to_end(tmp_path, runs_dir, monkeypatch, capsys):
    classes = tasks_registry.get_task("coco-det").classes()
    monkeypatch.setenv("SMARTBENCH_COCO", str(mini_coco(tmp_path / "coco", classes)))
    row = run_end_to_end("mini-coco-det", "block:1x8", tmp_path, capsys)
    assert row["metric_name"] == "bbox_mAP" and 0.0 <= row["metric"] <= 100.0
    # an untrained RetinaNet scores every anchor near its prior (0.01), under the test score_thr (0.05):
    # mmdet's CocoMetric then reports nothing and the row's metric is 0 (DetectionTask.metric_of)
    assert row["metric"] == 0.0 or "coco/bbox_mAP_50" in row["mm_metrics"]["test"]


@pytest.mark.slow
def test_ade20k_seg_end_to_end(tmp_path, runs_dir, monkeypatch, capsys):
    monkeypatch.setenv("SMARTBENCH_ADE20K", str(mini_ade20k(tmp_path / "ade")))
    row = run_end_to_end("mini-ade20k-seg", "channel", tmp_path, capsys)
    assert row["metric_name"] == "mIoU" and 0.0 <= row["metric"] <= 100.0


@pytest.mark.slow
def test_cityscapes_seg_end_to_end(tmp_path, runs_dir, monkeypatch, capsys):
    monkeypatch.setenv("SMARTBENCH_CITYSCAPES", str(mini_cityscapes(tmp_path / "cityscapes")))
    row = run_end_to_end("mini-cityscapes-seg", "block:1x8", tmp_path, capsys)
    assert row["metric_name"] == "mIoU" and 0.0 <= row["metric"] <= 100.0


@pytest.mark.slow
def test_imagenet_resnet50_end_to_end(imagenet_copy, tmp_path, runs_dir, monkeypatch, capsys):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    row = run_end_to_end("mini-imagenet-resnet50", "channel", tmp_path, capsys, data=str(imagenet_copy))
    assert row["metric_name"] == "top1" and 0.0 <= row["metric"] <= 100.0
    task = tasks_registry.get_task("mini-imagenet-resnet50", data=str(imagenet_copy))
    assert [len(task.samples[s]) for s in ("train", "val", "test")] == [1000, 10_000, 1000]


@pytest.mark.slow
def test_imagenet_deit_end_to_end(imagenet_copy, tmp_path, runs_dir, monkeypatch, capsys):
    monkeypatch.setenv(IMAGENET_ENV, str(imagenet_copy))
    row = run_end_to_end("mini-imagenet-deit", "nm:2:4", tmp_path, capsys, sparsity=None)
    assert row["metric_name"] == "top1" and 0.0 <= row["metric"] <= 100.0


# -- epoch-based loops end their epochs ------------------------------------------------------------


def test_every_mm_task_trains_with_a_finite_sampler():
    """An epoch over mmengine's InfiniteSampler never ends (the packaged mmseg configs are iteration-based)."""
    from mmengine.dataset import InfiniteSampler
    from mmengine.registry import DATA_SAMPLERS, DefaultScope

    checked = []
    for name, cls in sorted(tasks_registry.load_tasks().items()):
        if cls.loop != "mmengine":
            continue  # the native loop draws steps_per_epoch batches per epoch
        task = cls()
        sampler = task.config.train_dataloader.sampler
        with DefaultScope.overwrite_default_scope(task.scope):
            sampler_cls = DATA_SAMPLERS.get(sampler["type"])
        assert not issubclass(sampler_cls, InfiniteSampler), (name, sampler)
        checked.append(name)
    assert {"coco-det", "ade20k-seg", "cityscapes-seg", "scenes-det", "scenes-seg"} <= set(checked)


def test_an_infinite_sampler_is_refused_before_training(monkeypatch):
    from bench.tasks import mm_common

    original = mm_common.load_config

    def infinite(name):
        cfg = original(name)
        cfg.train_dataloader.sampler = dict(type="InfiniteSampler", shuffle=True)
        return cfg

    monkeypatch.setattr(mm_common, "load_config", infinite)
    with pytest.raises(ConfigError, match="InfiniteSampler never ends an epoch.*DefaultSampler"):
        _ = tasks_registry.get_task("ade20k-seg").config


# -- data checks before training -------------------------------------------------------------------


def check_fails(task_name: str, match: str, data: str | None = None, runs_dir: Path | None = None) -> None:
    """The run stops with one DataError before anything is trained or written."""
    from bench.runs.run import RunSpec, execute, resolve

    run = resolve(
        RunSpec(task_name, "magnitude", "channel", 0.5, data=data, budget={"prune_epochs": 1, "finetune_epochs": 0})
    )
    with pytest.raises(DataError, match=match):
        execute(run, log=lambda _m: None, wandb=False)
    assert runs_dir is None or not runs_dir.exists() or not any(runs_dir.rglob("*.pt"))


def test_too_few_pictures_per_class_for_the_holdout(tmp_path, runs_dir, monkeypatch):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    copy = mini_imagenet(tmp_path / "imagenet", train_per_class=1)
    match = r"1000 of 1000 classes .* fewer than 11 images .* holds out 10 images of every class"
    check_fails("mini-imagenet-resnet50", match, str(copy), runs_dir)
    copy = mini_imagenet(tmp_path / "imagenet2", train_per_class=5)
    check_fails("mini-imagenet-resnet50", "fewer than 11 images", str(copy), runs_dir)


def test_an_empty_split_is_one_error(tmp_path, runs_dir, monkeypatch):
    monkeypatch.setenv(IMAGENET_ENV, str(mini_imagenet(tmp_path / "imagenet", train_per_class=10)))
    check_fails("mini-imagenet-deit", "10000 train images .* 10000 are held out .* would be empty", runs_dir=runs_dir)
    folder = tmp_path / "folder"
    for split, per_class in (("train", 1), ("test", 2)):
        for c in ("a", "b"):
            for i in range(per_class):
                write_image(folder / split / c / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"the val split \(carved from .*\) is empty"):
        tasks_registry.get_task("imagefolder", data=str(folder)).check_data()


def test_label_ids_outside_the_classes(tmp_path, runs_dir, monkeypatch):
    parent = mini_ade20k(tmp_path / "ade", counts=(("training", 2), ("validation", 1)))
    write_image(
        parent / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png", np.full((96, 128), 151, np.uint8)
    )
    monkeypatch.setenv("SMARTBENCH_ADE20K", str(parent))
    check_fails(
        "mini-ade20k-seg",
        r"ADE_val_00000001.png holds ids \[151\] outside the dataset's classes \(0..150\)",
        runs_dir=runs_dir,
    )
    root = mini_cityscapes(tmp_path / "cs", counts=(("train", ("aachen",), 2), ("val", ("frankfurt",), 1)))
    color = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_color.png"
    color.replace(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")  # colours, not ids
    monkeypatch.setenv("SMARTBENCH_CITYSCAPES", str(root))
    check_fails(
        "mini-cityscapes-seg", r"labelIds.png is a RGB image, expected one channel of class ids", runs_dir=runs_dir
    )
    ids = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    write_image(ids, np.full((64, 128), 40, np.uint8))
    check_fails(
        "mini-cityscapes-seg", r"holds ids \[40\] outside the dataset's classes \(0..33 or 255\)", runs_dir=runs_dir
    )
    ids.unlink()
    check_fails("mini-cityscapes-seg", r"train split: 1 images without a label file", runs_dir=runs_dir)


def test_coco_categories_must_be_the_task_classes(tmp_path, runs_dir, monkeypatch):
    classes = tasks_registry.get_task("coco-det").classes()
    root = mini_coco(tmp_path / "coco", classes, counts=(("train", 1), ("val", 1)))
    monkeypatch.setenv("SMARTBENCH_COCO", str(root))
    tasks_registry.get_task("mini-coco-det").check_data()  # the official 80 pass
    path = root / "annotations" / "instances_val2017.json"
    document = json.loads(path.read_text())
    document["categories"] = document["categories"][:3] + [{"id": 91, "name": "hat"}]
    path.write_text(json.dumps(document))
    check_fails(
        "mini-coco-det",
        r"instances_val2017.json: its categories do not match the task's 80 classes: 77 of",
        runs_dir=runs_dir,
    )
