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


# -- content checks (before any training) -------------------------------------------------------
# Each raises DataError with one message naming the problem and its fix. They read what a run would
# trip over hours in: annotation categories, label ids, image/label pairs, split sizes.

LABEL_SAMPLE = 64  # label files read per split (evenly spaced over the sorted list) by check_label_files


def coco_categories(path: Path) -> list[dict]:
    """The ``categories`` list of a COCO annotation file. The official files end with it, so the last
    megabyte is tried first; the whole file is parsed only when it is not there."""
    import json

    size = path.stat().st_size
    with path.open("rb") as file:
        file.seek(max(0, size - (1 << 20)))
        tail = file.read().decode("utf-8", errors="replace")
    at = tail.rfind('"categories"')
    if at >= 0:
        start = tail.find("[", at)
        try:
            value, _ = json.JSONDecoder().raw_decode(tail, start)
            if isinstance(value, list):
                return value
        except ValueError:
            pass  # "categories" inside a string, or cut: parse the whole file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(
            f"COCO annotation file {path} is not valid JSON ({err}); re-extract annotations_trainval2017.zip"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise DataError(f"COCO annotation file {path} has no 'categories' list; is it an instances_*.json file?")
    return data["categories"]


def check_coco_categories(path: Path, classes: Sequence[str]) -> None:
    """The file's category names are exactly the task's classes (mmdet maps category ids by name)."""
    names = [str(c.get("name")) for c in coco_categories(path) if isinstance(c, dict)]
    missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
    if missing or extra or len(names) != len(set(names)):
        problems = []
        if missing:
            problems.append(f"{len(missing)} of the task's classes missing ({', '.join(missing[:5])})")
        if extra:
            problems.append(f"{len(extra)} categories the task does not have ({', '.join(extra[:5])})")
        if len(names) != len(set(names)):
            problems.append("duplicate category names")
        raise DataError(
            f"COCO annotation file {path}: its categories do not match the task's {len(classes)} classes: "
            f"{'; '.join(problems)}. Use the official instances_*2017.json (80 categories), or a task whose "
            "classes are your categories"
        )


def sample_evenly(items: Sequence, count: int) -> list:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def check_label_files(
    name: str, files: Sequence[Path], allowed: set[int], fix: str, sample: int = LABEL_SAMPLE
) -> None:
    """Label maps (PNG) are single-channel and hold only ``allowed`` ids; ``sample`` files are read."""
    import numpy as np
    from PIL import Image

    for path in sample_evenly(sorted(files), sample):
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{name}: label file {path} is a {image.mode} image, expected one channel of class ids. {fix}"
                )
            ids = np.unique(np.asarray(image))
        outside = sorted(int(i) for i in ids if int(i) not in allowed)
        if outside:
            raise DataError(
                f"{name}: label file {path} holds ids {outside[:8]} outside the dataset's classes "
                f"({min(allowed)}..{max(i for i in allowed if i != 255)}{' or 255' if 255 in allowed else ''}). {fix}"
            )


def check_pairs(name: str, images: dict[str, Path], labels: dict[str, Path], split: str, fix: str) -> None:
    """Every image has its label file and every label file its image (keys: the shared file stem)."""
    unlabelled, orphan = sorted(set(images) - set(labels)), sorted(set(labels) - set(images))
    if unlabelled or orphan:
        what = []
        if unlabelled:
            what.append(f"{len(unlabelled)} images without a label file (e.g. {images[unlabelled[0]]})")
        if orphan:
            what.append(f"{len(orphan)} label files without an image (e.g. {labels[orphan[0]]})")
        raise DataError(f"{name} {split} split: {'; '.join(what)}. {fix}")
