"""Vision transformers for N:M pruning: timm ``VisionTransformer`` on Fashion-MNIST, DeiT on ImageNet.

Covered layers: every ``nn.Linear`` inside the transformer blocks — the fused ``attn.qkv``,
``attn.proj``, ``mlp.fc1`` and ``mlp.fc2`` (``include = ["blocks.*"]``,
``keep_first_last = False``). The patch embedding (a Conv2d on raw pixels) and the
classification head stay dense, as in SR-STE / ASP / Wanda for ViTs. Override the class
attributes ``include`` / ``exclude`` in a subclass to change the coverage.

Fashion-MNIST tasks (1x28x28, 7x7 patches -> 16 tokens + class token) reuse the data splits of
:class:`bench.tasks.classification.FashionMNISTTask`. The default architecture is built from
``vit_tiny_patch16_224`` with the shape in ``arch`` (embedding width a multiple of 16, so N:M
with M in {4, 8, 16} tiles every covered layer and the 2:4 kernels accept every weight);
``--model timm:NAME`` swaps in another timm ViT, built with ``img_size=28, patch_size=7`` and
its own width/depth. Trained from scratch by the project's trainer (cosine schedule): the dense
stage with AdamW (``dense_optimizer``), and so are the pruning and fine-tuning stages (protocol
v3's one recipe per task, ``Budget.stage_optimizer``; v1 and v2 trained them with SGD at
prune_lr 0.01). The stages' peak lr is 0.2 x the dense peak lr (the classification tasks' ratio,
0.02 / 0.1), not tuned: a suite's lr multipliers search around it.

``imagenet-deit``: DeiT-Tiny (``--model timm:deit_small_patch16_224`` for DeiT-Small) on a
user's ImageNet copy found through ``$SMARTBENCH_IMAGENET`` (layout checked by
:func:`bench.data.layouts.check_imagenet_root`). CI runs it end to end on a miniature 1000-class copy at 16x16
(tests/test_fullsize.py); see docs/vit-nm.md.
"""

from __future__ import annotations

import os
from functools import cached_property

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.device import device_of
from bench.core.errors import ConfigError, DataError
from bench.tasks.base import Budget, Task, register_task, seeded
from bench.tasks.classification import FashionMNISTTask

BLOCK_LINEARS = ["blocks.*", "*.blocks.*"]  # ViT/DeiT blocks; Swin-style stages (layers.N.blocks.M)


class FashionMNISTViT(FashionMNISTTask):
    family = "vit"
    default_model = "vit_tiny_patch16_224"
    include = BLOCK_LINEARS
    keep_first_last = False
    patch_size = 7
    arch: dict = {}  # embed_dim, depth, num_heads of the default model

    def model_kwargs(self) -> dict:
        shape = dict(img_size=28, patch_size=self.patch_size)
        if self.model_name.removeprefix("timm:") == self.default_model:
            shape.update(self.arch)
        return shape

    def identity(self) -> dict:
        return {**super().identity(), "model_kwargs": self.model_kwargs()}


@register_task
class FmnistViT(FashionMNISTViT):
    name = "fmnist-vit"
    description = "timm ViT (width 96, depth 4, 3 heads, 7x7 patches) on a 10k Fashion-MNIST subset"
    arch = dict(embed_dim=96, depth=4, num_heads=3)
    # dense: AdamW lr 1e-3, wd 0.05 -- 84.86 val top-1 vs 82.82 with SGD lr 0.05 (seed 0, 15 epochs, val split)
    dense_optimizer = "AdamW"
    budget = Budget(
        dense_epochs=15, prune_epochs=2, finetune_epochs=2, batch_size=64, lr=1e-3, prune_lr=2e-4, weight_decay=1e-4
    )
    # Issue 32 item 6 and the leaderboard-v3 column pilot (bench/configs/suites/leaderboard-v3.yaml,
    # header: N:M magnitude and random per row against the no-mask control, 3 seeds, val top-1):
    # at 2:4 and 1:4 uniform magnitude sits at the no-mask control (mean gap -0.21 and +0.07
    # points, below the protocol's 1-point band; in leaderboard v2 all 9 competing labels at 2:4
    # lay within 0.48 test points): the model is data-limited there (dense test 83.5-84.1, the
    # small CNN 89.0 on the same data), so those columns cannot rank pruners. 1:8 carries signal
    # (gap +2.58, paired SD 0.67: 6 seeds reach an MDE of 1.0) and enters the aggregates; 1:16
    # (gap +7.06, SD 2.29) is left to the power criterion.
    no_signal = {
        "nm:2:4": "uniform N:M magnitude at the no-mask control (v3 pilot gap -0.21 val points; v2's labels within 0.48 test points)",
        "nm:1:4": "uniform N:M magnitude at the no-mask control (v3 pilot gap +0.07 val points)",
    }


