"""Suites: a YAML grid (tasks x pruners x patterns x sparsities x seeds) -> cells -> runs.

A suite file (``bench/configs/suites/NAME.yaml``, read with ``yaml.safe_load``)::

    name: smoke                      # optional, defaults to the file name
    description: every pruner on the tiny task
    tasks: [fmnist-tiny]
    pruners: [smart, {name: smart, as: smart-adaptive, options: {schedule: adaptive}}, magnitude]
    patterns: [block:1x8, nm:2:4]    # nm:N:M implies its sparsity (1 - N/M)
    sparsities: [0.5, 0.9]           # used by the non-N:M patterns
    seeds: [0, 1, 2]
    budget: {prune_epochs: 1, finetune_epochs: 1}   # optional override of the task budget
    allocation: {policy: global, floor: 0.1}          # optional: the allocation rule (bench.core.select.
                                                      # Allocation); default: the protocol's, global with
                                                      # the floor min(10%, half the kept fraction); v1: none
    data: /path/to/images                             # optional: dataset folder (imagefolder tasks)
    dense_checkpoint: /path/to/dense.pt               # optional: start every cell from this model
    cells:                           # optional blocks; each overrides any of the keys above
      - {tasks: [fmnist-resnet], patterns: [channel], sparsities: [0.5]}
    requires_tasks_present: true     # false: `suite plan` also works for unregistered tasks
    plan_only: false                 # true: a recipe that `suite run` refuses
    marks: v3                        # the statistics of its tables (bench.reports.tables; v2: as committed for v2)
    margin: 1.0                      # v3: the equivalence margin of its tables, metric points (default 0.5)

One *cell* is one run (task, pruner entry, pattern, sparsity, seed). Its run id comes from
``bench.runs.run.resolve`` (the canonical resolved config; see docs/suites.md). A pruner whose
``patterns`` do not include a cell's pattern kind (e.g. srste: only ``nm``) is skipped for that
cell with a note, not an error. Everything is validated before any training starts.

Cell state lives in the result store (done) and in small marker files written atomically under
``runs/suites/<suite>/state/`` (``<run_id>.running`` with pid + host, ``<run_id>.failed`` with
the error). A ``.running`` marker whose process is gone on this host means the cell was
interrupted: it counts as pending and resumes from its checkpoint.

A cell is run only by the process that *claims* it (:func:`claim_cell`): a non-blocking exclusive
``flock`` on ``state/<run_id>.lock``, held for the whole cell and released by the kernel when the
process ends or dies, so two runners of one suite never run a cell twice and a crash never leaves
a stale claim. The ``.running`` marker is written after the claim is taken (it says who holds it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.core.errors import ConfigError, DataError, SmartbenchError
from bench.core.paths import RunPaths, paths_or_env
from bench.core.select import Allocation, protocol_allocation
from bench.core.sparsity import parse_pattern, resolve_sparsity
from bench.runs.record import ResultStore
from bench.runs.run import RunSpec, check_budget_overrides, dense_key, resolve, run_identity, short_hash
from bench.suites.tuned import parse_settings, read_tuned, retraining_lr, tunes_retraining_lr

SUITES_DIR = Path(__file__).resolve().parents[1] / "configs" / "suites"  # package data
BLOCK_FIELDS = (
    "tasks",
    "pruners",
    "patterns",
    "sparsities",
    "seeds",
    "budget",
    "model",
    "allocation",
    "data",
    "dense_checkpoint",
)
TOP_FIELDS = (
    "name",
    "description",
    *BLOCK_FIELDS,
    "cells",
    "requires_tasks_present",
    "plan_only",
    "wandb_project",
    "tune",
    "marks",
    "margin",
)
PRUNER_FIELDS = ("name", "as", "options")
KIND_NAMES = {
    str: "a string",
    int: "an integer",
    (int, float): "a number",
    dict: "a mapping",
    (str, dict): "a pruner name or a mapping {name, as, options}",
}


@dataclass(frozen=True)
class PrunerEntry:
    name: str  # registered pruner name
    label: str  # row label in tables (``as:``), defaults to the name
    options: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class Block:
    tasks: list[str]
    pruners: list[PrunerEntry]
    patterns: list[str]
    sparsities: list[float]
    seeds: list[int]
    budget: dict[str, int]
    model: str | None
    where: str  # "suite" or "suite.cells[i]", for error messages
    allocation: dict | str | None = None  # Allocation.to_dict(), "v1", or None / "protocol" (the default)
    data: str | None = None  # dataset folder of tasks that read one by path (imagefolder...)
    dense_checkpoint: str | None = None  # the user's dense model for every cell of the block


@dataclass
class Cell:
    spec: RunSpec
    label: str
    run_id: str
    registered: bool = True  # False: task not registered, run id from the spec alone
    epochs: int | None = None  # prune + finetune epochs
    steps: int | None = None  # prune + finetune optimizer steps
    dense_key: str = ""  # the dense model of (task, seed) (its checkpoint's name); shared by cells
    dense_epochs: int | None = None
    dense_steps: int | None = None

    @property
    def column(self) -> tuple[str, str, float]:
        return (self.spec.task, self.spec.pattern, self.spec.sparsity)


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    blocks: list[Block]
    requires_tasks_present: bool = True
    plan_only: bool = False
    wandb_project: str | None = None
    marks: str = "v3"  # the statistics behind its tables' marks (bench.reports.tables.MARKS)
    margin: float = 0.5  # v3: its tables' equivalence margin in metric points (bench.reports.tables.MARGIN)
    cells: list[Cell] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # notes for cells a pruner cannot run
    tune: Any = None  # bench.suites.tuned.TuneSettings from the `tune:` key, or None
    tuned: dict | None = None  # its file's chosen configs {label: {family: chosen}}; None: not tuned yet
    untuned: list[str] = field(default_factory=list)  # "label on family" of cells the tuned file lacks
    # every (column, label, seed) of the suite, one run may fill several: a control that keeps every
    # unit (nomask) has one run id per (task, budget, seed) and appears in every column of its
    # task; ``cells`` are the distinct runs. Empty: the same as ``cells``.
    placements: list[Cell] = field(default_factory=list)

    def placed(self) -> list[Cell]:
        return self.placements or self.cells

    def state_dir(self, paths: RunPaths | None = None) -> Path:
        return paths_or_env(paths).suite_state(self.name)


# -- loading and validation ------------------------------------------------------------------
def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = SUITES_DIR / f"{name}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError("suite", f"unknown suite '{name}'; allowed: {', '.join(list_suites())} or a path to a .yaml file")


def _list(raw: Any, where: str, kind: type | tuple, allow_empty: bool = False) -> list:
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise ConfigError(where, f"must be a non-empty list, got {raw!r}")
    for i, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, kind):
            raise ConfigError(f"{where}[{i}]", f"must be {KIND_NAMES[kind]}, got {item!r}")
    return raw


def _pruner_entries(raw: Any, where: str, known: dict[str, type]) -> list[PrunerEntry]:
    entries = []
    for i, item in enumerate(_list(raw, where, (str, dict))):
        at = f"{where}[{i}]"
        if isinstance(item, dict):
            unknown = set(item) - set(PRUNER_FIELDS)
            if unknown:
                raise ConfigError(at, f"unknown field(s) {sorted(unknown)}; allowed: {', '.join(PRUNER_FIELDS)}")
            name, label, options = item.get("name"), item.get("as", item.get("name")), item.get("options") or {}
            if not isinstance(options, dict):
                raise ConfigError(f"{at}.options", f"must be a mapping of pruner config fields, got {options!r}")
        else:
            name, label, options = item, item, {}
        if name not in known:
            raise ConfigError(at, f"unknown pruner '{name}'; allowed: {', '.join(sorted(known))}")
        if not isinstance(label, str) or not label:
            raise ConfigError(f"{at}.as", f"must be a non-empty string, got {label!r}")
        if label in [e.label for e in entries]:
            raise ConfigError(at, f"duplicate pruner label '{label}'; give it its own `as: LABEL`")
        try:  # options are checked here (before any model is built) and again by resolve()
            known[name].Config.from_dict(options, owner=name)
        except ConfigError as err:
            raise ConfigError(f"{at}.options", str(err)) from None
        entries.append(PrunerEntry(name, label, dict(options)))
    return entries


def _block(raw: dict, defaults: dict, where: str, known: dict[str, type]) -> Block:
    values = {**defaults, **raw}
    for key in ("tasks", "pruners", "patterns", "seeds"):
        if key not in values:
            raise ConfigError(f"{where}.{key}", "required (here or at the top level)")
    tasks = _list(values["tasks"], f"{where}.tasks", str)
    pruners = _pruner_entries(values["pruners"], f"{where}.pruners", known)
    patterns = _list(values["patterns"], f"{where}.patterns", str)
    for i, text in enumerate(patterns):
        try:
            parse_pattern(text)
        except ConfigError as err:
            raise ConfigError(f"{where}.patterns[{i}]", str(err)) from None
    needs_sparsity = any(parse_pattern(p).fixed_sparsity is None for p in patterns)
    raw_sparsities = values.get("sparsities")
    sparsities = _list(raw_sparsities, f"{where}.sparsities", (int, float)) if needs_sparsity or raw_sparsities else []
    for i, value in enumerate(sparsities):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{where}.sparsities[{i}]", f"{value} is outside (0, 1)")
    seeds = _list(values["seeds"], f"{where}.seeds", int)
    for i, seed in enumerate(seeds):
        if seed < 0:
            raise ConfigError(f"{where}.seeds[{i}]", f"must be an integer >= 0, got {seed}")
    budget = values.get("budget") or {}
    check_budget_overrides(budget, f"{where}.budget")
    model = values.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{where}.model", f"must be a string such as timm:resnet18, got {model!r}")
    raw_allocation = values.get("allocation")
    try:
        allocation = None if raw_allocation in (None, "protocol", "v1") else Allocation.from_value(raw_allocation)
    except ConfigError as err:
        raise ConfigError(f"{where}.{err.field}", str(err)[len(err.field) + 2 :]) from None
    paths = {}
    for key in ("data", "dense_checkpoint"):
        value = values.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where}.{key}", f"must be a path (relative: to the current directory), got {value!r}")
        paths[key] = None if value is None else str(Path(value).expanduser())
    return Block(
        list(tasks),
        pruners,
        list(patterns),
        [float(s) for s in sparsities],
        list(seeds),
        dict(budget),
        model,
        where,
        # missing: the protocol's rule, decided per sparsity when the cells are made; v1: none
        raw_allocation if allocation is None else allocation.spec(),
        paths["data"],
        paths["dense_checkpoint"],
    )


def load_suite(name: str, tuned: bool = True) -> Suite:
    """Read and validate a suite file (names, ranges, labels); no model is built. ``tuned``: read
    the tuned-config file of its ``tune:`` key (False: `smartbench tune`, which rewrites it)."""
    from bench.runs.registry import load_pruners

    path = suite_path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError("suite", f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError("suite", f"{path} must hold a mapping with {', '.join(TOP_FIELDS)}")
    unknown = set(raw) - set(TOP_FIELDS)
    if unknown:
        raise ConfigError("suite", f"unknown field(s) {sorted(unknown)}; allowed: {', '.join(TOP_FIELDS)}")
    suite_name = raw.get("name", path.stem)
    if not isinstance(suite_name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", suite_name):
        raise ConfigError("suite.name", f"must be letters, digits, '_', '-' or '.', got {suite_name!r}")
    for key in ("requires_tasks_present", "plan_only"):
        if not isinstance(raw.get(key, False), bool):
            raise ConfigError(f"suite.{key}", f"must be true or false, got {raw[key]!r}")
    if raw.get("marks", "v3") not in ("v3", "v2"):
        raise ConfigError("suite.marks", f"{raw['marks']!r} is not one of v3, v2")
    margin = raw.get("margin", 0.5)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
        raise ConfigError("suite.margin", f"must be a number of metric points > 0, got {margin!r}")
    known = load_pruners()
    defaults = {k: raw[k] for k in BLOCK_FIELDS if k in raw}
    cells = raw.get("cells")
    if cells is None:
        blocks = [_block({}, defaults, "suite", known)]
    else:
        blocks = []
        for i, item in enumerate(_list(cells, "suite.cells", dict)):
            bad = set(item) - set(BLOCK_FIELDS)
            if bad:
                raise ConfigError(
                    f"suite.cells[{i}]", f"unknown field(s) {sorted(bad)}; allowed: {', '.join(BLOCK_FIELDS)}"
                )
            blocks.append(_block(item, defaults, f"suite.cells[{i}]", known))
    labels: dict[str, PrunerEntry] = {}
    for block in blocks:  # one label means one (pruner, options) everywhere in the suite
        for entry in block.pruners:
            seen = labels.setdefault(entry.label, entry)
            if (seen.name, seen.options) != (entry.name, entry.options):
                raise ConfigError(
                    f"{block.where}.pruners", f"label '{entry.label}' means two configurations; rename one with `as:`"
                )
    plan_only = raw.get("plan_only", False)
    tune = parse_settings(raw.get("tune"), path)
    loaded = Suite(
        suite_name,
        path,
        str(raw.get("description", "")),
        blocks,
        requires_tasks_present=raw.get("requires_tasks_present", True) and not plan_only,
        plan_only=plan_only,
        wandb_project=raw.get("wandb_project"),
        marks=raw.get("marks", "v3"),
        margin=float(margin),
        tune=tune,
        tuned=None if tune is None or not tuned else read_tuned(tune, suite_name),
    )
    from bench.suites.tuned import held_out_warning

    held_out_warning(loaded)  # held_out_seed: true with an evaluated tune.seed is refused here, before any cell
    return loaded


# -- expansion into cells ----------------------------------------------------------------------
def expand(suite: Suite, device: str = "auto", amp: bool = False, compile: bool = False) -> Suite:
    """Fill ``suite.cells`` (resolved run ids, budgets) and ``suite.skipped``; raises ConfigError.

    ``device`` (where the cells train; not part of their ids), ``amp`` (bf16 autocast) and ``compile``
    (torch.compile of the training steps; both part of their ids when on) are the command line's
    ``--device`` / ``--amp`` / ``--compile``, the same for every cell."""
    from bench.runs.registry import get_pruner_class
    from bench.tasks.registry import get_task, load_tasks

    tasks = load_tasks()
    resolved: dict[str, Any] = {}
    unavailable: set[str] = set()  # registered tasks whose optional packages are missing here
    steps_cache: dict[str, int | None] = {}
    suite.cells, suite.skipped, untuned = [], [], set()
    defaults: dict[tuple, Any] = {}  # the task's own Budget per (task, model, data)
    for block in suite.blocks:  # names first: a typo fails before any model is built
        for t, task in enumerate(block.tasks):
            if task not in tasks and suite.requires_tasks_present:
                raise ConfigError(
                    f"{block.where}.tasks[{t}]", f"unknown task '{task}'; allowed: {', '.join(sorted(tasks))}"
                )
    for block in suite.blocks:
        for t, task in enumerate(block.tasks):
            for pattern_text in block.patterns:
                pattern = parse_pattern(pattern_text)
                for sparsity in [pattern.fixed_sparsity] if pattern.fixed_sparsity is not None else block.sparsities:
                    resolve_sparsity(pattern, sparsity)
                    for entry in block.pruners:
                        cls = get_pruner_class(entry.name)
                        if pattern.kind not in cls.patterns:
                            suite.skipped.append(
                                f"{entry.label} on {task} {pattern} {sparsity:g}: pruner supports only "
                                f"{', '.join(cls.patterns)}"
                            )
                            continue
                        options, budget = dict(entry.options), dict(block.budget)
                        if suite.tuned is not None and task in tasks:  # the tuned config of (label, family)
                            label = tuning_label(suite, block, entry)
                            chosen = suite.tuned.get(label, {}).get(tasks[task].family)
                            if chosen is None:
                                untuned.add(f"{label} on {tasks[task].family}")
                            else:
                                options.update(chosen["options"])
                                key = (task, block.model, block.data)
                                if key not in defaults:
                                    defaults[key] = get_task(*key).budget
                                if tunes_retraining_lr(budget, defaults[key]):
                                    budget["finetune_lr"] = retraining_lr(
                                        chosen["lr_multiplier"], budget, defaults[key]
                                    )
                                    if "finetune_schedule" in chosen:  # the family's, chosen by the no-mask control
                                        budget["finetune_schedule"] = chosen["finetune_schedule"]
                        for seed in block.seeds:
                            allocation = protocol_allocation(
                                _transplant_source(block, suite.cells, task, str(pattern), sparsity, seed)
                                or "protocol",
                                sparsity,
                            )
                            spec = RunSpec(
                                task=task,
                                pruner=entry.name,
                                pattern=str(pattern),
                                sparsity=round(sparsity, 10),
                                seed=seed,
                                model=block.model,
                                pruner_options=dict(options),
                                budget=dict(budget),
                                allocation=allocation,
                                data=block.data,
                                dense_checkpoint=block.dense_checkpoint,
                                device=device,
                                amp=amp,
                                compile=compile,
                            )
                            if task in tasks and task not in unavailable:
                                try:
                                    cell = _resolved_cell(spec, entry.label, block.where, resolved, steps_cache)
                                except ModuleNotFoundError as err:  # optional stack (mmdet...) not installed
                                    if suite.requires_tasks_present:
                                        raise ConfigError(
                                            f"{block.where}.tasks[{t}]",
                                            f"task '{task}' needs the module '{err.name}' (pip install -e '.[mm]')",
                                        ) from None
                                    unavailable.add(task)
                                except DataError:  # a user dataset not on this machine: plan-only suites still plan
                                    if suite.requires_tasks_present:
                                        raise
                                    unavailable.add(task)
                            if task not in tasks or task in unavailable:
                                cell = Cell(spec, entry.label, spec_only_id(spec), registered=False)
                            suite.cells.append(cell)
    unique: dict[str, Cell] = {}
    placements: dict[tuple, Cell] = {}
    for cell in suite.cells:  # overlapping blocks may list a run twice: keep it once
        placements.setdefault((cell.run_id, cell.column), cell)
        first = unique.setdefault(cell.run_id, cell)
        if first.label != cell.label:
            spec = cell.spec
            raise ConfigError(
                "suite",
                f"labels '{first.label}' and '{cell.label}' describe the same run {cell.run_id} "
                f"({spec.task} {spec.pattern} {spec.sparsity:g} seed {spec.seed})",
            )
    suite.cells = list(unique.values())
    suite.placements = list(placements.values())
    suite.untuned = sorted(untuned)
    return suite


def is_transplant_block(block: Block) -> bool:
    """A block of transplant controls (``allocation: {policy: from, source: LABEL}``)."""
    return isinstance(block.allocation, dict) and block.allocation.get("policy") == "from"


def tuning_label(suite: Suite, block: Block, entry: PrunerEntry) -> str:
    """The label whose tuned config a cell of ``entry`` in ``block`` runs with: its own, except in a
    transplant block. A transplant (magnitude's selection with another label's per-layer counts)
    is that pruner's recipe under another allocation, so it is not tuned on its own (its source
    would have to be a tuning trial at the tuning seed): it runs with the config chosen for the one
    entry of the same pruner and options outside transplant blocks (``magnitude<-smart``: the
    ``magnitude`` label's). A ConfigError when there is none or more than one."""
    if not is_transplant_block(block):
        return entry.label
    same = sorted(
        {
            e.label
            for b in suite.blocks
            if not is_transplant_block(b)
            for e in b.pruners
            if e.name == entry.name and e.options == entry.options
        }
    )
    if len(same) != 1:
        raise ConfigError(
            f"{block.where}.pruners ({entry.label})",
            f"a transplant runs with the tuned config of the entry of the same pruner and options outside "
            f"transplant blocks; found {len(same)} ({', '.join(same) or 'none'}): list exactly one "
            f"'{entry.name}' entry with these options in a non-transplant block",
        )
    return same[0]


def _transplant_source(block: Block, cells: list[Cell], task: str, pattern: str, sparsity: float, seed: int):
    """The block's allocation, with a transplant's source label (``{policy: from, source: LABEL}``)
    replaced by the run id of that label's cell at the same task, pattern, sparsity and seed -- a
    cell of an earlier block (the transplant reads its row when it runs; the runner runs it last)."""
    allocation = block.allocation
    if not (isinstance(allocation, dict) and allocation.get("policy") == "from"):
        return allocation
    label = allocation["source"]
    for cell in cells:
        spec = cell.spec
        if (cell.label, spec.task, spec.pattern, spec.sparsity, spec.seed) == (
            label,
            task,
            pattern,
            round(sparsity, 10),
            seed,
        ):
            return {"policy": "from", "source": cell.run_id}
    raise ConfigError(
        f"{block.where}.allocation.source",
        f"no cell of label '{label}' at {task} {pattern} {sparsity:g} seed {seed} in an earlier block: "
        "a transplant names the label of a pruner listed before it, at the same columns and seeds",
    )


def spec_only_id(spec: RunSpec) -> str:
    """Identity of a cell whose task is not registered (plan-only): the spec's own fields (fields
    added later count only when set, so older plan ids stay)."""
    fields = {
        k: v
        for k, v in spec.__dict__.items()
        if k != "device"
        and not (k in ("data", "dense_checkpoint", "allocation") and v is None)
        and not (k in ("amp", "compile") and not v)
    }
    return "spec-" + short_hash({"spec_only": 1, **fields}, 7)


def _resolved_cell(spec: RunSpec, label: str, where: str, cache: dict, steps_cache: dict) -> Cell:
    """Cell with the run id resolve() gives it. resolve() (model build + pattern check) runs once
    per (task, model, budget, pattern); the other cells of that layout swap in their pruner
    config, sparsity and seed -- the only other parts of the canonical spec (a test pins the
    equality, and every cell is resolved again, and its id checked, when it runs)."""
    from bench.runs.registry import build_pruner

    layout = json.dumps(
        [spec.task, spec.model, spec.budget, spec.pattern, spec.allocation, spec.data, spec.dense_checkpoint],
        sort_keys=True,
    )
    try:
        if layout not in cache:
            cache[layout] = resolve(spec)
        base = cache[layout]
        allocation = Allocation.from_value(spec.allocation)
        if allocation is not None:  # the floors must fit every sparsity of the layout
            allocation.check(base.unit_counts, base.pruner.pattern, spec.sparsity)
        pruner = build_pruner(spec.pruner, base.pruner.pattern, spec.sparsity, spec.pruner_options, allocation)
    except ConfigError as err:
        raise ConfigError(
            f"{where} ({spec.task} {label} {spec.pattern} {spec.sparsity:g}): {err.field}",
            str(err)[len(err.field) + 2 :],
        ) from None
    _, run_id = run_identity(
        base.canonical["task"], spec.pruner, pruner, spec.seed, base.task.budget
    )  # + checkpoint hash
    task, b = base.task, base.task.budget
    identity = json.dumps(
        {k: v for k, v in task.identity().items() if k != "budget"} | {"bs": b.batch_size}, sort_keys=True, default=str
    )
    if identity not in steps_cache:
        try:
            steps_cache[identity] = task.steps_per_epoch()
        except (NotImplementedError, SmartbenchError):  # e.g. a dataset that is not on this machine
            steps_cache[identity] = None
    per_epoch = steps_cache[identity]
    epochs = b.prune_epochs + b.finetune_epochs
    return Cell(
        spec,
        label,
        run_id,
        epochs=epochs,
        steps=None if per_epoch is None else epochs * per_epoch,
        dense_key=f"{task.name}-{dense_key(task, spec.seed)}",
        dense_epochs=b.dense_epochs,
        dense_steps=None if per_epoch is None else b.dense_epochs * per_epoch,
    )


def load_and_expand(name: str, device: str = "auto", amp: bool = False, compile: bool = False) -> Suite:
    return expand(load_suite(name), device, amp, compile)


# -- state: markers + store ---------------------------------------------------------------------
def write_marker(suite_name: str, run_id: str, kind: str, info: dict[str, Any], paths: RunPaths | None = None) -> None:
    """Atomically write ``<run_id>.<kind>`` (running | failed) under runs/suites/<suite>/state."""
    directory = paths_or_env(paths).suite_state(suite_name)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{run_id}.{kind}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / f"{run_id}.{kind}")


