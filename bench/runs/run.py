"""One run, for every task family: spec -> validation -> dense (cached) -> prune + fine-tune ->
audit -> cost figures -> saved pruned model -> row -> store -> W&B.

Run identity (OpenLTH-style, :func:`run_identity`): ``run_id`` = sha256 of the canonical JSON of
the *resolved* spec (task identity with its budget, pruner name and full config with defaults,
pattern, sparsity, seed), first 12 hex digits. Changing any default therefore changes the id.

The pipeline (:func:`execute`) is the same for every task; only two steps come from the task:
the loop that trains its dense model and runs the pruning stages (``Task.loop``: ``"native"``,
``bench.training.train``; or ``"mmengine"``, the task's ``train_dense`` / ``train_stages`` with mmengine's
Runner and ``bench.training.mm_hook.PruningHook``). Both loops call the same :class:`bench.training.stages.StageDriver`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.artifacts import load_artifact
from bench.core.costs import flops_audit, unit_costs
from bench.core.device import describe, resolve_device
from bench.core.errors import ConfigError
from bench.core.masks import Masker, covered_layers, find_prunable
from bench.core.paths import RunPaths, paths_or_env
from bench.core.pruner import Pruner
from bench.core.schedules import OWN_FINETUNE_SCHEDULES
from bench.core.select import Allocation
from bench.core.sparsity import parse_pattern, resolve_sparsity
from bench.deploy.speed import cost_figures
from bench.runs.export import save_pruned
from bench.runs.record import ResultStore, log_wandb, provenance
from bench.runs.registry import build_pruner
from bench.tasks.base import SCRATCH_RECIPES, STAGE_OPTIMIZER_CHOICES, DenseModel, Task
from bench.tasks.registry import get_task
from bench.training.stages import StageDriver
from bench.training.train import PruneTrainer, fit_dense, seed_everything, train_dense

SPEC_VERSION = 1
# a run whose test metric is within this many metric points of the task's trivial predictor
# (majority class, all background, no detections) learned nothing usable: the row says "collapsed"
COLLAPSE_MARGIN = 1.0
BUDGET_FIELDS = (
    "dense_epochs",
    "prune_epochs",
    "finetune_epochs",
    "finetune_schedule",
    "finetune_lr",
    "prune_lr",
    "stage_optimizer",
    "scratch_recipe",
)
FINETUNE_SCHEDULES = ("shared", *OWN_FINETUNE_SCHEDULES)


def check_budget_overrides(budget: Any, where: str = "budget") -> None:
    """ConfigError naming the field for anything but the overridable budget fields and their types."""
    if not isinstance(budget, dict):
        raise ConfigError(where, f"must be a mapping with {', '.join(BUDGET_FIELDS)}")
    for key, value in budget.items():
        if key not in BUDGET_FIELDS:
            raise ConfigError(f"{where}.{key}", f"unknown field; allowed: {', '.join(BUDGET_FIELDS)}")
        if key == "finetune_schedule":
            if value not in FINETUNE_SCHEDULES:
                raise ConfigError(f"{where}.{key}", f"{value!r} is not one of {', '.join(FINETUNE_SCHEDULES)}")
        elif key == "stage_optimizer":
            if value not in STAGE_OPTIMIZER_CHOICES:
                raise ConfigError(f"{where}.{key}", f"{value!r} is not one of {', '.join(STAGE_OPTIMIZER_CHOICES)}")
        elif key == "scratch_recipe":
            if value not in SCRATCH_RECIPES:
                raise ConfigError(f"{where}.{key}", f"{value!r} is not one of {', '.join(SCRATCH_RECIPES)}")
        elif key in ("finetune_lr", "prune_lr"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{where}.{key}", f"must be a number > 0, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{key}", f"must be an integer >= 0, got {value!r}")
    for key in ("dense_epochs", "prune_epochs"):
        if budget.get(key, 1) < 1:
            raise ConfigError(f"{where}.{key}", "must be >= 1")
    if "finetune_lr" in budget and budget.get("finetune_schedule") not in OWN_FINETUNE_SCHEDULES:
        raise ConfigError(
            f"{where}.finetune_lr", f"only with a finetune_schedule of its own: {', '.join(OWN_FINETUNE_SCHEDULES)}"
        )


@dataclass(frozen=True)
class RunSpec:
    task: str
    pruner: str
    pattern: str
    sparsity: float | None = None
    seed: int = 0
    model: str | None = None
    pruner_options: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)  # overrides: epochs, lrs, schedule, stage optimizer (BUDGET_FIELDS)
    data: str | None = None  # dataset folder of tasks that read one by path (imagefolder...)
    dense_checkpoint: str | None = None  # the user's dense model, instead of training one
    # the protocol's allocation rule (bench.core.select.Allocation): "uniform" | "global" or
    # {policy, floor}; None = v1 (each pruner's own scope, raw scores)
    allocation: str | dict | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N (bench.core.device); not part of the identity
    amp: bool = False  # bf16 autocast of training; part of the identity when on
    compile: bool = False  # torch.compile of the model in the native training steps; part of the identity when on


@dataclass
class ResolvedRun:
    spec: RunSpec
    task: Task
    pruner: Pruner
    sparsity: float
    canonical: dict[str, Any]
    run_id: str
    dense_state: dict[str, Any] | None = None  # loaded from spec.dense_checkpoint
    unit_counts: dict[str, int] = field(default_factory=dict)  # units of every covered prunable layer
    dense_layers: dict[str, str] = field(default_factory=dict)  # prunable layers the pattern cannot cover: reason


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def run_identity(
    task_identity: dict[str, Any], pruner_name: str, pruner: Pruner, seed: int, budget=None
) -> tuple[dict[str, Any], str]:
    """The one place a run id is computed: (canonical spec, its 12-hex-digit hash).

    ``pruner.config`` holds values already canonicalised by their declared type
    (``PrunerConfig.from_dict``), so YAML and CLI spellings of one config give one id. The
    pruner's ``method_version`` enters the spec only when it is not 1: every id made before
    methods had versions stays valid, and a bumped method's rows never share an id with the old.
    ``budget``: the task's, which can select an earlier version (``Pruner.method_version_for``)."""
    version = pruner.method_version_for(budget)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError("method_version", f"pruner '{pruner_name}' declares {version!r}: must be an integer >= 1")
    canonical = {
        "version": SPEC_VERSION,
        "task": task_identity,
        "pruner": pruner_name,
        "pruner_config": pruner.config.to_dict(),
        "pattern": str(pruner.pattern),
        "sparsity": round(pruner.sparsity, 10),
        "seed": seed,
    }
    if pruner.allocation is not None:  # absent for v1 runs: their ids are unchanged
        canonical["allocation"] = pruner.allocation.to_dict()
    if version != 1:  # absent at version 1: ids made before methods had versions are unchanged
        canonical["method_version"] = version
    if pruner.keeps_all:
        # a control that masks nothing (nomask) trains the same model whatever the column: its id
        # leaves out the pattern, sparsity and allocation, so one run per (task, budget, seed) serves
        # every column of a suite (tests/test_suite.py checks that the numbers do not depend on them)
        keyed = {k: v for k, v in canonical.items() if k not in ("pattern", "sparsity", "allocation")}
        return canonical, short_hash({**keyed, "keeps_all": True})
    return canonical, short_hash(canonical)