@register_task
class FmnistViTTiny(FashionMNISTViT):
    name = "fmnist-vit-tiny"
    description = "timm ViT (width 64, depth 2, 2 heads) on a fixed 2k Fashion-MNIST subset (smoke tests)"
    arch = dict(embed_dim=64, depth=2, num_heads=2)
    train_size = 2_000
    val_size = 1_000
    test_size = 1_000
    dense_optimizer = "AdamW"  # 68.4 val top-1 vs 65.2 with SGD lr 0.05 (seed 0, val split)
    budget = Budget(
        dense_epochs=6, prune_epochs=2, finetune_epochs=1, batch_size=32, lr=1e-3, prune_lr=2e-4, weight_decay=1e-4
    )


# -- ImageNet (full size, by path) -------------------------------------------------------

IMAGENET_ENV = "SMARTBENCH_IMAGENET"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_root() -> dict:
    """Resolved ImageNet folders from ``$SMARTBENCH_IMAGENET``; DataError if unset or malformed."""
    from bench.data.layouts import check_imagenet_root

    root = os.environ.get(IMAGENET_ENV)
    if not root:
        raise DataError(
            f"imagenet-deit needs ${IMAGENET_ENV} pointing at an ImageNet copy (train/ and val/ class folders)"
        )
    return check_imagenet_root(root, ("train", "val"))


