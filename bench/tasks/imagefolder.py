"""Image classification from class folders on disk: ``imagefolder`` (your data) and ``imagenet-resnet50``.

Both read a torchvision ``ImageFolder``-style tree by path (class index = position of the class
folder name in the sorted list of ``train/`` class folders) and train a timm model
(``pretrained=False``) from scratch with the project's native trainer. See docs/your-data.md.

``imagefolder`` (``smartbench run --task imagefolder --data PATH --model timm:NAME ...``)::

    PATH/train/<class>/*.png|jpg|...     required
    PATH/val/<class>/...                 optional: the validation split (hyper-parameter choice)
    PATH/test/<class>/...                optional: the split the metric is reported on

* ``test`` = ``PATH/test`` if present, else ``PATH/val``; at least one of them is required.
* ``val`` = ``PATH/val`` when both ``val/`` and ``test/`` are present; otherwise it is carved
  out of ``train/``: in every class, a fixed 10 % of its images (``holdout_fraction``; at least
  one image of a class with two or more, never all of them), chosen by a permutation with seed 0
  independent of the run seed (like the Fashion-MNIST splits), and removed from training.
* The task identity (so the run id and the dense-cache key) holds a cheap fingerprint of the
  data: the class names and the number of images of every class in every split folder (file
  contents are not hashed), plus the image size and the holdout. Moving the folder keeps the id.

``imagenet-resnet50``: ImageNet-1k from ``--data PATH`` or ``$SMARTBENCH_IMAGENET``
(``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``, checked by
:func:`bench.data.layouts.check_imagenet_root`); ``val`` = 10 images per class (10k) held out of
train, ``test`` = the official val set. See :class:`ImagenetResnet50` for the recipe.

Transforms (torchvision): train ``RandomResizedCrop(image_size, scale=crop_scale)`` + horizontal
flip; eval ``Resize(eval_resize)`` + ``CenterCrop(image_size)``; ImageNet mean/std for both.
Determinism: the order of an epoch and one random seed per image are drawn from a generator
seeded with (run seed, epoch); each image's random crop/flip runs under its own seed
(``torch.random.fork_rng``), so a batch depends only on (seed, epoch, position), whatever the
number of DataLoader workers, and the trainer's global RNG is untouched.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from functools import cached_property
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.device import device_of
from bench.core.errors import ConfigError, DataError
from bench.data.layouts import IMAGENET_TREE
from bench.tasks.base import Budget, Task, register_task, seeded
from bench.tasks.vit import IMAGENET_ENV, IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")

IMAGEFOLDER_TREE = """\
<PATH>/
  train/<class>/*.png|*.jpg     (required; one folder per class)
  val/<class>/...               (optional; carved from train when absent or when test/ is absent)
  test/<class>/...              (optional; test = test/ if present, else val/)"""


def default_workers() -> int:
    """DataLoader worker processes: none on a 2-core machine, up to 4 on larger ones."""
    return max(0, min(4, (os.cpu_count() or 1) // 2 - 1))


def scan_class_folders(folder: Path, what: str, tree: str) -> dict[str, list[str]]:
    """{class name: sorted image file names} of ``folder``; DataError for no classes or an empty class."""
    if not folder.is_dir():
        raise DataError(f"{what}: missing folder {folder}.\nExpected layout:\n{tree}")
    classes: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            with os.scandir(entry.path) as files:
                names = sorted(f.name for f in files if f.name.lower().endswith(IMAGE_EXTENSIONS) and f.is_file())
            if not names:
                raise DataError(
                    f"{what}: class folder {entry.path} holds no images ({', '.join(IMAGE_EXTENSIONS)}).\n"
                    f"Expected layout:\n{tree}"
                )
            classes[entry.name] = names
    if not classes:
        raise DataError(f"{what}: no class folders in {folder}.\nExpected layout:\n{tree}")
    return classes


class ImageSamples(torch.utils.data.Dataset):
    """(path, label) pairs read with PIL as RGB; an index ``(i, seed)`` runs the transform under ``seed``."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        from PIL import Image

        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB")
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class ImageFolderTask(Task):
    """Class-folder image classification; subclasses say where the split folders are (``folders``)."""

    family = "classification"
    metric_name = "top1"
    takes_data = True
    image_size = 64
    eval_resize: int | None = None  # None: round(image_size / 0.875), the ImageNet 224/256 ratio
    crop_scale = (0.08, 1.0)
    holdout_fraction = 0.1  # share of every train class carved out as val (when val is carved)
    holdout_per_class: int | None = None  # or a fixed number of images per class
    label_smoothing = 0.0
    eval_batch = 256
    workers = default_workers()
    tree = IMAGEFOLDER_TREE
    fingerprint_in_identity = True

    # -- where the data is -------------------------------------------------------------------
    def folders(self) -> dict[str, Path | None]:
        """{"train": folder, "val": folder or None (carve from train), "test": folder}; DataError if absent."""
        raise NotImplementedError

    @cached_property
    def scanned(self) -> dict[str, dict[str, list[str]]]:
        """{split: {class: file names}} of every split folder; the class list is train's."""
        folders = self.folders()
        scanned = {}
        for split, folder in folders.items():
            if folder is None:
                continue
            scanned[split] = scan_class_folders(folder, f"{self.name} {split} split", self.tree)
            unknown = sorted(set(scanned[split]) - set(scanned.get("train", {})))
            if split != "train" and unknown:
                raise DataError(
                    f"{self.name}: class folder(s) {', '.join(unknown[:5])} of {folder} are not in "
                    f"{folders['train']} (every class needs training images)"
                )
        self.check_classes(scanned["train"], folders["train"])
        return scanned

    def check_classes(self, classes: dict[str, list[str]], folder: Path) -> None:
        """Hook: raise DataError if the train classes do not fit the task."""

    @property
    def classes(self) -> list[str]:
        return list(self.scanned["train"])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Cheap identity of the data: split folder names, class names and image counts (no file hashing)."""
        folders, digest = self.folders(), hashlib.sha256()
        for split, classes in self.scanned.items():
            counts = ",".join(f"{name}={len(files)}" for name, files in classes.items())
            digest.update(f"{split}<-{folders[split].name}:{counts};".encode())
        return digest.hexdigest()[:16]

    def dataset_hash(self) -> str:
        return self.fingerprint()

    def identity(self) -> dict:
        identity = {
            **super().identity(),
            "image_size": self.image_size,
            "eval_resize": self.resize,
            "crop_scale": list(self.crop_scale),
            "holdout": self.holdout_per_class if self.holdout_per_class is not None else self.holdout_fraction,
        }
        if self.label_smoothing:
            identity["label_smoothing"] = self.label_smoothing
        if self.fingerprint_in_identity:
            identity["data"] = self.fingerprint()
        return identity

    # -- splits ------------------------------------------------------------------------------
    def _samples(self, split: str) -> list[tuple[str, int]]:
        folder, index = self.folders()[split], {name: i for i, name in enumerate(self.classes)}
        return [
            (str(folder / name / file), index[name]) for name, files in self.scanned[split].items() for file in files
        ]

    def _holdout(self, count: int) -> int:
        if count < 2:
            return 0
        n = self.holdout_per_class if self.holdout_per_class is not None else round(self.holdout_fraction * count)
        return min(max(1, n), count - 1)

    @cached_property
    def samples(self) -> dict[str, list[tuple[str, int]]]:
        """{"train", "val", "test": [(path, label)]}; val carved from train when there is no val folder."""
        folders = self.folders()
        train = self._samples("train")
        test = self._samples("test")
        if folders["val"] is not None:
            return {"train": train, "val": self._samples("val"), "test": test}
        generator, val_idx, start = seeded(0), [], 0  # fixed: the same carving for every run seed
        for files in self.scanned["train"].values():
            order = torch.randperm(len(files), generator=generator)[: self._holdout(len(files))]
            val_idx += sorted(start + int(i) for i in order)
            start += len(files)
        held = set(val_idx)
        return {
            "train": [s for i, s in enumerate(train) if i not in held],
            "val": [train[i] for i in val_idx],
            "test": test,
        }

    def check_data(self) -> None:
        """Every split non-empty; with a fixed holdout per class, every class keeps a training image."""
        folders, scanned = self.folders(), self.scanned
        if folders["val"] is None and self.holdout_per_class is not None:
            need = self.holdout_per_class + 1
            short = {name: len(files) for name, files in scanned["train"].items() if len(files) < need}
            if short:
                name, count = min(short.items(), key=lambda item: item[1])
                raise DataError(
                    f"{self.name}: {len(short)} of {len(scanned['train'])} classes in {folders['train']} have fewer "
                    f"than {need} images (e.g. {name}: {count}); the val split holds out {self.holdout_per_class} "
                    f"images of every class and training needs at least one more: add images to those classes"
                )
        for split in SPLITS:
            if not self.samples[split]:
                where = f"carved from {folders['train']}" if split == "val" and folders["val"] is None else "read"
                raise DataError(
                    f"{self.name}: the {split} split ({where}) is empty; every class needs at least 2 training "
                    f"images to carve a val split, or give a val/ folder beside test/.\nExpected layout:\n{self.tree}"
                )

    @property
    def resize(self) -> int:
        return self.eval_resize or round(self.image_size / 0.875)

    def transform(self, train: bool):
        from torchvision import transforms as T

        if train:
            steps = [T.RandomResizedCrop(self.image_size, scale=tuple(self.crop_scale)), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(self.resize), T.CenterCrop(self.image_size)]
        return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def dataset(self, split: str, train: bool = False) -> ImageSamples:
        return ImageSamples(self.samples[split], self.transform(train))

    def _loader(self, dataset, batches: list[list]):
        from torch.utils.data import DataLoader

        return DataLoader(  # its own generator: the workers' base seed does not draw from the global RNG
            dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            generator=seeded(0),
        )

    # -- the native loop ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        name = self.model_name.removeprefix("timm:")
        try:
            return timm.create_model(name, pretrained=False, in_chans=3, num_classes=self.num_classes)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ConfigError("model", f"unknown timm model '{name}' (see timm.list_models())") from None
            raise

    def example_input(self) -> Tensor:
        return torch.zeros(2, 3, self.image_size, self.image_size)

    def steps_per_epoch(self) -> int:
        """Full batches per epoch (the last partial one is dropped; one smaller batch if train < batch)."""
        return max(1, len(self.samples["train"]) // self.budget.batch_size)

    def train_batches(self, epoch: int, seed: int):
        yield from self.shard_batches(epoch, seed, 0, 1)

    def shard_batches(self, epoch: int, seed: int, rank: int, world: int):
        """Only the rank's images of every batch are decoded (``[rank::world]`` of its keys, each
        with its own augmentation seed: the same samples as slicing the decoded batch)."""
        n, bs = len(self.samples["train"]), self.budget.batch_size
        generator = seeded(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        image_seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        keys = list(zip(order, image_seeds))
        batches = [keys[i * bs : (i + 1) * bs][rank::world] for i in range(self.steps_per_epoch())]
        yield from self._loader(self.dataset("train", train=True), batches)

    def calibration_batches(self) -> list:
        """The first ``calib_batches`` batches of train in a fixed order (seed 0), eval transform."""
        n, bs = len(self.samples["train"]), self.budget.batch_size
        order = torch.randperm(n, generator=seeded(0)).tolist()
        batches = [order[i * bs : (i + 1) * bs] for i in range(min(self.budget.calib_batches, self.steps_per_epoch()))]
        return list(self._loader(self.dataset("train"), batches))

    def forward(self, model: nn.Module, batch) -> Tensor:
        return model(batch[0].to(device_of(model), non_blocking=True))

    def loss(self, model: nn.Module, batch) -> Tensor:
        target = batch[1].to(device_of(model), non_blocking=True)
        return F.cross_entropy(self.forward(model, batch), target, label_smoothing=self.label_smoothing)

    def trivial_metric(self) -> float:
        """Top-1 of always predicting the test split's most frequent class."""
        labels = Counter(label for _, label in self.samples["test"])
        return 100.0 * max(labels.values()) / sum(labels.values())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> float:
        n, bs = len(self.samples[split]), self.eval_batch
        was_training = model.training
        model.eval()
        correct = 0
        batches = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        for images, labels in self._loader(self.dataset(split), batches):
            correct += int((self.forward(model, (images, labels)).argmax(1).cpu() == labels).sum())
        model.train(was_training)
        return 100.0 * correct / n


@register_task
class ImageFolder(ImageFolderTask):
    """Your image folder (``--data PATH``, layout in the module docstring) with a timm model (``--model timm:NAME``)."""

    name = "imagefolder"
    description = "your class-folder images (--data PATH: train/<class>/*.png|jpg [val/ test/]); timm model"
    default_model = "resnet18"
    crop_scale = (0.25, 1.0)  # milder than ImageNet's 0.08 for small datasets and short budgets
    budget = Budget(dense_epochs=10, prune_epochs=3, finetune_epochs=2, batch_size=64, lr=0.1, prune_lr=0.02)

    def __init__(self, model: str | None = None, data: str | None = None):
        if data is None:
            raise ConfigError(
                "data", f"task '{self.name}' reads your image folder: pass --data PATH with\n{IMAGEFOLDER_TREE}"
            )
        super().__init__(model, data)

    def folders(self) -> dict[str, Path | None]:
        root = Path(self.data).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"{self.name}: no folder {root}.\nExpected layout:\n{IMAGEFOLDER_TREE}")
        present = {split: root / split for split in SPLITS if (root / split).is_dir()}
        if "train" not in present:
            raise DataError(f"{self.name} at {root}: missing folder {root / 'train'}.\nExpected layout:\n{self.tree}")
        if "val" not in present and "test" not in present:
            raise DataError(
                f"{self.name} at {root}: no val/ or test/ folder to report the metric on.\nExpected layout:\n{self.tree}"
            )
        test = present.get("test", present.get("val"))
        val = present["val"] if "test" in present and "val" in present else None
        return {"train": present["train"], "val": val, "test": test}


@register_task
class ImagenetResnet50(ImageFolderTask):
    """ResNet-50 on ImageNet-1k, the standard 90-epoch recipe. CI runs it end to end on a
    miniature 1000-class copy at 16x16 (tests/test_fullsize.py).

    Data: ``--data PATH`` or ``$SMARTBENCH_IMAGENET`` (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``,
    checked by :func:`bench.data.layouts.check_imagenet_root`; exactly ``expected_classes`` class
    folders, so another dataset cannot take ImageNet's run ids). ``val`` = 10 images per class
    (10k, the size of imagenet-deit's holdout) held out of train with seed 0; ``test`` = official val.
    Transforms: train RandomResizedCrop 224 (scale 0.08-1) + flip; eval resize 256, center crop 224;
    ImageNet mean/std. Model: timm ``resnet50`` (``pretrained=False``, 1000 classes); ``--model
    timm:NAME`` swaps in another timm model. The identity holds no data fingerprint (ImageNet is one
    dataset; the fingerprint goes into the row's provenance), so ``suite plan`` gives the real run
    ids without the data present.

    Budget (``Budget``; SGD, cosine, as every stage of the native trainer):

    * dense: 90 epochs, batch 256, lr 0.1 (0.1 x batch / 256), momentum 0.9, weight decay 1e-4 --
      the torchvision / Goyal et al. ResNet-50 recipe (with a cosine instead of a step schedule, as
      in the SequentialAttention++ block-sparsity setup: 90 epochs, SGD, cosine; research notes
      reference-numbers.md section 2);
    * pruning: 30 epochs -- Distiller's AGP 1x1x8 block-pruning schedule for ResNet-50 prunes over
      epochs 0-30 (reference-numbers.md section 2); AC/DC's 100-epoch plan
      (baselines.md section 4.1) rescales onto this stage (``baselines/acdc.py``);
    * fine-tuning: 15 epochs -- AC/DC's final compressed phase (epochs 85-99, 15 % of its run;
      SequentialAttention++ also ends with a 15 % final sparse phase);
    * pruning/fine-tuning lr 0.01, cosine over both stages: fine-tuning from a trained model at
      0.01 rather than 0.001 (Wang et al. 2023 re-implementation of L1 pruning, benchmark-protocol.md
      section 1), the same for every pruner (the same recipe for every method, section 8 rule 1).

    SMART's own stage lengths are not public (smart_paper.md), so they are not reproduced here.
    """

    name = "imagenet-resnet50"
    description = f"ResNet-50 on ImageNet-1k (--data PATH or ${IMAGENET_ENV}); 90-epoch recipe; GPU clusters only"
    default_model = "resnet50"
    image_size = 224
    eval_resize = 256
    holdout_per_class = 10
    expected_classes = 1000
    workers = 8
    fingerprint_in_identity = False
    # ILSVRC-2012: 1,281,167 train images less the 10 x 1000 held out as val; test = the 50,000 val images
    nominal_sizes = {"train": 1_271_167, "val": 10_000, "test": 50_000}
    budget = Budget(
        dense_epochs=90,
        prune_epochs=30,
        finetune_epochs=15,
        batch_size=256,
        lr=0.1,
        prune_lr=0.01,
        weight_decay=1e-4,
        momentum=0.9,
        calib_batches=8,
    )

    tree = IMAGENET_TREE

    @property
    def num_classes(self) -> int:
        return self.expected_classes  # the model never needs the data (export, suite plan)

    def folders(self) -> dict[str, Path | None]:
        from bench.data.layouts import check_imagenet_root

        root = self.data or os.environ.get(IMAGENET_ENV)
        if not root:
            raise DataError(
                f"{self.name} needs an ImageNet copy: pass --data PATH or set ${IMAGENET_ENV}.\n"
                f"Expected layout:\n{self.tree}"
            )
        found = check_imagenet_root(root, ("train", "val"))
        return {"train": found["train"], "val": None, "test": found["val"]}

    def check_classes(self, classes: dict[str, list[str]], folder: Path) -> None:
        if len(classes) != self.expected_classes:
            raise DataError(
                f"{self.name}: {len(classes)} class folders in {folder}, expected {self.expected_classes} "
                "(ImageNet-1k); for another class-folder dataset use --task imagefolder"
            )
