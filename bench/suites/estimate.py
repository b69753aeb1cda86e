"""What a suite will cost before it runs: ``smartbench suite plan NAME --estimate [--calibrate N]``.

**The cost model.** Every figure is optimizer steps x seconds per step, in device-hours (GPU-hours
when the device is CUDA, CPU-hours otherwise):

* a *cell* (one run) = (prune_epochs + finetune_epochs) x steps per epoch x the step time of its
  pruner (a ``trains_from_scratch`` control: dense + prune + finetune epochs, as it trains), plus
  its evaluation passes, forward only: the calibration batches, the test split right after the
  hard switch (when there is fine-tuning), val + test at the end, and, on the native loop, the
  dense model's val + test (``bench.runs.run.prune_and_measure`` evaluates them in every cell;
  the mmengine loop caches them with the dense model). A forward pass is counted as one third of
  a dense training step per image (backward ~ two forwards);
* a *dense model* = dense_epochs x steps per epoch x the dense step time, once per (task, seed)
  as the suite trains it (plus val + test on the mmengine loop); 0 when its checkpoint is already
  in ``runs/dense/``, when no unfinished cell needs it, or when the cells start from a
  ``dense_checkpoint``;
* a cell already in the result store costs 0 (``suite run`` skips it).

Steps per epoch come from the data when it is on this machine (``Task.steps_per_epoch``, the
mmengine train dataloader's length; val/test sizes from the task's splits), else from the task's
``nominal_sizes`` (full-size tasks whose data is elsewhere: train images // batch size); the
output says which.

**Step times** (:func:`time_steps`): on the chosen device, a freshly built model of the task takes
``WARMUP_STEPS`` untimed optimizer steps and then ``N`` timed ones (on CUDA their mean, with one
device synchronisation before and one after the timed window, none added in between: the host
syncs a pruner's step makes itself are inside the measured time; on the CPU the median step,
robust to a step slowed by another process) on synthetic inputs of the task's input shape: random images and labels through the task's own
loss (cross-entropy on logits) for native tasks; for mmengine tasks the tensor-mode forward and
the mean of its outputs as the loss (an approximation: no detection/segmentation head losses, no
data preprocessing). Dense steps use the task's dense optimizer and lr schedule; pruner steps
the real stage driver (``bench.training.stages.StageDriver``: masks installed, ``on_step``,
penalty, ``after_optimizer_step``) with the stage optimizer (``bench.training.train.make_optimizer``,
``set_stage_lr``), i.e. the first steps of the pruning stage. Periodic work of a pruner (a mask
recomputation every k steps) counts only when it falls in the timed steps.

*Calibration batches*: on CUDA both are the task's batch size ``B``. On the CPU (a ResNet-50 step
at 256 images of 224x224 needs more memory and minutes than a quick calibration has) the dense
step is timed at ``b_d`` = the largest batch up to ``B`` holding at most 8 ImageNet-size images of
input (``CPU_DENSE_INPUT``), the pruners at ``b_p`` = at most 2 such images (``CPU_PRUNER_INPUT``);
a Fashion-MNIST or FMNIST-Scenes batch fits whole (``b_d = b_p = B``). ``--calibrate-batch`` sets
both. Then::

    dense step(B)  = dense step(b_d) x B / b_d                              (linear in the batch)
    pruner step(B) = dense step(B) + max(0, pruner step(b_p) - dense step(b_p))

the pruner's extra time (masks, scores, penalty, its optimizer groups) acting on weights, not on
the batch. With ``b_d = b_p = B`` a pruner's step is its measured step (never less than the
dense step).

**Stored measurements**: ``runs/calibration.json`` maps a configuration (task, model, input shape,
amp, calibration batch, and ``"dense"`` or the pruner with its full config, pattern and allocation
rule) and a machine fingerprint (CPU model, threads, torch version, CUDA device;
``bench.deploy.speed.device_fingerprint``) to the measured seconds per step. ``--estimate`` uses a
stored measurement when there is one and says so; ``--calibrate N`` measures again (N steps) and
stores it; with neither, missing measurements are taken with ``DEFAULT_STEPS`` steps. Each pruner is
timed at the first sparsity of its (task, pattern) in the suite.

Left out: data loading and augmentation, checkpoint writes, model export, cost figures, W&B,
process start-up, DataLoader workers, and several cells sharing a device (``--workers``): the
estimate is for one cell at a time on the whole device.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.errors import ConfigError, SmartbenchError
from bench.core.paths import RunPaths, paths_or_env

DEFAULT_STEPS = 3  # timed steps per configuration when nothing is stored and no --calibrate is given
WARMUP_STEPS = 1  # untimed steps before them (allocations, kernel selection)
# calibration batches on the CPU (on CUDA: the task's batch): the dense step at the largest batch
# holding at most 8 ImageNet-size images (3x224x224) of input, the pruners' extra time at 2 such
# images; a Fashion-MNIST or FMNIST-Scenes batch fits whole in both
IMAGENET_IMAGE = 3 * 224 * 224
CPU_DENSE_INPUT = 8 * IMAGENET_IMAGE
CPU_PRUNER_INPUT = 2 * IMAGENET_IMAGE
FORWARD_SHARE = 1 / 3  # an evaluation forward per image, as a share of a dense training step per image
SLURM_SAFETY = 1.5  # suggested --timeout-min = longest job x this, rounded up to 10 minutes
CALIBRATION_FILE = "calibration.json"


def positive_int(value: Any, field_name: str, what: str) -> int:
    """``value`` as an integer >= 1, else one ConfigError naming ``field_name`` and the allowed values."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.lstrip("+").isdigit() or int(text) < 1:
        raise ConfigError(field_name, f"must be an integer >= 1 ({what}), got {value!r}")
    return int(text)