@register_task
class ImagenetDeiT(Task):
    """DeiT on ImageNet-1k at 224x224; ``val`` = 10k images held out of train, ``test`` = official val."""

    name = "imagenet-deit"
    family = "vit"
    metric_name = "top1"
    description = f"DeiT-Tiny/Small on ImageNet-1k (${IMAGENET_ENV}); N:M on block Linears; GPU clusters only"
    default_model = "deit_tiny_patch16_224"
    include = BLOCK_LINEARS
    keep_first_last = False
    holdout = 10_000
    num_classes = 1000
    image_size = 224  # timm's img_size; train RandomResizedCrop and eval CenterCrop size
    eval_resize = 256
    # ILSVRC-2012: 1,281,167 train images less the 10,000 held out as val; test = the 50,000 val images
    nominal_sizes = {"train": 1_271_167, "val": 10_000, "test": 50_000}
    workers = 8
    eval_batch = 256
    dense_optimizer = "AdamW"  # DeiT: AdamW, lr 5e-4 x batch / 512, weight decay 0.05
    budget = Budget(
        dense_epochs=300,
        prune_epochs=30,
        finetune_epochs=20,
        batch_size=256,
        lr=2.5e-4,
        prune_lr=5e-5,
        weight_decay=5e-5,
        calib_batches=8,
    )

    def build_model(self) -> nn.Module:
        name = self.model_name.removeprefix("timm:")
        if not name.startswith(("deit_", "vit_")):
            raise ConfigError(
                "model",
                f"imagenet-deit takes a timm DeiT/ViT name (deit_tiny_patch16_224, "
                f"deit_small_patch16_224, ...), got '{name}'",
            )
        size = {} if self.image_size == 224 else {"img_size": self.image_size}
        return timm.create_model(name, pretrained=False, num_classes=self.num_classes, **size)

    def example_input(self) -> Tensor:
        return torch.zeros(2, 3, self.image_size, self.image_size)

    def identity(self) -> dict:
        identity = super().identity()
        if self.image_size != 224:  # absent at the default: ids from before the field existed are unchanged
            identity["image_size"] = self.image_size
        return identity

    def check_data(self) -> None:
        """``num_classes`` class folders in train (the model's outputs), val's classes among them, and more
        train images than the ``holdout`` (so the train split is not empty)."""
        folders = imagenet_root()
        classes = {}
        for split in ("train", "val"):
            with os.scandir(folders[split]) as entries:
                classes[split] = {e.name: e.path for e in entries if e.is_dir()}
        if len(classes["train"]) != self.num_classes:
            raise DataError(
                f"{self.name}: {len(classes['train'])} class folders in {folders['train']}, expected "
                f"{self.num_classes} (ImageNet-1k: one folder per wnid)"
            )
        unknown = sorted(set(classes["val"]) - set(classes["train"]))
        if unknown:
            raise DataError(
                f"{self.name}: val class folder(s) {', '.join(unknown[:5])} of {folders['val']} are not train "
                "classes; sort val into the train wnid folders (e.g. with the devkit's valprep.sh)"
            )
        count = sum(len(os.listdir(path)) for path in classes["train"].values())
        if count <= self.holdout:
            raise DataError(
                f"{self.name}: {count} train images in {folders['train']}, but {self.holdout} are held out as val: "
                "the train split would be empty; use the full ImageNet train set"
            )

    def dataset_hash(self) -> str:
        """Cheap identity of the user's copy: class list and image counts (no file hashing)."""
        import hashlib

        folders = imagenet_root()
        digest = hashlib.sha256()
        for split in ("train", "val"):
            classes = sorted(p.name for p in folders[split].iterdir() if p.is_dir())
            digest.update(f"{split}:{len(classes)}:{','.join(classes)};".encode())
        return digest.hexdigest()[:16]

    def _transform(self, train: bool):
        from torchvision import transforms as T

        if train:
            steps = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(self.eval_resize), T.CenterCrop(self.image_size)]
        return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    @cached_property
    def splits(self) -> dict:
        from torch.utils.data import Subset
        from torchvision.datasets import ImageFolder

        folders = imagenet_root()
        train_aug = ImageFolder(str(folders["train"]), transform=self._transform(True))
        train_plain = ImageFolder(str(folders["train"]), transform=self._transform(False))
        order = torch.randperm(len(train_aug), generator=seeded(0)).tolist()
        return {
            "train": Subset(train_aug, order[self.holdout :]),
            "calib": Subset(train_plain, order[self.holdout :]),
            "val": Subset(train_plain, order[: self.holdout]),
            "test": ImageFolder(str(folders["val"]), transform=self._transform(False)),
        }

    def _loader(self, dataset, batch_size: int, generator: torch.Generator | None = None):
        from torch.utils.data import DataLoader

        shuffle = generator is not None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.workers,
            drop_last=shuffle,
            pin_memory=torch.cuda.is_available(),
        )

    def steps_per_epoch(self) -> int:
        return len(self.splits["train"]) // self.budget.batch_size

    def train_batches(self, epoch: int, seed: int):
        yield from self._loader(self.splits["train"], self.budget.batch_size, seeded(seed * 100_003 + epoch))

    def calibration_batches(self) -> list:
        batches = []
        for batch in self._loader(self.splits["calib"], self.budget.batch_size):
            batches.append(batch)
            if len(batches) == self.budget.calib_batches:
                break
        return batches

    def forward(self, model: nn.Module, batch) -> Tensor:
        return model(batch[0].to(device_of(model), non_blocking=True))

    def loss(self, model: nn.Module, batch) -> Tensor:
        return F.cross_entropy(
            self.forward(model, batch), batch[1].to(device_of(model), non_blocking=True), label_smoothing=0.1
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> float:
        was_training = model.training
        model.eval()
        correct = total = 0
        for images, labels in self._loader(self.splits[split], self.eval_batch):
            logits = self.forward(model, (images, labels))
            correct += int((logits.argmax(1).cpu() == labels).sum())
            total += len(labels)
        model.train(was_training)
        return 100.0 * correct / total
