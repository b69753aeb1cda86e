"""Tests for bench.data: IDX reader, Fashion-MNIST lookup, FMNIST-Scenes, layout checks."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.core.errors import ConfigError, DataError
from bench.data import fmnist, layouts
from bench.data.scenes import CLASS_NAMES, ScenesSpec, build_scenes, files_hash

TINY = ScenesSpec(n_train=8, n_val=4, n_test=4, seed=3)


def idx_bytes(array: np.ndarray) -> bytes:
    """Hand-written uint8 IDX encoding: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fmnist(folder: Path, n: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


def test_read_idx_raw_and_gz(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(idx_bytes(array))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        out = fmnist.read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="magic"):
        fmnist.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(array)[:-1])
    with pytest.raises(DataError, match="size"):
        fmnist.read_idx(tmp_path / "short")


@pytest.mark.parametrize("layout", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_env_var_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    write_fake_fmnist(tmp_path / layout)
    monkeypatch.setenv("SMARTBENCH_DATA", str(tmp_path))
    assert fmnist.find_fmnist_dir() == tmp_path / layout
    images, labels = fmnist.load_fmnist("test")
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3, 4]
    assert len(fmnist.dataset_hash()) == 16
    with pytest.raises(ConfigError, match="split"):
        fmnist.load_fmnist("val")


def test_missing_dataset_names_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("SMARTBENCH_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        fmnist.find_fmnist_dir(tmp_path / "arg")
    message = str(err.value)
    for needle in ("dataset-fashion-mnist", "SMARTBENCH_DATA", "arg", "env/fashion-mnist", "system"):
        assert needle in message


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="size"):
        ScenesSpec(size=8)
    with pytest.raises(ConfigError, match="n_val"):
        ScenesSpec(n_val=0)


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        fmnist.find_fmnist_dir()
    except DataError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return build_scenes(TINY, tmp_path_factory.mktemp("scenes"))


def test_scenes_deterministic(scenes_dir: Path, tmp_path: Path) -> None:
    other = build_scenes(TINY, tmp_path)
    first = json.loads((scenes_dir / "manifest.json").read_text())
    second = json.loads((other / "manifest.json").read_text())
    assert first["files_sha256"] == second["files_sha256"] == files_hash(other)
    assert first["key"] == TINY.content_key() and scenes_dir.name == f"fmnist-scenes-{first['key'][:12]}"
    assert first["counts"]["train"]["images"] == 8 and first["counts"]["test"]["images"] == 4
    assert [p.name for p in tmp_path.iterdir()] == [other.name]  # no temp folder left behind
    changed = build_scenes(ScenesSpec(n_train=8, n_val=4, n_test=4, seed=4), tmp_path)
    assert changed != other


def test_scenes_reused_when_key_matches(scenes_dir: Path) -> None:
    files = [scenes_dir / "manifest.json", scenes_dir / "coco" / "train" / "000001.png"]
    before = [p.stat().st_mtime_ns for p in files]
    assert build_scenes(TINY, scenes_dir.parent) == scenes_dir
    assert [p.stat().st_mtime_ns for p in files] == before


def test_scenes_rebuilds_broken_copy(scenes_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / scenes_dir.name
    shutil.copytree(scenes_dir, broken)
    (broken / "manifest.json").unlink()
    assert build_scenes(TINY, tmp_path) == broken
    assert json.loads((broken / "manifest.json").read_text())["key"] == TINY.content_key()


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_scenes_annotations_exact(scenes_dir: Path, split: str) -> None:
    coco = json.loads((scenes_dir / "coco" / "annotations" / f"instances_{split}.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert set(by_image) == {im["id"] for im in coco["images"]}  # every scene has an object
    for im in coco["images"]:
        image = np.asarray(Image.open(scenes_dir / "coco" / split / im["file_name"]))
        seg_image = np.asarray(Image.open(scenes_dir / "seg" / "img_dir" / split / im["file_name"]))
        label = np.asarray(Image.open(scenes_dir / "seg" / "ann_dir" / split / im["file_name"]))
        assert image.shape == (64, 64, 3) and np.array_equal(image, seg_image)
        assert label.dtype == np.uint8 and label.shape == (64, 64) and label.max() <= 10
        for ann in by_image[im["id"]]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 64 and y + h <= 64
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert ann["area"] == mask.sum() and np.all(label[mask] == ann["category_id"])
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == ann["bbox"]
        if len(by_image[im["id"]]) == 1:
            assert by_image[im["id"]][0]["area"] == (label > 0).sum()


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_scenes_cocoeval_self_is_perfect(scenes_dir: Path, iou_type: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(scenes_dir / "coco" / "annotations" / "instances_val.json"))
        detections = [
            {k: a[k] for k in ("image_id", "category_id", "bbox", "segmentation")} | {"score": 1.0}
            for a in gt.dataset["annotations"]
        ]
        evaluator = COCOeval(gt, gt.loadRes(detections), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


FAKE_TREES = {
    "coco": (
        layouts.check_coco_root,
        layouts.COCO_TREE,
        ["annotations/instances_train2017.json", "annotations/instances_val2017.json",
         "train2017/1.jpg", "val2017/2.jpg"],
        ["val2017/2.jpg"],
    ),
    "ade20k": (
        layouts.check_ade20k_root,
        layouts.ADE20K_TREE,
        [f"ADEChallengeData2016/{kind}/{split}/a.{ext}"
         for kind, ext in (("images", "jpg"), ("annotations", "png"))
         for split in ("training", "validation")],
        ["ADEChallengeData2016/annotations/validation/a.png"],
    ),
    "cityscapes": (
        layouts.check_cityscapes_root,
        layouts.CITYSCAPES_TREE,
        ["leftImg8bit/train/aachen/a_leftImg8bit.png", "leftImg8bit/val/bonn/b_leftImg8bit.png",
         "gtFine/train/aachen/a_gtFine_labelIds.png", "gtFine/val/bonn/b_gtFine_labelIds.png"],
        ["gtFine/train/aachen/a_gtFine_labelIds.png"],
    ),
    "imagenet": (
        layouts.check_imagenet_root,
        layouts.IMAGENET_TREE,
        ["train/n01/a.JPEG", "train/n02/b.JPEG", "val/n01/c.JPEG", "val/n02/d.JPEG"],
        ["val/n01/c.JPEG", "val/n02/d.JPEG"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FAKE_TREES))
def test_layout_checks(tmp_path: Path, name: str) -> None:
    check, tree, files, missing = FAKE_TREES[name]
    for f in files:
        touch(tmp_path / f)
    found = check(tmp_path)
    assert found["root"].is_dir() and all(p.exists() for p in found.values())
    for f in missing:
        (tmp_path / f).unlink()
    with pytest.raises(DataError, match="Expected layout") as err:
        check(tmp_path)
    assert tree in str(err.value)
    with pytest.raises(ConfigError, match="splits"):
        check(tmp_path, splits=("test",))