def configured_task(spec: RunSpec, device: torch.device | None = None) -> Task:
    """The spec's task with its device (``device``, else the spec's resolved), amp, compile and budget
    overrides; builds no model. ``suite plan --estimate`` passes its own device (a GPU suite is
    planned on a login node without one)."""
    task = get_task(spec.task, spec.model, spec.data)
    task.device = resolve_device(spec.device) if device is None else device
    if not isinstance(spec.amp, bool):
        raise ConfigError("amp", f"must be true or false, got {spec.amp!r}")
    task.amp = spec.amp
    if not isinstance(spec.compile, bool):
        raise ConfigError("compile", f"must be true or false, got {spec.compile!r}")
    if spec.compile and task.loop != "native":
        raise ConfigError(
            "compile",
            f"task '{spec.task}' trains in its own ({task.loop}) loop; --compile applies to the native loop's tasks only",
        )
    task.compile = spec.compile
    check_budget_overrides(spec.budget)
    budget = dict(spec.budget)
    for key in ("finetune_lr", "prune_lr"):
        if key in budget:
            budget[key] = float(budget[key])
    if budget:
        task.budget = dataclasses.replace(task.budget, **budget)
    if task.budget.prune_epochs < 1:
        raise ConfigError("budget.prune_epochs", "must be >= 1")
    return task