# -- tasks and their sizes -----------------------------------------------------------------------
@dataclass
class Sizes:
    """Optimizer steps per training epoch and images of the val / test splits of one task."""

    steps_per_epoch: int | None
    val: int | None
    test: int | None
    source: str  # "data" (counted on this machine) | "nominal" (Task.nominal_sizes) | "unknown"


def split_images(task, split: str) -> int | None:
    """Images of a split of a native task: ``samples`` (image folders) or ``splits`` (Fashion-MNIST:
    an (images, labels) pair; ImageNet DeiT: a dataset)."""
    for attr in ("samples", "splits"):
        if hasattr(type(task), attr):
            value = getattr(task, attr)[split]
            return len(value[1]) if isinstance(value, tuple) else len(value)
    return None


def task_sizes(task) -> Sizes:
    """Sizes from the data when it is here, else from ``nominal_sizes`` (say which)."""
    try:
        if task.loop == "mmengine":
            with task.quiet():
                steps = len(task.dataloader("train"))  # what the mmengine hook takes as the epoch length
                val, test = (len(task.dataloader(split).dataset) for split in ("val", "test"))
        else:
            steps = task.steps_per_epoch()
            val, test = split_images(task, "val"), split_images(task, "test")
        return Sizes(steps, val, test, "data")
    except (SmartbenchError, NotImplementedError, FileNotFoundError):
        nominal = task.nominal_sizes
        if not nominal:
            return Sizes(None, None, None, "unknown")
        return Sizes(max(1, nominal["train"] // task.budget.batch_size), nominal["val"], nominal["test"], "nominal")


# -- measuring a step --------------------------------------------------------------------------
def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def synthetic_batch(task, model, batch: int):
    """(batch, forward(model, batch), loss(model, batch)) of random inputs of the task's input shape.

    Native tasks: random images and labels in the task's own ``forward`` / ``loss``. mmengine tasks:
    the tensor-mode forward, and the mean of every output tensor as a scalar loss."""
    example = task.example_input()
    if isinstance(example, dict):
        inputs = {**example, "inputs": torch.randn(batch, *example["inputs"].shape[1:], device=task.device)}

        def forward(m, b):
            return m(**b)

        def loss(m, b):
            return sum(t.float().mean() for t in _tensors(forward(m, b)) if t.is_floating_point())

        return inputs, forward, loss
    was_training = model.training
    model.eval()
    with torch.no_grad():
        classes = model(example.to(task.device)).shape[-1]
    model.train(was_training)
    images = torch.randn(batch, *example.shape[1:])
    labels = torch.randint(0, classes, (batch,))
    return (images, labels), task.forward, task.loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    task, batch: int, steps: int, pruner=None, warmup: int = WARMUP_STEPS, steps_per_epoch: int | None = None
) -> float:
    """Seconds per optimizer step of the task's model on ``task.device`` at ``batch`` synthetic
    images: ``warmup`` untimed steps, then ``steps`` timed ones: on CUDA their mean (synchronised
    once before and once after the window), on the CPU the median step. ``pruner`` None: the dense recipe (the task's dense optimizer, cosine
    lr); else the pruning stage of ``pruner`` through the stage driver, as the native trainer
    steps it (``PruneTrainer.run``). ``steps_per_epoch``: the stage length the schedules see."""
    from bench.core.device import flush_denormals, to_device
    from bench.core.masks import Masker, covered_layers, find_prunable
    from bench.training.stages import StageDriver
    from bench.training.train import dense_step, make_dense_optimizer, make_optimizer, stage_step

    flush_denormals()
    device, b = task.device, task.budget
    torch.manual_seed(0)
    with task.quiet():
        model = task.build_model()
        task.initialise(model)
    model.to(device).train()
    inputs, forward, loss_of = synthetic_batch(task, model, batch)
    per_epoch = max(warmup + steps, steps_per_epoch or 0)
    driver = None
    if pruner is None:
        optimizer = make_dense_optimizer(model, task)
        total = b.dense_epochs * per_epoch
    else:
        prunable = find_prunable(model, task.include, task.exclude, task.keep_first_last)
        names = list(covered_layers(model, prunable, pruner.pattern)[0])
        masker = Masker(model, names, pruner.pattern, to_device(task.example_input(), device))
        driver = StageDriver(pruner, masker, b.prune_epochs, b.finetune_epochs, log=lambda _m: None, budget=b)
        with task.quiet():
            driver.setup([inputs], forward)
        optimizer = make_optimizer(model, task, b.prune_lr, driver.param_groups())
        driver.begin(per_epoch)
        driver.start_epoch(0)
        total = driver.epochs * per_epoch
    started, marks = 0.0, []  # marks: the end of every timed step (CPU)

    loss = functools.partial(loss_of, model, inputs)
    for step in range(warmup + steps):  # the trainers' own steps (bench.training.train)
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        if driver is None:
            dense_step(task, optimizer, loss, step, total)
        else:
            stage_step(task, driver, optimizer, loss, step, 0, total)
        if step >= warmup:
            marks.append(time.perf_counter())
    _sync(device)
    if device.type == "cuda":  # the mean over the window: no sync between steps, as in training
        seconds = (time.perf_counter() - started) / steps
    else:  # the median step: robust to a step slowed down by another process on the CPU
        seconds = statistics.median(np.diff([started, *marks]).tolist())
    del model, optimizer, driver, inputs, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


# -- stored measurements ------------------------------------------------------------------------
def machine_key(device: torch.device) -> str:
    """The machine fingerprint a measurement is stored under (CPU model and count, torch threads
    and version, the device, the CUDA device's name; not the load average)."""
    from bench.deploy.speed import device_fingerprint

    info = device_fingerprint(str(device))
    stable = ("cpu", "cpu_count", "threads", "torch", "device", "cuda_device")
    return json.dumps({k: info[k] for k in stable if k in info}, sort_keys=True)


def machine_label(key: str) -> str:
    info = json.loads(key)
    where = info.get("cuda_device") if str(info.get("device", "")).startswith("cuda") else info.get("cpu")
    return f"{info.get('device')} ({where}, {info.get('threads')} threads)"


class CalibrationStore:
    """``runs/calibration.json``: {configuration key: {machine key: {seconds, batch, steps, measured}}}."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, dict[str, dict]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return data.get("measurements", {}) if isinstance(data, dict) else {}

    def get(self, config: str, machine: str) -> dict | None:
        return self.read().get(config, {}).get(machine)

    def latest(self, config: str) -> tuple[str, dict] | None:
        """The most recent measurement of ``config`` on any machine."""
        entries = self.read().get(config, {})
        if not entries:
            return None
        machine = max(entries, key=lambda m: entries[m].get("measured", ""))
        return machine, entries[machine]

    def put(self, config: str, machine: str, entry: dict) -> None:
        data = self.read()
        data.setdefault(config, {})[machine] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": 1, "measurements": data}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)


def config_key(task, batch: int, pruner=None) -> str:
    """What a step time depends on besides the machine: task, model, input shape, amp, batch, and
    ``dense`` or the pruner (name, full config, pattern, allocation policy and budget)."""
    example = task.example_input()
    shape = (example["inputs"] if isinstance(example, dict) else example).shape[1:]
    key: dict[str, Any] = {
        "task": task.name,
        "model": task.model_name,
        "input": list(shape),
        "amp": task.amp,
        "batch": batch,
    }
    if pruner is None:
        key["step"] = "dense"
    else:
        key["step"] = {
            "pruner": pruner.name,
            "config": pruner.config.to_dict(),
            "pattern": str(pruner.pattern),
            # the rule's policy and budget, not its floor: the protocol's floor moves with the sparsity,
            # and one measurement serves every sparsity of a pattern (as it serves every level)
            "allocation": None
            if pruner.allocation is None
            else {k: v for k, v in pruner.allocation.to_dict().items() if k != "floor"},
        }
    return json.dumps(key, sort_keys=True, default=str)


@dataclass
class Measured:
    seconds: float  # per step at ``batch``
    batch: int
    source: str  # how it was obtained, for the output
    machine: str  # machine_key() of where it was measured


class Calibrator:
    """Step times of the suite's configurations: stored ones, or measured now (and stored).

    ``steps``: ``--calibrate N`` (measure every configuration again with N steps), or None (use a
    stored measurement; measure the missing ones with ``DEFAULT_STEPS``). ``any_machine``: also take
    the latest measurement stored from another machine (the Slurm launcher: jobs do not run on the
    submitting host)."""

    def __init__(
        self,
        device: torch.device,
        store: CalibrationStore,
        steps: int | None = None,
        batch: int | None = None,
        any_machine: bool = False,
        log: Callable[[str], None] = print,
    ):
        self.device, self.store, self.steps, self.batch = device, store, steps, batch
        self.any_machine, self.log = any_machine, log
        self.machine = machine_key(device)
        self.memo: dict[str, Measured] = {}
        self.measured_now = 0

    def batches(self, task) -> tuple[int, int]:
        """(batch of the dense step, batch of the pruners' extra time): ``--calibrate-batch`` for
        both, else the task's batch on CUDA; on the CPU at most ``CPU_DENSE_INPUT`` and
        ``CPU_PRUNER_INPUT`` input values (module docstring)."""
        size = task.budget.batch_size
        if self.batch is not None:
            return min(self.batch, size), min(self.batch, size)
        if self.device.type != "cpu":
            return size, size
        example = task.example_input()
        image = (example["inputs"] if isinstance(example, dict) else example)[0].numel()
        dense = min(size, max(1, CPU_DENSE_INPUT // image))
        return dense, min(dense, max(1, CPU_PRUNER_INPUT // image))

    def measured(self, task, batch: int, pruner=None, steps_per_epoch: int | None = None) -> Measured:
        """Seconds per step at ``batch`` of the dense model (``pruner`` None) or of ``pruner``."""
        config = config_key(task, batch, pruner)
        if config in self.memo:
            return self.memo[config]
        found = None
        if self.steps is None:
            entry = self.store.get(config, self.machine)
            if entry is not None:
                found = Measured(
                    entry["seconds"], batch, f"stored {entry['measured']}, {_steps(entry['steps'])}", self.machine
                )
            elif self.any_machine and (latest := self.store.latest(config)) is not None:
                machine, entry = latest
                found = Measured(
                    entry["seconds"],
                    batch,
                    f"stored from {machine_label(machine)} {entry['measured']}, {_steps(entry['steps'])}",
                    machine,
                )
        if found is None:
            steps = self.steps or DEFAULT_STEPS
            what = "dense" if pruner is None else f"{pruner.name} {pruner.pattern} {pruner.sparsity:g}"
            self.log(f"calibrating {task.name} {what} at batch {batch}: {WARMUP_STEPS} warm-up + {_steps(steps)} timed")
            seconds = time_steps(task, batch, steps, pruner, steps_per_epoch=steps_per_epoch)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.store.put(
                config, self.machine, {"seconds": seconds, "batch": batch, "steps": steps, "measured": stamp}
            )
            self.measured_now += 1
            why = "" if self.steps else ", none stored"
            found = Measured(seconds, batch, f"measured now, {_steps(steps)}{why}", self.machine)
        self.memo[config] = found
        return found

    def dense_step(self, task, steps_per_epoch: int | None = None) -> float:
        """Seconds of one dense step at the task's batch (scaled linearly from its calibration batch)."""
        batch, _ = self.batches(task)
        return self.measured(task, batch, None, steps_per_epoch).seconds * task.budget.batch_size / batch

    def pruner_step(self, task, pruner, steps_per_epoch: int | None = None) -> float:
        """Seconds of one pruning-stage step at the task's batch: the dense step plus the pruner's
        extra time over a dense step, both measured at the pruners' calibration batch (never negative)."""
        _, batch = self.batches(task)
        dense = self.measured(task, batch, None, steps_per_epoch)
        with_pruner = self.measured(task, batch, pruner, steps_per_epoch)
        return self.dense_step(task, steps_per_epoch) + max(0.0, with_pruner.seconds - dense.seconds)


# -- the estimate ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the estimate: a cell (one run) or a dense model that cells share."""

    kind: str  # "cell" | "dense"
    run_id: str  # the cell's run id, or the dense model's key (runs/dense/<key>.pt)
    task: str
    label: str  # pruner label ("dense" for a dense model)
    pattern: str
    sparsity: float | None
    seed: int
    state: str  # pending | running | failed | done | (dense) to train | cached | not needed
    steps: int | None = None  # optimizer steps still to train
    eval_images: int | None = None  # images of the evaluation passes (forward only)
    step_s: float | None = None  # seconds per optimizer step at the task's batch
    hours: float | None = None  # device-hours; None: unknown
    dense_key: str = ""
    note: str = ""


@dataclass
class Estimate:
    suite: str
    device: str  # where the step times were measured
    unit: str  # "GPU-hours" | "CPU-hours"
    rows: list[Row] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # one line per measured configuration
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Device-hours of every row with a known cost (dense models and cells)."""
        return sum(row.hours for row in self.rows if row.hours is not None)

    def cells(self) -> list[Row]:
        return [row for row in self.rows if row.kind == "cell"]


def eval_images(task, sizes: Sizes, pruner) -> int | None:
    """Images a cell runs forward only (module docstring); None when the split sizes are unknown."""
    if sizes.val is None or sizes.test is None:
        return None
    b = task.budget
    images = b.calib_batches * b.batch_size + sizes.val + sizes.test  # calibration statistics, final val + test
    if b.finetune_epochs > 0 and not pruner.trains_from_scratch:
        images += sizes.test  # the test metric right after the hard switch
    if task.loop != "mmengine":
        images += sizes.val + sizes.test  # the native loop evaluates the dense model in every cell
    return images


def estimate_suite(
    suite,
    device: str = "auto",
    calibrate: int | None = None,
    batch: int | None = None,
    paths: RunPaths | None = None,
    any_machine: bool = False,
    log: Callable[[str], None] = print,
) -> Estimate:
    """The cost of the suite's unfinished cells and the dense models they still need (module docstring).

    ``calibrate``: measure every configuration again with this many steps (None: stored ones
    first); ``batch``: the calibration batch (``--calibrate-batch``; default: :meth:`Calibrator.batches`)."""
    from bench.core.device import describe, resolve_device
    from bench.core.select import Allocation
    from bench.core.sparsity import parse_pattern
    from bench.runs.registry import build_pruner
    from bench.runs.run import configured_task, short_hash
    from bench.suites.suite import cell_states
    from bench.tasks.registry import load_tasks

    if calibrate is not None:
        calibrate = positive_int(calibrate, "--calibrate", "timed optimizer steps")
    if batch is not None:
        batch = positive_int(batch, "--calibrate-batch", "images per calibration step")
    paths = paths_or_env(paths)
    target = resolve_device(device)
    calibrator = Calibrator(target, CalibrationStore(paths.root / CALIBRATION_FILE), calibrate, batch, any_machine, log)
    estimate = Estimate(suite.name, describe(target), "GPU-hours" if target.type == "cuda" else "CPU-hours")
    states = {cell.run_id: state for cell, state, _ in cell_states(suite, paths=paths)}
    tasks: dict[str, Any] = {}
    sizes: dict[str, Sizes] = {}
    known = load_tasks()
    dense_rows: dict[str, Row] = {}
    needs_dense: set[str] = set()
    for cell in suite.cells:
        spec, state = cell.spec, states[cell.run_id]
        row = Row("cell", cell.run_id, spec.task, cell.label, spec.pattern, spec.sparsity, spec.seed, state)
        estimate.rows.append(row)
        if state == "done":
            row.steps, row.eval_images, row.hours, row.note = 0, 0, 0.0, "in the store"
            continue
        if spec.task not in known:
            row.note = "task not registered here"
            continue
        task_key = json.dumps([spec.task, spec.model, spec.data, spec.budget, spec.amp, spec.compile], sort_keys=True)
        try:
            if task_key not in tasks:
                task = configured_task(spec, target)
                sizes[task_key], tasks[task_key] = task_sizes(task), task
            task, size = tasks[task_key], sizes[task_key]
            if size.steps_per_epoch is None:
                row.note = "dataset size unknown (no data here, no nominal sizes)"
                continue
            pruner = build_pruner(
                spec.pruner,
                parse_pattern(spec.pattern),
                spec.sparsity,
                spec.pruner_options,
                Allocation.from_value(spec.allocation),
            )
            row.step_s = calibrator.pruner_step(task, pruner, size.steps_per_epoch)
            dense_s = calibrator.dense_step(task, size.steps_per_epoch)
        except ModuleNotFoundError as err:  # an optional stack (mmdet...) not installed here
            row.note = f"needs the module '{err.name}'"
            continue
        except SmartbenchError as err:  # e.g. a dataset the model needs (its classes) is not here
            row.note = f"cannot build the task here: {str(err).splitlines()[0]}"
            continue
        b = task.budget
        epochs = b.prune_epochs + b.finetune_epochs + (b.dense_epochs if pruner.trains_from_scratch else 0)
        row.dense_key = cell.dense_key or f"{spec.task}-{short_hash([task_key, spec.seed])}"
        row.steps = epochs * size.steps_per_epoch
        row.eval_images = eval_images(task, size, pruner)
        forward_s = (row.eval_images or 0) * dense_s / b.batch_size * FORWARD_SHARE
        row.hours = (row.steps * row.step_s + forward_s) / 3600
        if size.source == "nominal":
            row.note = "nominal sizes"
        if row.eval_images is None:
            row.note = "evaluation not counted (split sizes unknown)"
        if spec.dense_checkpoint is None:  # a cell with the user's dense checkpoint trains no dense model
            needs_dense.add(row.dense_key)
        if row.dense_key not in dense_rows:  # the dense model of (task, seed), shared by its cells
            dense = Row("dense", row.dense_key, spec.task, "dense", "-", None, spec.seed, "to train")
            dense.dense_key = row.dense_key
            dense_rows[row.dense_key] = dense
            checkpoint = paths.root / "dense" / f"{row.dense_key}.pt"
            if cell.dense_key and checkpoint.is_file():
                dense.state, dense.steps, dense.hours, dense.note = "cached", 0, 0.0, f"runs/dense/{checkpoint.name}"
            else:
                dense.step_s = dense_s
                dense.steps = b.dense_epochs * size.steps_per_epoch
                # the mmengine loop evaluates the dense model once and caches its metrics
                dense.eval_images = (size.val or 0) + (size.test or 0) if task.loop == "mmengine" else 0
                forward_s = dense.eval_images * dense_s / b.batch_size * FORWARD_SHARE
                dense.hours = (dense.steps * dense_s + forward_s) / 3600
                dense.note = "nominal sizes" if size.source == "nominal" else ""
    for key, dense in dense_rows.items():
        if key not in needs_dense:
            note = "its cells start from dense_checkpoint" if dense.state == "to train" else dense.note
            dense.state, dense.steps, dense.hours, dense.note = "not needed", 0, 0.0, note
    estimate.rows = list(dense_rows.values()) + estimate.rows
    machines = {measured.machine for measured in calibrator.memo.values()}
    if machines and machines != {calibrator.machine}:  # stored from other machines (the Slurm launcher)
        labels = sorted(machine_label(machine) for machine in machines)
        cuda = all(json.loads(machine).get("device", "").startswith("cuda") for machine in machines)
        estimate.device, estimate.unit = ", ".join(labels), "GPU-hours" if cuda else "device-hours"
    for config, measured in calibrator.memo.items():
        key = json.loads(config)
        step, extra = key["step"], ""
        dense = calibrator.memo.get(json.dumps({**key, "step": "dense"}, sort_keys=True, default=str))
        if step != "dense" and dense is not None:  # the pruner's extra time over a dense step at its batch
            extra = f" = dense + {max(0.0, measured.seconds - dense.seconds):.3g} s"
        what = "dense" if step == "dense" else f"{step['pruner']} {step['pattern']}"
        estimate.sources.append(
            f"{key['task']} {what}: {measured.seconds:.4g} s/step at batch {measured.batch}{extra} ({measured.source})"
        )
    for key, size in sizes.items():
        task = tasks[key]
        where = {
            "data": "counted on this machine",
            "nominal": "Task.nominal_sizes: the data is not on this machine",
            "unknown": "unknown",
        }[size.source]
        estimate.notes.append(
            f"{task.name}: {_num(size.steps_per_epoch)} steps/epoch at batch {task.budget.batch_size}, "
            f"val {_num(size.val)} + test {_num(size.test)} images ({where})"
        )
    return estimate


def _steps(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def _num(value) -> str:
    return "?" if value is None else f"{value:,}"


def _hours(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def estimate_lines(estimate: Estimate) -> list[str]:
    """The estimate as aligned text: one line per dense model and cell, the total, where the
    step times and sizes came from, and what is left out."""
    unit = estimate.unit
    lines = [f"estimate of suite {estimate.suite} on {estimate.device}, in {unit}:"]
    lines.append(
        f"  {'run_id':16s} {'task':18s} {'pruner':16s} {'pattern':10s} {'sparsity':>8s} {'seed':>4s} "
        f"{'state':10s} {'steps':>11s} {'s/step':>8s} {'h':>9s}  note"
    )
    for row in estimate.rows:
        sparsity = "-" if row.sparsity is None else f"{row.sparsity:.4g}"
        step_s = "-" if row.step_s is None else f"{row.step_s:.3g}"
        run_id = row.run_id if row.kind == "cell" else row.run_id.removeprefix(f"{row.task}-")[:16]
        lines.append(
            f"  {run_id:16s} {row.task:18s} {row.label:16s} {row.pattern:10s} {sparsity:>8s} {row.seed:4d} "
            f"{row.state:10s} {_num(row.steps):>11s} {step_s:>8s} {_hours(row.hours):>9s}  {row.note}".rstrip()
        )
    cells, dense = estimate.cells(), [r for r in estimate.rows if r.kind == "dense"]
    pending = [r for r in cells if r.state != "done"]
    unknown = [r for r in estimate.rows if r.hours is None]
    dense_h = sum(r.hours or 0.0 for r in dense)
    lines.append(
        f"  total: {_hours(estimate.total)} {unit} = {_hours(dense_h)} for {sum(r.state == 'to train' for r in dense)} "
        f"dense model(s) + {_hours(estimate.total - dense_h)} for {len(pending)} unfinished cell(s); "
        f"{len(cells) - len(pending)} cell(s) done (0)"
        + (f"; {len(unknown)} row(s) of unknown cost not counted" if unknown else "")
    )
    lines.append("  step times (s/step above: at the task's batch; the dense step scaled linearly from its calibration")
    lines.append(
        "  batch, a pruner's step = that + its extra time over a dense step at the pruners' calibration batch):"
    )
    lines += [f"    {source}" for source in estimate.sources]
    lines.append("  sizes:")
    lines += [f"    {note}" for note in estimate.notes]
    lines.append(
        "  includes: training steps, and evaluation passes as forward-only steps (1/3 of a dense step per image); "
        "leaves out: data loading, checkpoints, export, W&B, start-up, and cells sharing a device (--workers)"
    )
    return lines


# -- Slurm -----------------------------------------------------------------------------------------
@dataclass
class SlurmAdvice:
    """One submitit job per unfinished cell, in two waves (bench.suites.launch.submit_cells): the first
    cell of every dense model (it trains the dense model too), then the rest."""

    first: list[tuple[Row, float]]  # (cell, job hours incl. its dense model)
    rest: list[tuple[Row, float]]
    longest: tuple[Row, float] | None
    timeout_min: int  # suggested --timeout-min
    unknown: int  # jobs of unknown cost

    @property
    def wall_hours(self) -> float:
        """Every job at once: the longest first-wave job, then the longest second-wave job."""
        return max((h for _, h in self.first), default=0.0) + max((h for _, h in self.rest), default=0.0)


def slurm_advice(estimate: Estimate) -> SlurmAdvice:
    dense = {r.dense_key: r for r in estimate.rows if r.kind == "dense"}
    first, rest, seen, unknown = [], [], set(), 0
    for row in estimate.cells():
        if row.state in ("done", "running"):
            continue
        if row.hours is None:
            unknown += 1
            continue
        if row.dense_key not in seen:
            seen.add(row.dense_key)
            dense_hours = dense[row.dense_key].hours if row.dense_key in dense else None
            first.append((row, row.hours + (dense_hours or 0.0)))
        else:
            rest.append((row, row.hours))
    jobs = first + rest
    longest = max(jobs, key=lambda job: job[1]) if jobs else None
    minutes = 0.0 if longest is None else longest[1] * 60 * SLURM_SAFETY
    return SlurmAdvice(first, rest, longest, max(10, 10 * math.ceil(minutes / 10)), unknown)


def slurm_lines(estimate: Estimate, timeout_min: int | None, nproc: int = 1) -> list[str]:
    """The launcher's suggestion from the estimate: waves (array sizes), --timeout-min, a warning
    when the given --timeout-min is below the longest job's estimate."""
    advice = slurm_advice(estimate)
    if advice.longest is None:
        return ["slurm: no job of known cost to submit"]
    row, hours = advice.longest
    lines = [
        f"slurm: {len(advice.first) + len(advice.rest)} job(s) in two waves: {len(advice.first)} first (each also "
        f"trains its dense model), then {len(advice.rest)}; longest job {hours * 60:,.0f} min ({row.run_id} "
        f"{row.task} {row.label} {row.pattern})",
        f"  suggested: --timeout-min {advice.timeout_min} (longest job x {SLURM_SAFETY:g}, rounded up to 10 min); "
        f"array sizes {len(advice.first)} then {len(advice.rest)}: with every job at once the suite takes about "
        f"{advice.wall_hours:,.1f} h of wall time",
    ]
    if advice.unknown:
        lines.append(f"  {advice.unknown} job(s) of unknown cost left out")
    if nproc > 1:
        lines.append(f"  the estimate is for one device per job; --nproc {nproc} runs DDP over {nproc} processes")
    if timeout_min is not None and timeout_min < hours * 60:
        lines.append(
            f"  WARNING: --timeout-min {timeout_min} is below the longest job's estimate ({hours * 60:,.0f} min): "
            "such jobs reach the time limit before they finish (a restarted cell resumes from its last epoch checkpoint)"
        )
    return lines
