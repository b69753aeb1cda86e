"""Fashion-MNIST classification with timm models (``pretrained=False``, 1x28x28 input).

Data split (fixed, independent of the run seed so every run sees the same data): a permutation
of the 60k training images with seed 0; the first ``val_size`` images are the validation split
(hyper-parameter choice), the next ``train_size`` the training subset. Metrics are reported on
the official 10k test split (or its first ``test_size`` images for tiny tasks).
"""

from __future__ import annotations

from functools import cached_property

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.device import device_of
from bench.core.errors import ConfigError
from bench.data.fmnist import dataset_hash, load_fmnist
from bench.tasks.base import Budget, Task, register_task, seeded

MEAN, STD = 0.2860, 0.3530


def to_tensor(images) -> Tensor:
    return ((torch.from_numpy(images.copy()).float() / 255.0 - MEAN) / STD).unsqueeze(1)


class FashionMNISTTask(Task):
    family = "classification"
    metric_name = "top1"
    train_size = 10_000
    val_size = 5_000
    test_size = 10_000
    eval_batch = 1000

    def identity(self) -> dict:
        sizes = {"train_size": self.train_size, "val_size": self.val_size, "test_size": self.test_size}
        return {**super().identity(), **sizes}

    def build_model(self) -> nn.Module:
        name = self.model_name.removeprefix("timm:")
        try:
            return timm.create_model(name, pretrained=False, in_chans=1, num_classes=10, **self.model_kwargs())
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ConfigError("model", f"unknown timm model '{name}' (see timm.list_models())") from None
            raise

    def model_kwargs(self) -> dict:
        return {}

    def example_input(self) -> Tensor:
        return torch.zeros(2, 1, 28, 28)

    def dataset_hash(self) -> str:
        return dataset_hash()

    @cached_property
    def splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        images, labels = load_fmnist("train")
        order = torch.randperm(len(labels), generator=seeded(0))
        val_idx = order[: self.val_size]
        train_idx = order[self.val_size : self.val_size + self.train_size]
        test_images, test_labels = load_fmnist("test")
        x_all, y_all = to_tensor(images), torch.from_numpy(labels.copy()).long()
        return {
            "train": (x_all[train_idx], y_all[train_idx]),
            "val": (x_all[val_idx], y_all[val_idx]),
            "test": (
                to_tensor(test_images[: self.test_size]),
                torch.from_numpy(test_labels[: self.test_size].copy()).long(),
            ),
        }

    def steps_per_epoch(self) -> int:
        return len(self.splits["train"][1]) // self.budget.batch_size

    def train_batches(self, epoch: int, seed: int):
        yield from self.shard_batches(epoch, seed, 0, 1)

    def shard_batches(self, epoch: int, seed: int, rank: int, world: int):
        """Only the rank's rows of every batch are gathered (``[rank::world]`` of its indices)."""
        x, y = self.splits["train"]
        order = torch.randperm(len(y), generator=seeded(seed * 100_003 + epoch))
        bs = self.budget.batch_size
        pin = self.device.type == "cuda"  # a pinned batch copies to the GPU without a host sync (non_blocking)
        for i in range(self.steps_per_epoch()):
            idx = order[i * bs : (i + 1) * bs][rank::world]
            yield (x[idx].pin_memory(), y[idx].pin_memory()) if pin else (x[idx], y[idx])

    def calibration_batches(self) -> list:
        x, y = self.splits["train"]
        bs = self.budget.batch_size
        return [(x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs]) for i in range(self.budget.calib_batches)]

    def forward(self, model: nn.Module, batch) -> Tensor:
        return model(batch[0].to(device_of(model), non_blocking=True))

    def loss(self, model: nn.Module, batch) -> Tensor:
        return F.cross_entropy(self.forward(model, batch), batch[1].to(device_of(model), non_blocking=True))

    def trivial_metric(self) -> float:
        """Top-1 of always predicting the test split's most frequent class."""
        labels = self.splits["test"][1]
        return 100.0 * int(torch.bincount(labels).max()) / len(labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> float:
        x, y = self.splits[split]
        was_training = model.training
        model.eval()
        correct = 0
        for i in range(0, len(y), self.eval_batch):
            logits = self.forward(model, (x[i : i + self.eval_batch],))
            correct += int((logits.argmax(1).cpu() == y[i : i + self.eval_batch]).sum())
        model.train(was_training)
        return 100.0 * correct / len(y)


@register_task
class FmnistResnet(FashionMNISTTask):
    name = "fmnist-resnet"
    description = "timm resnet10t on a 10k Fashion-MNIST subset, 10k test images"
    default_model = "resnet10t"
    budget = Budget(dense_epochs=8, prune_epochs=3, finetune_epochs=2, batch_size=128, lr=0.1, prune_lr=0.02)


@register_task
class FmnistResnetLite(FashionMNISTTask):
    name = "fmnist-resnet-lite"
    description = "timm resnet10t at half width (channels 32-256) on a 10k Fashion-MNIST subset (leaderboard v2)"
    default_model = "resnet10t"
    # The leaderboard-v2 classification task (issue 15): the same data and budget as fmnist-resnet,
    # half the channels. Train step 0.10 s vs 0.21 s (batch 128, one thread); dense val top-1 over
    # seeds 0-2: 89.32 / 89.12 / 89.40 (full width, seeds 0-1: 89.30 / 89.38), test 88.96 / 88.83 /
    # 89.06. A 5k training subset instead (also ~2x cheaper) lost 2.2 val points (87.12, seed 0,
    # 8 epochs; 87.28 with 12) and was not taken. At block:1x8 90% (global allocation, 5% floor)
    # magnitude lands 2.4 test points under dense (86.47 / 86.61 / 86.45) and SMART 0.4-0.8 under
    # (88.41 / 88.02 / 88.59), where at full width v1's magnitude was at the dense accuracy: the
    # narrower model separates methods at lower sparsity. Measured 2026-12-05.
    width = (32, 64, 128, 256)
    # Dense recipe 16 epochs since protocol v3 (leaderboard v2 and the protocol-v3 checks ran 8 and
    # state `dense_epochs: 8`). Plateau check (`python scripts/dense_plateau.py fmnist-resnet-lite
    # --epochs E`, 2026-12-07), val top-1 over seeds 0-2 after 80% / all of the epochs:
    #   8 epochs: 88.42 / 89.32, 89.10 / 89.34, 88.18 / 89.50: +0.82 over the last 20% against a
    #     seed spread (SD) of 0.10 -- not at a plateau;
    #   16 epochs: 89.30 / 89.62, 89.52 / 89.48, 89.58 / 89.50: +0.07 against SD 0.08 -- at a
    #     plateau; the final val mean gains +0.14 over 8 epochs' (89.53 vs 89.39).
    budget = Budget(dense_epochs=16, prune_epochs=3, finetune_epochs=2, batch_size=128, lr=0.1, prune_lr=0.02)
    dense_plateau_epochs = 16

    def model_kwargs(self) -> dict:
        return {"channels": self.width} if self.model_name.removeprefix("timm:") == self.default_model else {}

    def identity(self) -> dict:
        return {**super().identity(), "model_kwargs": self.model_kwargs()}


@register_task
class FmnistTiny(FashionMNISTTask):
    name = "fmnist-tiny"
    description = "timm test_resnet on a fixed 2k Fashion-MNIST subset (smoke tests)"
    default_model = "test_resnet"
    train_size = 2_000
    val_size = 1_000
    test_size = 1_000
    budget = Budget(dense_epochs=3, prune_epochs=2, finetune_epochs=1, batch_size=64, lr=0.1, prune_lr=0.02)