def resolve(spec: RunSpec) -> ResolvedRun:
    """Validate everything that can be validated before training; raises ConfigError."""
    task = configured_task(spec)
    pattern = parse_pattern(spec.pattern)
    if isinstance(spec.sparsity, bool) or (spec.sparsity is not None and not isinstance(spec.sparsity, (int, float))):
        raise ConfigError("sparsity", f"must be a number in (0, 1), got {spec.sparsity!r}")
    sparsity = resolve_sparsity(pattern, spec.sparsity)
    if not isinstance(spec.seed, int) or spec.seed < 0:
        raise ConfigError("seed", f"must be an integer >= 0, got {spec.seed!r}")
    allocation = Allocation.from_value(spec.allocation)
    pruner = build_pruner(spec.pruner, pattern, sparsity, spec.pruner_options, allocation)
    model = task.build_model()  # also checks the pattern against every prunable layer
    check_input(task, model)
    unit_counts, dense_layers = covered_layers(
        model, find_prunable(model, task.include, task.exclude, task.keep_first_last), pattern
    )
    if allocation is not None and allocation.budget == "flops":  # the unit costs the budget counts
        with task.quiet():
            allocation = allocation.with_costs(unit_costs(model, unit_counts, task.example_input()))
        pruner.allocation = allocation
    if allocation is not None:
        allocation.check(unit_counts, pattern, sparsity)
    identity, dense_state = task.identity(), None
    if spec.dense_checkpoint is not None:
        dense_state, digest = load_dense_checkpoint(spec.dense_checkpoint, model)
        identity["dense_checkpoint"] = {"sha256": digest}  # absent otherwise: v1 ids unchanged
    canonical, run_id = run_identity(identity, spec.pruner, pruner, spec.seed, task.budget)
    return ResolvedRun(spec, task, pruner, sparsity, canonical, run_id, dense_state, unit_counts, dense_layers)


def transplant_counts(
    source: str, task: Task, pattern, seed: int, store: ResultStore | None = None
) -> dict[str, int]:
    """The per-layer kept units of run ``source`` (its row's audit), for ``allocation: from:source``:
    a ConfigError, before training, when that run is not in the store or is not of this task,
    pattern and seed (its counts would not fit, or would come from another dense model)."""
    row = (store or ResultStore()).get(source)
    if row is None:
        raise ConfigError(
            "allocation.source", f"run {source} is not in the result store: run it before its transplant control"
        )
    theirs = (row.get("task"), row.get("pattern"), row.get("seed"))
    if theirs != (task.name, str(pattern), seed):
        raise ConfigError(
            "allocation.source",
            f"run {source} is {theirs[0]} / {theirs[1]} / seed {theirs[2]}; its transplant must be "
            f"{task.name} / {pattern} / seed {seed}",
        )
    return {layer["layer"]: int(layer["kept_units"]) for layer in (row.get("audit") or {}).get("layers", [])}


def check_input(task: Task, model) -> None:
    """One forward pass of the task's example input: a model that cannot take the task's input
    (e.g. a 32x downsampling ConvNeXt at 28x28, a 224-only ViT) is one ConfigError naming the
    model, before any training, instead of a traceback in the middle of the pipeline."""
    example = task.example_input()
    shape = tuple((example["inputs"] if isinstance(example, dict) else example).shape[1:])
    was_training = model.training
    try:
        with torch.no_grad(), task.quiet():
            model.eval()
            model(**example) if isinstance(example, dict) else model(example)
    except (RuntimeError, ValueError, IndexError, AssertionError, TypeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            "model", f"'{task.model_name}' cannot take the input of task '{task.name}' {shape}: {reason}"
        ) from None
    finally:
        model.train(was_training)


