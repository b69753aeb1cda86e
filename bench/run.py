"""One run: spec -> validation -> dense checkpoint -> prune + finetune -> evaluation -> row.

Run identity (OpenLTH-style): ``run_id`` = sha256 of the canonical JSON of the *resolved* spec
(task identity with its budget, pruner name and full config with defaults, pattern, sparsity,
seed), first 12 hex digits. Changing any default therefore changes the id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.errors import ConfigError
from bench.export import save_pruned
from bench.masks import Masker, find_prunable
from bench.pruner import Pruner, build_pruner
from bench.record import ResultStore, log_wandb, provenance, runs_dir
from bench.sparsity import parse_pattern, resolve_sparsity
from bench.speed import cost_figures
from bench.tasks.base import Task, get_task
from bench.train import PruneTrainer, seed_everything, train_dense

SPEC_VERSION = 1
BUDGET_FIELDS = ("prune_epochs", "finetune_epochs")


@dataclass(frozen=True)
class RunSpec:
    task: str
    pruner: str
    pattern: str
    sparsity: float | None = None
    seed: int = 0
    model: str | None = None
    pruner_options: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, int] = field(default_factory=dict)  # overrides of prune/finetune epochs


@dataclass
class ResolvedRun:
    spec: RunSpec
    task: Task
    pruner: Pruner
    sparsity: float
    canonical: dict[str, Any]
    run_id: str


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def run_identity(task_identity: dict[str, Any], pruner_name: str, pruner: Pruner, seed: int) -> tuple[dict[str, Any], str]:
    """The one place a run id is computed: (canonical spec, its 12-hex-digit hash).

    ``pruner.config`` holds values already canonicalised by their declared type
    (``PrunerConfig.from_dict``), so YAML and CLI spellings of one config give one id."""
    canonical = {
        "version": SPEC_VERSION,
        "task": task_identity,
        "pruner": pruner_name,
        "pruner_config": pruner.config.to_dict(),
        "pattern": str(pruner.pattern),
        "sparsity": round(pruner.sparsity, 10),
        "seed": seed,
    }
    return canonical, short_hash(canonical)


def resolve(spec: RunSpec) -> ResolvedRun:
    """Validate everything that can be validated before training; raises ConfigError."""
    task = get_task(spec.task, spec.model)
    unknown = set(spec.budget) - set(BUDGET_FIELDS)
    if unknown:
        raise ConfigError("budget", f"unknown field(s) {sorted(unknown)}; allowed: {', '.join(BUDGET_FIELDS)}")
    for key, value in spec.budget.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"budget.{key}", f"must be an integer >= 0, got {value!r}")
    if spec.budget:
        task.budget = dataclasses.replace(task.budget, **spec.budget)
    if task.budget.prune_epochs < 1:
        raise ConfigError("budget.prune_epochs", "must be >= 1")
    pattern = parse_pattern(spec.pattern)
    if isinstance(spec.sparsity, bool) or (spec.sparsity is not None and not isinstance(spec.sparsity, (int, float))):
        raise ConfigError("sparsity", f"must be a number in (0, 1), got {spec.sparsity!r}")
    sparsity = resolve_sparsity(pattern, spec.sparsity)
    if not isinstance(spec.seed, int) or spec.seed < 0:
        raise ConfigError("seed", f"must be an integer >= 0, got {spec.seed!r}")
    pruner = build_pruner(spec.pruner, pattern, sparsity, spec.pruner_options)
    model = task.build_model()  # also checks the pattern against every prunable layer
    for name in find_prunable(model, task.include, task.exclude, task.keep_first_last):
        pattern.check(dict(model.named_modules())[name].weight.shape, name)
    canonical, run_id = run_identity(task.identity(), spec.pruner, pruner, spec.seed)
    return ResolvedRun(spec, task, pruner, sparsity, canonical, run_id)


def dense_checkpoint_path(task: Task, seed: int) -> Path:
    identity = task.identity()
    identity["budget"] = {k: v for k, v in identity["budget"].items() if k not in ("prune_epochs", "finetune_epochs", "prune_lr")}
    return runs_dir() / "dense" / f"{task.name}-{short_hash({'task': identity, 'seed': seed})}.pt"


def execute(run: ResolvedRun, log: Callable[[str], None] = print, wandb_project: str | None = None,
            group: str | None = None, store: ResultStore | None = None) -> dict[str, Any]:
    """Run (or resume) one resolved run, append its row to the store, log to W&B."""
    store = store or ResultStore()
    existing = store.get(run.run_id)
    if existing is not None:
        log(f"run {run.run_id} already in the store")
        return existing
    task, spec = run.task, run.spec
    started = time.perf_counter()
    if hasattr(task, "execute"):  # tasks with their own loop (mmengine)
        result = task.execute(run, log)
    else:
        result = _execute_native(run, log)
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
        "budget": dataclasses.asdict(task.budget),
        "provenance": provenance(task.dataset_hash()),
        **result,
    }
    if group:
        row["suite"] = group
    store.append(row)
    log_wandb(row, run.canonical, project=wandb_project, group=group)
    return row


def _execute_native(run: ResolvedRun, log) -> dict[str, Any]:
    task, spec = run.task, run.spec
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dense_state = train_dense(task, spec.seed, dense_checkpoint_path(task, spec.seed), log)
    seed_everything(spec.seed)
    model = task.build_model()
    model.load_state_dict(dense_state)
    dense_metric, dense_val = task.evaluate(model, "test"), task.evaluate(model, "val")
    names = find_prunable(model, task.include, task.exclude, task.keep_first_last)
    masker = Masker(model, names, run.pruner.pattern, task.example_input())
    checkpoint = runs_dir() / "checkpoints" / f"{run.run_id}.pt"
    prune_started = time.perf_counter()
    hard = PruneTrainer(task, model, masker, run.pruner, spec.seed, checkpoint, log).run()
    prune_wall = time.perf_counter() - prune_started
    audit = masker.audit(hard)
    val_metric, metric = task.evaluate(model, "val"), task.evaluate(model, "test")
    masker.remove(fold=True)
    costs = cost_figures(model, None, hard, task.example_input(), run.pruner.pattern)
    save_pruned(runs_dir(), model, hard, {"run_id": run.run_id, "task": task.name, "model": task.model_name,
                                          "pattern": run.canonical["pattern"], "sparsity": run.sparsity})
    if checkpoint.exists():
        checkpoint.unlink()
    return {
        "metric": metric, "val_metric": val_metric, "dense_metric": dense_metric, "dense_val_metric": dense_val,
        "achieved_sparsity": audit["achieved_sparsity"], "weight_sparsity": audit["weight_sparsity"],
        "pattern_valid": audit["pattern_valid"], "prune_wall_s": round(prune_wall, 2), "audit": audit,
        "pruner_stats": run.pruner.log_values(), **costs,
    }
