"""FMNIST-Scenes: real Fashion-MNIST objects composited onto real photo crops.

Each scene is a `size` x `size` RGB crop of a photo bundled with scikit-image or scikit-learn,
darkened x0.5, with 1..`max_objects` tinted Fashion-MNIST items alpha-blended on top. A placement
is rejected when it would hide more than 30% of an earlier object. Boxes, areas and masks come from
the final (occluded) instance masks, so the labels are exact. Scene-train objects come from
Fashion-MNIST train images [0, 50000), scene-val from [50000, 60000), scene-test from the test set.
Randomness is numpy PCG64 only; resizing is plain numpy, so output does not depend on Pillow.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from bench.core.errors import ConfigError, DataError
from bench.data.fmnist import dataset_hash, load_fmnist

GENERATOR_VERSION = "1"
NAME = "fmnist-scenes"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
SPLITS = ("train", "val", "test")
_SKIMAGE_BACKGROUNDS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
)  # fmt: skip
_SKLEARN_BACKGROUNDS = ("china.jpg", "flower.jpg")
_VAL_START = 50_000
_MAX_OCCLUSION = 0.3
_MASK_THRESHOLD = 0.15
_MIN_PIXELS = 20
_TRIES_PER_OBJECT = 10


@dataclass(frozen=True)
class ScenesSpec:
    """What to generate; equal specs (with equal Fashion-MNIST files) give identical datasets."""

    n_train: int = 1000
    n_val: int = 200
    n_test: int = 300
    size: int = 64
    max_objects: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("n_train", "n_val", "n_test"):
            if getattr(self, field) < 1:
                raise ConfigError(field, f"must be an integer >= 1, got {getattr(self, field)}")
        if not 32 <= self.size <= 256:
            raise ConfigError("size", f"must be in 32..256, got {self.size}")
        if not 1 <= self.max_objects <= 8:
            raise ConfigError("max_objects", f"must be in 1..8, got {self.max_objects}")
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")

    def content_key(self, data_root: str | Path | None = None) -> str:
        """sha256 of the spec, GENERATOR_VERSION and the Fashion-MNIST dataset hash."""
        payload = {
            "spec": dataclasses.asdict(self),
            "generator_version": GENERATOR_VERSION,
            "fmnist": dataset_hash(data_root),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def count(self, split: str) -> int:
        """Number of scenes in `split`."""
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


@dataclass
class Scene:
    """One generated scene: RGB image, semantic label map, and (category_id, mask) per object."""

    image: np.ndarray
    label: np.ndarray
    instances: list[tuple[int, np.ndarray]]


def default_root() -> Path:
    """`$SMARTBENCH_CACHE/scenes`, or `~/.cache/smartbench/scenes`."""
    base = os.environ.get("SMARTBENCH_CACHE") or Path.home() / ".cache" / "smartbench"
    return Path(base).expanduser() / "scenes"


@functools.lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    """The bundled RGB photos used as backgrounds, in a fixed order.

    scikit-learn's two sample photos (what `load_sample_images` returns) are read straight from
    the package folder: importing sklearn itself costs seconds.
    """
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in _SKIMAGE_BACKGROUNDS]
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-learn is not installed; it provides two FMNIST-Scenes backgrounds")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "images"
    photos += [np.asarray(Image.open(folder / name).convert("RGB")) for name in _SKLEARN_BACKGROUNDS]
    return tuple(np.ascontiguousarray(p[..., :3]) for p in photos)


def _resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float array to (size, size), half-pixel centres."""

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        return lo, np.minimum(lo + 1, n - 1), pos - lo

    y0, y1, wy = axis(image.shape[0])
    x0, x1, wx = axis(image.shape[1])
    rows = image[y0] * (1 - wy)[:, None] + image[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


def _make_scene(
    rng: np.random.Generator, objects: np.ndarray, labels: np.ndarray, size: int, max_objects: int
) -> Scene:
    """Compose one scene; always holds at least one object."""
    backgrounds = _backgrounds()
    photo = backgrounds[rng.integers(len(backgrounds))]
    y0, x0 = rng.integers(photo.shape[0] - size + 1), rng.integers(photo.shape[1] - size + 1)
    image = photo[y0 : y0 + size, x0 : x0 + size].astype(np.float64) * 0.5
    inst = np.zeros((size, size), np.int64)
    full_area = [0]  # unoccluded pixel count per instance id; id 0 is background
    cats: list[int] = []
    smin, smax = round(size * 20 / 64), round(size * 36 / 64)
    target = int(rng.integers(1, max_objects + 1))
    attempts = 0
    while len(cats) < target and (attempts < target * _TRIES_PER_OBJECT or not cats):
        attempts += 1
        i = int(rng.integers(len(objects)))
        alpha = _resize_bilinear(objects[i] / 255.0, int(rng.integers(smin, smax + 1)))
        mask = alpha > _MASK_THRESHOLD
        if mask.sum() < _MIN_PIXELS:
            continue
        ys, xs = np.nonzero(mask)
        alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        mask = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        h, w = mask.shape
        py, px = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
        window = inst[py : py + h, px : px + w]
        visible = np.bincount(inst.ravel(), minlength=len(full_area))
        hidden = np.bincount(window[mask], minlength=len(full_area))
        if np.any(visible[1:] - hidden[1:] < (1 - _MAX_OCCLUSION) * np.array(full_area[1:])):
            continue
        colour = rng.uniform(0.5, 1.0, 3) * 255
        a = alpha[mask][:, None]
        region = image[py : py + h, px : px + w]
        region[mask] = a * colour + (1 - a) * region[mask]
        cats.append(int(labels[i]) + 1)
        full_area.append(int(mask.sum()))
        window[mask] = len(cats)
    label = np.array([0] + cats, np.uint8)[inst]
    instances = [(c, inst == j) for j, c in enumerate(cats, 1)]
    return Scene(np.round(image).clip(0, 255).astype(np.uint8), label, instances)


def generate_split(spec: ScenesSpec, split: str, data_root: str | Path | None = None) -> list[Scene]:
    """Generate the scenes of one split ("train", "val" or "test") in memory."""
    if split not in SPLITS:
        raise ConfigError("split", f"unknown scene split {split!r}; allowed: {', '.join(SPLITS)}")
    images, labels = load_fmnist("test" if split == "test" else "train", data_root)
    if split == "train":
        images, labels = images[:_VAL_START], labels[:_VAL_START]
    elif split == "val":
        images, labels = images[_VAL_START:], labels[_VAL_START:]
    rng = np.random.Generator(np.random.PCG64([spec.seed, SPLITS.index(split)]))
    return [_make_scene(rng, images, labels, spec.size, spec.max_objects) for _ in range(spec.count(split))]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        "area": int(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
    }


def _write_split(out: Path, split: str, scenes: list[Scene]) -> dict[str, int]:
    """Write one split as COCO (coco/) and mmseg (seg/) folders; return its counts."""
    dirs = [out / "coco" / split, out / "seg" / "img_dir" / split, out / "seg" / "ann_dir" / split]
    for d in dirs:
        d.mkdir(parents=True)
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, 1):
        name = f"{image_id:06d}.png"
        png = _png(scene.image)
        (dirs[0] / name).write_bytes(png)
        (dirs[1] / name).write_bytes(png)
        (dirs[2] / name).write_bytes(_png(scene.label))
        height, width = scene.label.shape
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category_id, mask in scene.instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_id, mask))
    categories = [{"id": i, "name": n, "supercategory": "fashion"} for i, n in enumerate(CLASS_NAMES, 1)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    ann_dir = out / "coco" / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    (ann_dir / f"instances_{split}.json").write_text(json.dumps(coco))
    return {"images": len(images), "annotations": len(annotations)}


def files_hash(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file under `folder` except manifest.json."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _manifest_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def build_scenes(spec: ScenesSpec, root: str | Path | None = None, data_root: str | Path | None = None) -> Path:
    """Write the dataset to `root/fmnist-scenes-<key[:12]>/` (atomically) and return that folder.

    A folder whose manifest already holds the same key is reused without rewriting anything.
    """
    root = Path(root) if root is not None else default_root()
    key = spec.content_key(data_root)
    target = root / f"{NAME}-{key[:12]}"
    if _manifest_key(target) == key:
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    tmp.chmod(0o755)
    try:
        counts = {s: _write_split(tmp, s, generate_split(spec, s, data_root)) for s in SPLITS}
        manifest = {
            "name": NAME,
            "generator_version": GENERATOR_VERSION,
            "key": key,
            "spec": dataclasses.asdict(spec),
            "fmnist_hash": dataset_hash(data_root),
            "counts": counts,
            "files_sha256": files_hash(tmp),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if target.exists():  # a stale or broken copy under the same key
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same dataset first
            if _manifest_key(target) != key:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