def load_dense_checkpoint(path: str, model) -> tuple[dict[str, Any], str]:
    """(state_dict, sha256 prefix) of a user's dense checkpoint, checked against ``model``'s keys and shapes.

    Accepted: a plain state_dict, or a dict holding one under ``state_dict`` (timm training
    checkpoints) or ``model`` (our mm dense cache). Loaded with ``weights_only=True``."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("dense_checkpoint", f"no such file: {file}")
    payload = load_artifact(file, "dense checkpoint")
    state = payload
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                state = payload[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError("dense_checkpoint", f"{file} holds no state_dict (tensors by parameter name)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    problems = [
        f"{label} {len(keys)}: {some(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise ConfigError("dense_checkpoint", f"{file} does not fit the task's model; " + "; ".join(problems))
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return state, digest


def train_from_scratch(
    run: ResolvedRun, model, driver: StageDriver, paths: RunPaths, log: Callable[[str], None]
) -> tuple[Path, dict]:
    """The from-scratch part of a ``trains_from_scratch`` control (``scratch``, ``scratch-full``):
    its fixed masks installed in the re-initialised ``model``, trained with the task's dense recipe
    (its optimizer and one cosine); resumable. Returns (the resume location, what the row records).

    ``scratch_recipe: stages`` (method_version 2, protocol v3): the dense + prune epochs at the
    dense peak lr (``Budget.lr``, no multiplier); the fine-tuning stage that follows is every
    label's (the caller runs it with ``driver``, whose pruning stage is empty), so the retraining
    lr multiplier scales the same stage for every label (issue 32 item 3). ``single`` (version 1,
    leaderboard v2): every epoch, dense + prune + finetune, at the dense peak lr times the cell's
    retraining lr multiplier; ``driver`` then has no epochs left."""
    task, b = run.task, run.task.budget
    driver.finish()  # the control's masks, installed before the first step
    if b.scratch_recipe == "single":
        epochs = b.dense_epochs + b.prune_epochs + b.finetune_epochs
        own = b.finetune_schedule in OWN_FINETUNE_SCHEDULES
        lr = b.lr * (b.finetune_lr / b.prune_lr if own and b.finetune_lr else 1.0)
        suffix, record = "", {}
    else:
        epochs, lr = b.dense_epochs + b.prune_epochs, b.lr
        suffix, record = "-scratch", {"finetune_epochs": b.finetune_epochs}
    if task.loop == "mmengine":
        work_dir = paths.mm_work(run.run_id + suffix)
        task.fit_dense(model, epochs, run.spec.seed, work_dir, log, lr=lr, resume=True, stage="scratch")
    else:
        work_dir = paths.checkpoint(run.run_id + suffix)
        fit_dense(task, model, epochs, run.spec.seed, log, lr=lr, checkpoint=work_dir, stage="scratch")
    return work_dir, {"epochs": epochs, "lr": round(lr, 10), "optimizer": task.dense_optimizer} | record


def dense_key(task: Task, seed: int) -> str:
    """Identity of the dense model of (task, seed): the task without its pruning-stage budget."""
    identity = task.identity()
    stage_fields = ("prune_epochs", "finetune_epochs", "prune_lr", "finetune_schedule", "finetune_lr", "stage_optimizer")
    identity["budget"] = {k: v for k, v in identity["budget"].items() if k not in stage_fields}
    return short_hash({"task": identity, "seed": seed})


def dense_checkpoint_path(task: Task, seed: int, paths: RunPaths | None = None) -> Path:
    return paths_or_env(paths).dense(task.name, dense_key(task, seed))


def execute(
    run: ResolvedRun,
    log: Callable[[str], None] = print,
    wandb_project: str | None = None,
    group: str | None = None,
    store: ResultStore | None = None,
    paths: RunPaths | None = None,
    wandb: bool = True,
) -> dict[str, Any]:
    """Run (or resume) one resolved run, append its row to the store, log to W&B (unless ``wandb``
    is False: DDP ranks > 0). ``paths``: the runs folder (default: ``SMARTBENCH_RUNS``)."""
    paths = paths_or_env(paths)
    store = store or ResultStore(paths.store)
    existing = store.get(run.run_id)
    if existing is not None:
        log(f"run {run.run_id} already in the store")
        return existing
    task, spec = run.task, run.spec
    started = time.perf_counter()
    result = prune_and_measure(run, paths, log)
    row = {
        "run_id": run.run_id,
        "task": task.name,
        "family": task.family,
        "model": task.model_name,
        "pruner": spec.pruner,
        "pattern": run.canonical["pattern"],
        "target_sparsity": run.sparsity,
        "metric_name": task.metric_name,
        "seed": spec.seed,
        "wall_s": round(time.perf_counter() - started, 2),
        "pruner_config": run.pruner.config.to_dict(),
        "method_version": run.canonical.get("method_version", 1),  # the pruner's, as its run id hashes it
        "budget": dataclasses.asdict(task.budget),
        "provenance": provenance(task.dataset_hash()),
        "device": describe(task.device),
        **result,
    }
    if "allocation" in run.canonical and not run.pruner.keeps_all:
        row["allocation"] = run.canonical["allocation"]  # the protocol's rule and keep floor, readable
    if spec.data is not None:
        row["data"] = spec.data  # tasks reading a dataset by path: export/speed rebuild the model from it
    if spec.dense_checkpoint is not None:
        row["dense_checkpoint"] = spec.dense_checkpoint
    if group:
        row["suite"] = group
    store.append(row)
    if wandb:
        log_wandb(row, run.canonical, project=wandb_project, group=group, directory=paths.root)
    return row


def prune_and_measure(run: ResolvedRun, paths: RunPaths, log: Callable[[str], None]) -> dict[str, Any]:
    """Dense (cached) -> prune + fine-tune -> audit -> metrics -> cost figures -> saved model."""
    task, spec, pruner = run.task, run.spec, run.pruner
    b = task.budget
    task.check_data()  # a user's copy: wrong sizes or labels fail here, before any training or file
    if pruner.allocation is not None and pruner.allocation.policy == "from":  # the transplant's counts, now
        rule = pruner.allocation  # (not at resolve: a suite plans its transplant cells before their sources ran)
        counts = transplant_counts(rule.source, task, pruner.pattern, spec.seed, ResultStore(paths.store))
        pruner.allocation = rule.with_counts(counts)
        pruner.allocation.check(run.unit_counts, pruner.pattern, run.sparsity)
    with task.quiet():
        dense_path = dense_checkpoint_path(task, spec.seed, paths)
        if run.dense_state is not None:  # the user's checkpoint replaces dense training
            dense = DenseModel(run.dense_state)
        elif task.loop == "mmengine":
            dense = task.train_dense(spec.seed, dense_path, log)
        else:
            dense = train_dense(task, spec.seed, dense_path, log)
        seed_everything(spec.seed)
        model = task.build_model()
        task.load_dense(model, dense.state)
        allocation = pruner.allocation
        layer_costs = allocation.costs if allocation is not None and allocation.costs else None
        if layer_costs is None:  # every row reports the FLOPs sparsity of its covered layers
            layer_costs = unit_costs(model, run.unit_counts, task.example_input())
        model.to(task.device)  # before the masker and the pruner exist: their tensors follow the layers
        dense_test = dense.metrics["test"] if dense.metrics else task.evaluate_all(model, "test")
        dense_val = dense.metrics["val"] if dense.metrics else task.evaluate_all(model, "val")
        if pruner.trains_from_scratch:  # the dense model's initialisation for this seed, not its weights
            seed_everything(spec.seed)
            model = task.build_model()
            task.initialise(model)
            model.to(task.device)
        names, dense_layers = list(run.unit_counts), run.dense_layers  # the covered layers, from resolve
        calibration = task.calibration_batches()
        masker = Masker(model, names, pruner.pattern, task.masker_example(model, calibration))
        from_scratch = pruner.trains_from_scratch  # its prune (and, single: finetune) epochs are from scratch
        driver = StageDriver(
            pruner,
            masker,
            0 if from_scratch else b.prune_epochs,
            0 if from_scratch and b.scratch_recipe == "single" else b.finetune_epochs,
            log,
            evaluate=None if pruner.trains_from_scratch else lambda: task.evaluate_all(model, "test"),
            budget=b,
        )
        started = time.perf_counter()
        driver.setup(calibration, task.forward)
        scratch, work_dirs = None, []
        if pruner.trains_from_scratch:
            scratch_dir, scratch = train_from_scratch(run, model, driver, paths, log)
            work_dirs.append(scratch_dir)
        if driver.epochs == 0:  # a from-scratch control without fine-tuning epochs
            hard = driver.finish()
        elif task.loop == "mmengine":
            work_dirs.append(paths.mm_work(run.run_id))
            hard = task.train_stages(model, driver, spec.seed, work_dirs[-1], log)
        else:
            work_dirs.append(paths.checkpoint(run.run_id))
            hard = PruneTrainer(task, model, driver, spec.seed, work_dirs[-1], log).run()
        prune_wall = time.perf_counter() - started
        audit = masker.audit(hard, pruner.allocation)
        audit.update(flops_audit(audit["layers"], layer_costs))
        if dense_layers:  # left dense by the coverage rule (bench.core.masks.covered_layers)
            audit["dense_layers"] = [{"layer": name, "reason": why} for name, why in dense_layers.items()]
        val, test = task.evaluate_all(model, "val"), task.evaluate_all(model, "test")
        masker.remove(fold=True)
        pruner_stats = pruner.log_values()  # while the pruner's tensors and the layers share a device
        model.cpu()  # cost figures and the saved model: on the CPU, wherever training ran
        hard = {name: mask.cpu() for name, mask in hard.items()}
        costs = cost_figures(model, None, hard, task.example_input(), pruner.pattern)
        save_pruned(
            paths.model(run.run_id),
            model,
            hard,
            {
                "run_id": run.run_id,
                "task": task.name,
                "model": task.model_name,
                "pattern": run.canonical["pattern"],
                "sparsity": run.sparsity,
            },
        )
    for work_dir in work_dirs:
        if work_dir.is_dir():
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            work_dir.unlink(missing_ok=True)
    result = {
        "metric": task.metric_of(test),
        "val_metric": task.metric_of(val),
        "dense_metric": task.metric_of(dense_test),
        "dense_val_metric": task.metric_of(dense_val),
        "achieved_sparsity": audit["achieved_sparsity"],
        "budget_kind": "params" if pruner.allocation is None else pruner.allocation.budget,
        "achieved_flops_sparsity": round(audit["achieved_flops_sparsity"], 6),
        "weight_sparsity": audit["weight_sparsity"],
        "pattern_valid": audit["pattern_valid"],
        "prune_wall_s": round(prune_wall, 2),
        "audit": audit,
        "pruner_stats": pruner_stats,
        **costs,
    }
    if scratch is not None:
        result["trained_from_scratch"] = scratch
    if driver.before_finetune is not None:  # test metric right after the hard switch
        result["metric_before_finetune"] = task.metric_of(driver.before_finetune)
    elif b.finetune_epochs == 0:  # the hard switch ends training: the final metric is that metric
        result["metric_before_finetune"] = result["metric"]
    trivial = task.trivial_metric()
    if trivial is not None:  # higher is better for every task metric here
        result["trivial_metric"] = round(float(trivial), 4)
        result["collapsed"] = bool(result["metric"] <= trivial + COLLAPSE_MARGIN)
    if task.reports_all_metrics:
        result["mm_metrics"] = {"test": test, "val": val, "dense_test": dense_test, "dense_val": dense_val}
    return result