def clear_marker(suite_name: str, run_id: str, kind: str, paths: RunPaths | None = None) -> None:
    (paths_or_env(paths).suite_state(suite_name) / f"{run_id}.{kind}").unlink(missing_ok=True)


def running_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


@contextlib.contextmanager
def claim_cell(suite_name: str, run_id: str, paths: RunPaths | None = None) -> Iterator[bool]:
    """Try to claim a cell for this process until the with-block ends: yields True if it holds the
    claim, False if another process (or another open of the lock file in this one) holds it.

    The claim is a non-blocking exclusive ``flock`` on ``runs/suites/<suite>/state/<run_id>.lock``.
    The kernel drops it when the process ends or dies, so a crash never leaves a stale claim. The
    empty lock file stays (removing it would let a later process lock a new file while another
    still holds the old one). On a shared filesystem (Slurm) the filesystem must support flock."""
    path = paths_or_env(paths).suite_state(suite_name) / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = False
        else:
            held = True
        yield held  # closing the file releases the lock


def claim_holder(suite_name: str, run_id: str, paths: RunPaths | None = None) -> str:
    """Who holds a cell's claim, from its ``.running`` marker ("pid 123 on host"), or "" if unknown."""
    info = _read_json(paths_or_env(paths).suite_state(suite_name) / f"{run_id}.running")
    return f"pid {info['pid']} on {info.get('host', '?')}" if "pid" in info else ""


def _alive(info: dict[str, Any]) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine (Slurm): trust the marker
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def store_counts(store: ResultStore) -> Counter:
    """Rows per run_id, duplicates included (status shows them; it should be exactly 1)."""
    counts: Counter = Counter()
    if store.path.exists():
        with open(store.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    counts[json.loads(line).get("run_id")] += 1
                except json.JSONDecodeError:
                    pass
    return counts


def cell_states(
    suite: Suite, store: ResultStore | None = None, paths: RunPaths | None = None
) -> list[tuple[Cell, str, int]]:
    """(cell, state, rows in store) with state done | running | failed | pending."""
    paths = paths_or_env(paths)
    counts = store_counts(store or ResultStore(paths.store))
    state_dir = suite.state_dir(paths)
    out = []
    for cell in suite.cells:
        running = state_dir / f"{cell.run_id}.running"
        if counts[cell.run_id]:
            state = "done"
        elif running.exists() and _alive(_read_json(running)):
            state = "running"
        elif (state_dir / f"{cell.run_id}.failed").exists():
            state = "failed"
        else:
            state = "pending"
        out.append((cell, state, counts[cell.run_id]))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
