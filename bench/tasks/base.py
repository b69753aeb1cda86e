"""Task interface and the task registry dict (filled by ``@register_task``; loaded by bench.tasks.registry).

A task builds a model and its data, defines the loss and the metric, and names the training
budget. Native tasks (classification, ViT) are trained by ``bench.training.train``; tasks that bring
their own loop (mmdet/mmseg through mmengine) override ``execute``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bench.core.errors import ConfigError

STAGE_OPTIMIZER_CHOICES = ("dense", "SGD")  # Budget.stage_optimizer
SCRATCH_RECIPES = ("stages", "single")  # Budget.scratch_recipe


@dataclass(frozen=True)
class Budget:
    """Training budget. Every pruner of a cell gets the same prune + finetune epochs."""

    dense_epochs: int
    prune_epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float  # dense training peak lr (SGD, cosine)
    # peak lr of the pruning + fine-tuning stages (cosine over both), in the units of the stage
    # optimizer: tasks whose recipe is AdamW set 0.2 x their dense lr (the SGD tasks' 0.02 / 0.1)
    prune_lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9
    calib_batches: int = 4
    # lr schedule of the pruning + fine-tuning stages, the same for every pruner of a cell:
    # "shared" (v1): one cosine from prune_lr over both stages; "restart": a cosine from prune_lr
    # over the pruning stage, then a fresh cosine from finetune_lr (default prune_lr) over fine-tuning;
    # "hold": the same pruning cosine, then finetune_lr constant for half of fine-tuning and a cosine
    # to 0 over the other half (bench.core.schedules.stage_lr)
    finetune_schedule: str = "shared"
    finetune_lr: float | None = None
    # the weights' optimizer in the pruning and fine-tuning stages (protocol v3, one recipe per task):
    # "dense" = the family of the task's dense recipe (Task.stage_optimizer; prune_lr is then in that
    # family's units); "SGD" = SGD whatever the dense recipe (v1 / v2: leaderboard-v2 declares it)
    stage_optimizer: str = "dense"
    # the from-scratch controls' recipe (scratch, scratch-full; baselines/scratch.py): "stages" = the
    # dense recipe for dense + prune epochs, then the fine-tuning stage every label runs (their
    # method_version 2, protocol v3); "single" = one dense-recipe cosine over every epoch at the
    # dense lr times the retraining multiplier (their method_version 1: leaderboard v2 declares it).
    # Not a budget identity field: it selects the controls' method_version, which is in their ids.
    scratch_recipe: str = "stages"

    def identity(self) -> dict:
        """The fields that define the budget; the schedule fields only when not at their v1 defaults
        (so the ids of v1 runs are unchanged). The stage optimizer enters resolved, through
        ``Task.identity`` (only when it is not SGD)."""
        fields = dict(self.__dict__)
        del fields["stage_optimizer"], fields["scratch_recipe"]
        if fields["finetune_schedule"] == "shared" and fields["finetune_lr"] is None:
            del fields["finetune_schedule"], fields["finetune_lr"]
        return fields


@dataclass
class DenseModel:
    """A trained dense model: its state dict, and its val/test metrics when the cache holds them."""

    state: dict[str, Tensor]
    metrics: dict[str, dict[str, float]] | None = None  # {"val": {...}, "test": {...}} (Task.evaluate_all)


def slice_batch(batch, rank: int, world: int):
    """The slice ``[rank::world]`` of every tensor in a batch (tuple, list, dict or tensor)."""
    if isinstance(batch, Tensor):
        return batch[rank::world]
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(item, rank, world) for item in batch)
    if isinstance(batch, dict):
        return {key: slice_batch(value, rank, world) for key, value in batch.items()}
    return batch


# the torch.compile backend of ``Task.compile`` (tests set "aot_eager": no C++ build on the CPU)
COMPILE_BACKEND = "inductor"


class Task:
    name: ClassVar[str] = "abstract"
    family: ClassVar[str] = "abstract"
    metric_name: ClassVar[str] = "metric"
    description: ClassVar[str] = ""
    budget: Budget
    default_model: str = ""
    include: list[str] | None = None  # prunable-layer name patterns (fnmatch), None = all
    exclude: list[str] | None = None
    keep_first_last: bool = True
    # dense training from scratch: "SGD" (momentum and weight decay of the Budget) or "AdamW"
    # (weight decay ``dense_weight_decay``), peak lr ``Budget.lr``, cosine. The pruning and
    # fine-tuning stages train the weights with the same family (``stage_optimizer``), the same for
    # every pruner and control (bench.training.optim).
    dense_optimizer: ClassVar[str] = "SGD"
    dense_weight_decay: ClassVar[float] = 0.05
    # the training loop: "native" (bench.training.train) or "mmengine" (the task's train_dense / train_stages)
    loop: ClassVar[str] = "native"
    reports_all_metrics: ClassVar[bool] = False  # rows keep every number of evaluate_all (det/seg)
    # the dense epochs at which the task's dense recipe was measured at a plateau (protocol v3): the
    # val gain over the last 20% of its dense epochs below the seed spread, measured by
    # scripts/dense_plateau.py (the figures go in the task's docstring), and no more than that from a
    # longer recipe (under a cosine schedule the tail gains little by construction: scenes-det-lite
    # passes the tail test at 16 epochs and gains 5.9 mAP at 32); None = not measured. Rows whose
    # dense reference trained fewer epochs (their budget's dense_epochs: an older recipe a suite
    # states) stay out of the v3 aggregates (Friedman ranks, win/loss counts;
    # bench.reports.ranks.aggregated): a comparison against an under-trained reference is a recipe
    # comparison
    dense_plateau_epochs: ClassVar[int | None] = None
    # {pattern: why its columns on this task carry no signal} for the v3 aggregates (protocol v3,
    # issue 32 item 6: a column enters when it can separate pruners at the planned seeds); those
    # columns stay in the tables and per-column lines but out of the Friedman ranks and win/loss
    # counts, with this reason. "*" declares every pattern of the task
    no_signal: ClassVar[dict[str, str]] = {}
    # full-size tasks on a user's copy: the official number of images per split ({"train", "val",
    # "test"}, after any holdout), for cost estimates where the data is not on this machine
    nominal_sizes: ClassVar[dict[str, int] | None] = None

    takes_data: ClassVar[bool] = False  # True: the dataset comes by path (``--data``; e.g. imagefolder)
    # where the run trains (bench.core.device; set by bench.runs.run.resolve, not part of the identity)
    # and whether training autocasts to bf16 (part of the identity when on). Tasks move each batch
    # to ``device_of(model)``; the loops move the model.
    device: torch.device = torch.device("cpu")
    amp: bool = False
    # torch.compile of the model in the native loops' training steps (``--compile``; part of the
    # identity when on: compiled kernels round differently). Evaluation stays eager.
    compile: bool = False

    def __init__(self, model: str | None = None, data: str | None = None):
        self.model_name = model or self.default_model
        if data is not None and not self.takes_data:
            raise ConfigError(
                "data", f"task '{self.name}' brings its own dataset; --data is for tasks that read one by path"
            )
        self.data = data

    def identity(self) -> dict[str, Any]:
        """What defines the task's data, model and budget (part of the run identity).

        The dense optimizer enters only when it is not the default SGD, and ``amp`` only when on,
        so the ids of SGD fp32 tasks are those from before the fields existed."""
        identity = {"task": self.name, "model": self.model_name, "budget": self.budget.identity()}
        if self.stage_optimizer != "SGD":  # absent for SGD stages: the ids of v1 / v2 runs are unchanged
            identity["budget"]["stage_optimizer"] = self.stage_optimizer
        if self.dense_optimizer != "SGD":
            identity["dense_optimizer"] = {"type": self.dense_optimizer, "weight_decay": self.dense_weight_decay}
        if self.amp:  # absent when off: ids from before the field existed are unchanged
            identity["amp"] = "bf16"
        if self.compile:  # absent when off, like amp
            identity["compile"] = COMPILE_BACKEND
        return identity

    def training_model(self, model: nn.Module) -> nn.Module:
        """What the native loops' training steps call: ``model`` itself, or with ``compile`` its
        ``torch.compile`` wrapper (made once per model; it shares the model's parameters, buffers and
        parametrizations, so checkpoints, masks and evaluation see the model itself)."""
        if not self.compile:
            return model
        cache = self.__dict__.setdefault("_compiled", {})
        compiled = cache.get(id(model))
        if compiled is None or compiled._orig_mod is not model:
            compiled = cache[id(model)] = torch.compile(model, backend=COMPILE_BACKEND)
        return compiled

    @property
    def stage_optimizer(self) -> str:
        """The weights' optimizer family in the pruning and fine-tuning stages: the dense recipe's
        (``dense_optimizer``) unless the budget says ``stage_optimizer: SGD`` (the v1 / v2 recipe)."""
        choice = self.budget.stage_optimizer
        if choice not in STAGE_OPTIMIZER_CHOICES:
            raise ConfigError(
                "budget.stage_optimizer", f"{choice!r} is not one of {', '.join(STAGE_OPTIMIZER_CHOICES)}"
            )
        return self.dense_optimizer if choice == "dense" else choice

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def example_input(self) -> Tensor:
        raise NotImplementedError

    def dataset_hash(self) -> str:
        raise NotImplementedError

    # native-loop tasks
    def train_batches(self, epoch: int, seed: int):
        raise NotImplementedError

    def shard_batches(self, epoch: int, seed: int, rank: int, world: int):
        """Rank ``rank``'s part ``[rank::world]`` of every global batch of ``train_batches`` (a DDP
        rank's data). This default reads each whole batch and keeps the slice; a task whose batches
        cost something to read overrides it to read only the slice (classification, imagefolder),
        with the same samples."""
        for batch in self.train_batches(epoch, seed):
            yield slice_batch(batch, rank, world)

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def calibration_batches(self) -> list:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch) -> Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str) -> float:
        raise NotImplementedError

    # the run pipeline (bench.runs.run); defaults fit the native tasks
    def quiet(self) -> contextlib.AbstractContextManager:
        """Context in which the task's libraries keep stdout clean (mm* prints; see MMTask)."""
        return contextlib.nullcontext()

    def load_dense(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        model.load_state_dict(state)

    def initialise(self, model: nn.Module) -> None:
        """Give a freshly built model its initial weights (timm models have them from the
        constructor; mm models from ``init_weights``): what training from scratch starts from."""

    def masker_example(self, model: nn.Module, calibration: list):
        """Input of the tracing forward of ``bench.core.masks.Masker`` (which BatchNorm follows which conv)."""
        return self.example_input()

    def evaluate_all(self, model: nn.Module, split: str) -> dict[str, float]:
        """Every number the task's evaluation reports on ``split``; ``metric_of`` picks the metric."""
        return {self.metric_name: self.evaluate(model, split)}

    def metric_of(self, results: dict[str, float]) -> float:
        return results[self.metric_name]

    def check_data(self) -> None:
        """Check a user's copy of the dataset before any training starts (split sizes, label ids,
        annotation categories, image/label pairs): one DataError naming the problem and its fix.
        Tasks whose data the project generates have nothing to check."""

    def trivial_metric(self) -> float | None:
        """The test metric of the task's trivial predictor (a model that learned nothing about the
        input: majority class, all background, no detections), or None where it is not known.
        Rows within ``COLLAPSE_MARGIN`` of it are flagged ``collapsed`` (bench.runs.run)."""
        return None


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(cls):
    TASKS[cls.name] = cls
    return cls


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
