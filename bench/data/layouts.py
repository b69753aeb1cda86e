"""Layout checks for users' own copies of full-size datasets (never downloaded).

Each check returns a dict of resolved paths, or raises DataError showing the expected tree.
`splits` names the splits that must be present ("train", "val").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.core.errors import ConfigError, DataError

COCO_TREE = """\
<root>/
  annotations/instances_train2017.json
  annotations/instances_val2017.json
  train2017/*.jpg
  val2017/*.jpg"""

ADE20K_TREE = """\
<root>/                      (ADEChallengeData2016/, or its parent)
  images/training/*.jpg
  images/validation/*.jpg
  annotations/training/*.png
  annotations/validation/*.png"""

CITYSCAPES_TREE = """\
<root>/
  leftImg8bit/train/<city>/*_leftImg8bit.png
  leftImg8bit/val/<city>/*_leftImg8bit.png
  gtFine/train/<city>/*_gtFine_labelIds.png
  gtFine/val/<city>/*_gtFine_labelIds.png"""

IMAGENET_TREE = """\
<root>/
  train/<wnid>/*.JPEG
  val/<wnid>/*.JPEG          (val sorted into the same class folders as train)"""

_ADE20K_SPLITS = {"train": "training", "val": "validation"}


def _fail(name: str, root: Path, problem: str, tree: str) -> DataError:
    return DataError(f"{name} at {root}: {problem}.\nExpected layout:\n{tree}")


def _check_splits(splits: Sequence[str]) -> None:
    for split in splits:
        if split not in ("train", "val"):
            raise ConfigError("splits", f"unknown split {split!r}; allowed: train, val")


def _require(name: str, root: Path, tree: str, path: Path, pattern: str) -> Path:
    """Return `path` if it holds a file matching `pattern`; otherwise raise DataError."""
    if not path.is_dir():
        raise _fail(name, root, f"missing folder {path}", tree)
    if next(path.glob(pattern), None) is None:
        raise _fail(name, root, f"no files matching {pattern} in {path}", tree)
    return path


def check_coco_root(path: str | Path, splits: Sequence[str] = ("train", "val")) -> dict[str, Path]:
    """COCO 2017: keys `root`, `<split>_ann` (instances JSON) and `<split>_img` (image folder)."""
    root = Path(path).expanduser().resolve()
    _check_splits(splits)
    found: dict[str, Path] = {"root": root}
    for split in splits:
        ann = root / "annotations" / f"instances_{split}2017.json"
        if not ann.is_file():
            raise _fail("COCO", root, f"missing file {ann}", COCO_TREE)
        found[f"{split}_ann"] = ann
        found[f"{split}_img"] = _require("COCO", root, COCO_TREE, root / f"{split}2017", "*.jpg")
    return found


def check_ade20k_root(path: str | Path, splits: Sequence[str] = ("train", "val")) -> dict[str, Path]:
    """ADE20K SceneParsing: keys `root`, `<split>_img` and `<split>_ann` folders."""
    root = Path(path).expanduser().resolve()
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    _check_splits(splits)
    found: dict[str, Path] = {"root": root}
    for split in splits:
        sub = _ADE20K_SPLITS[split]
        found[f"{split}_img"] = _require("ADE20K", root, ADE20K_TREE, root / "images" / sub, "*.jpg")
        found[f"{split}_ann"] = _require("ADE20K", root, ADE20K_TREE, root / "annotations" / sub, "*.png")
    return found


def check_cityscapes_root(path: str | Path, splits: Sequence[str] = ("train", "val")) -> dict[str, Path]:
    """Cityscapes: keys `root`, `<split>_img` (leftImg8bit/<split>) and `<split>_ann` (gtFine/<split>)."""
    root = Path(path).expanduser().resolve()
    _check_splits(splits)
    found: dict[str, Path] = {"root": root}
    for split in splits:
        found[f"{split}_img"] = _require(
            "Cityscapes", root, CITYSCAPES_TREE, root / "leftImg8bit" / split, "*/*_leftImg8bit.png"
        )
        found[f"{split}_ann"] = _require(
            "Cityscapes", root, CITYSCAPES_TREE, root / "gtFine" / split, "*/*_gtFine_labelIds.png"
        )
    return found


def check_imagenet_root(path: str | Path, splits: Sequence[str] = ("train", "val")) -> dict[str, Path]:
    """ImageNet-style class folders: keys `root` and `<split>` (folder of `<wnid>/` class folders)."""
    root = Path(path).expanduser().resolve()
    _check_splits(splits)
    found: dict[str, Path] = {"root": root}
    for split in splits:
        found[split] = _require("ImageNet", root, IMAGENET_TREE, root / split, "*/*.JPEG")
    return found
