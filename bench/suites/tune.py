"""Equal tuning: ``smartbench tune SUITE`` (protocol v2, and v3's settings).

Every pruner entry of a suite, controls included, gets the same number of trials on one
representative column per task family, scored on the validation split (carved from the training
data; each trial row also holds its test metric, as every row does, but the choice never reads it), seed ``tune.seed``. The suite file declares it::

    tune:
      trials: 4                        # per (pruner entry, family); >= 4
      file: quick.tuned.json           # where the chosen configs go; relative to the suite file
      lr_multipliers: [0.25, 0.5, 1, 2]   # the retraining lr: finetune_lr = m x the cell's prune_lr
      seed: 0
      columns:                         # optional; default: per family, the first column a pruner runs
        - {task: fmnist-tiny, pattern: block:1x8, sparsity: 0.9}
      schedules: [restart, hold]       # optional: each family's fine-tuning schedule, chosen first
      knobs: 2                         # v3, optional: search the first 2 entries of each search_space
      stratify_lr: true                # v3, optional: the trials cycle through the lr multipliers
      held_out_seed: true              # v3, optional: tune.seed in `seeds` is a ConfigError

With ``schedules``, the no-mask control first runs with each listed fine-tuning schedule on every
family's tuning columns (``schedule_suite``); the best validation mean becomes the family's schedule
for every trial and every suite cell of the family (``choose_schedules``): chosen by the control,
the same for every pruner.

A trial's space is the pruner's ``Config.search_space`` (its key knobs, declared next to its
fields, most important first) -- only its first ``knobs`` entries with ``knobs`` -- without the
fields the suite entry fixes, times the retraining lr multipliers. Trial 0 is the defaults
(multiplier 1); the other ``trials - 1`` points are drawn without replacement from the rest of the
grid with a generator seeded by (suite, label, family), so the trials are the same on every
machine. With ``stratify_lr`` the multipliers of trials 0, 1, ... are 1 then the others in declared
order, round and round (:func:`lr_cycle`: each is tried floor(trials / M) or that + 1 times), and
each trial's knob values are drawn without replacement from the rest of the grid at its
multiplier. A space with fewer points than ``trials`` is a ConfigError: no pruner gets fewer (or
more) trials than another. The file records each (label, family)'s ``space_size`` and
``coverage`` (trials / space_size). The lr multiplier needs a fine-tuning stage with its own
schedule (``budget: {finetune_schedule: restart | hold, finetune_epochs: >= 1}`` in the column's
block).

Trials are ordinary runs: the cells of a suite named ``<suite>-tune``, run by the suite runner
(resumable, several workers, claims), their rows in the store. The file records the settings, every
trial's options, run id and validation score, the chosen config per (label, family) (best mean
validation metric over the family's columns; ties: the earlier trial), the trials' wall time and
their cost in optimizer steps against the suite's (then :func:`added_cost` logs what tuning adds:
with ``tune.seed`` among the suite's seeds the winners are suite cells; with a held-out seed none
is), ``held_out``, and ``edge_wins``: the (label, family) pairs whose chosen multiplier is the
grid's largest or smallest. ``--extend-edges`` gives exactly those pairs one more trial one
geometric step beyond that edge with the winning knob values (:func:`edge_trials`) and chooses
again; the file records the ``extension``. ``suite plan|run`` read it (bench.suites.suite):
a cell of a tuned (label, family) runs with the chosen options and retraining lr.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import ConfigError
from bench.core.sparsity import parse_pattern
from bench.suites.tuned import (
    FILE_VERSION,
    TuneSettings,
    held_out,
    held_out_warning,
    read_payload,
    retraining_lr,
    tunes_retraining_lr,
)


# -- the trials ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    label: str  # the suite entry's label
    family: str
    index: int  # 0 = the defaults
    options: dict[str, Any]  # searched knobs only (the entry's own options come on top)
    lr_multiplier: float
    extension: bool = False  # the one step beyond the lr grid's edge (``--extend-edges``)

    @property
    def cell_label(self) -> str:  # unique over the trial suite: one label is tuned once per family
        return f"{self.label}#{self.family}#t{self.index}"


def searched_knobs(entry, settings: TuneSettings) -> dict[str, tuple]:
    """{knob: values} an entry's trials search: the first ``tune.knobs`` entries of its
    ``Config.search_space`` (declared most important first; all of them without ``knobs``), less
    the fields the suite entry fixes."""
    from bench.runs.registry import get_pruner_class

    declared = list(get_pruner_class(entry.name).Config.search_space.items())
    if settings.knobs is not None:
        declared = declared[: settings.knobs]
    return {k: tuple(v) for k, v in declared if k not in entry.options}


def space_of(entry, settings: TuneSettings) -> list[tuple[dict[str, Any], float]]:
    """Every point (searched options, lr multiplier) of an entry's space, valid configs only, in a
    fixed order; the entry's fixed options are not searched."""
    from bench.runs.registry import get_pruner_class

    config_cls = get_pruner_class(entry.name).Config
    knobs = searched_knobs(entry, settings)
    points = []
    for values in itertools.product(*knobs.values()):
        options = dict(zip(knobs, values, strict=True))
        try:
            config_cls.from_dict({**entry.options, **options}, owner=entry.name)
        except ConfigError:
            continue  # a combination the config refuses is not a point of the space
        points.extend((options, m) for m in settings.lr_multipliers)
    return points


def lr_cycle(settings: TuneSettings) -> list[float]:
    """The lr multiplier of each trial with ``stratify_lr``: 1 first (trial 0, the defaults), then
    the others in declared order, round and round -- every multiplier is tried floor(trials / M)
    or that + 1 times, the same counts for every label."""
    order = [1.0, *(m for m in settings.lr_multipliers if m != 1.0)]
    return [order[i % len(order)] for i in range(settings.trials)]


def trials_of(suite_name: str, entry, family: str, settings: TuneSettings) -> list[Trial]:
    """Trial 0 = the defaults (lr multiplier 1), then ``trials - 1`` seeded draws from the rest.

    With ``stratify_lr`` the multipliers follow :func:`lr_cycle` and each trial's knob values are
    drawn without replacement from the rest of the grid at its multiplier (same seeded generator)."""
    from bench.runs.registry import get_pruner_class

    config_cls = get_pruner_class(entry.name).Config
    defaults = config_cls.from_dict(entry.options, owner=entry.name).to_dict()
    points = space_of(entry, settings)
    default = next((p for p in points if p[1] == 1.0 and all(defaults[k] == v for k, v in p[0].items())), None)
    if default is None:
        raise ConfigError(
            f"{entry.name}.search_space", f"the defaults of '{entry.label}' are not a point of its search space"
        )
    rest = [p for p in points if p is not default]
    if len(points) < settings.trials:
        knobs = searched_knobs(entry, settings)
        raise ConfigError(
            "suite.tune.trials",
            f"'{entry.label}' has {len(points)} point(s) in its search space "
            f"({len(points) // len(settings.lr_multipliers)} knob setting(s) of {', '.join(knobs) or 'no knob'} "
            f"x {len(settings.lr_multipliers)} lr multipliers), fewer than the {settings.trials} trials every "
            "pruner gets: lower tune.trials, or add knobs (raise tune.knobs, declare more search_space knobs or "
            "values) or lr_multipliers",
        )
    rng = random.Random(f"{suite_name}/{entry.label}/{family}")
    if not settings.stratify_lr:
        drawn = rng.sample(rest, settings.trials - 1)
    else:  # per multiplier, as many knob settings as the cycle asks for, without replacement
        cycle = lr_cycle(settings)[1:]
        pools = {}
        for m in settings.lr_multipliers:  # declared order: the same draws on every machine
            at_m = [p for p in rest if p[1] == m]
            pools[m] = rng.sample(at_m, cycle.count(m))
        drawn = [pools[m].pop(0) for m in cycle]
    return [Trial(entry.label, family, i, opts, m) for i, (opts, m) in enumerate([default, *drawn])]


def coverage_of(entry, settings: TuneSettings) -> dict[str, Any]:
    """{space_size, trials, coverage}: the points of an entry's space and the share its trials cover."""
    size = len(space_of(entry, settings))
    return {"space_size": size, "trials": settings.trials, "coverage": round(settings.trials / size, 4)}


# -- one step beyond the lr grid's edge ----------------------------------------------------------
def beyond_edge(settings: TuneSettings, edge: str) -> float:
    """The next multiplier past the grid's ``edge`` ("max" or "min") by the grid's geometric step
    there (x2 after 2 and x0.5 below 0.25 for [0.25, 0.5, 1, 2])."""
    grid = sorted(settings.lr_multipliers)
    if edge == "max":
        return round(grid[-1] * grid[-1] / grid[-2], 10)
    return round(grid[0] * grid[0] / grid[1], 10)


def edge_wins(chosen: dict[str, dict[str, Any]], settings: TuneSettings) -> list[dict[str, Any]]:
    """The (label, family) pairs whose chosen lr multiplier is the grid's largest ("max") or
    smallest ("min"), sorted; none with a one-multiplier grid."""
    grid = sorted(settings.lr_multipliers)
    if len(grid) < 2:
        return []
    out = []
    for label, families in sorted(chosen.items()):
        for family, c in sorted(families.items()):
            edge = {grid[-1]: "max", grid[0]: "min"}.get(float(c["lr_multiplier"]))
            if edge is not None:
                out.append(
                    {
                        "label": label,
                        "family": family,
                        "trial": c["trial"],
                        "lr_multiplier": c["lr_multiplier"],
                        "edge": edge,
                        "next": beyond_edge(settings, edge),
                    }
                )
    return out


def edge_trials(chosen: dict[str, dict[str, Any]], settings: TuneSettings) -> list[Trial]:
    """``--extend-edges``: for exactly the :func:`edge_wins` pairs, one more trial (index
    ``trials``) with the winning knob values at the next multiplier beyond the edge."""
    return [
        Trial(
            win["label"],
            win["family"],
            settings.trials,
            dict(chosen[win["label"]][win["family"]]["options"]),
            win["next"],
            extension=True,
        )
        for win in edge_wins(chosen, settings)
    ]


def suite_columns(suite, settings: TuneSettings) -> list[tuple[str, str, float, Any]]:
    """(task, pattern, sparsity, block) of the columns trials may use -- the declared ones (each must
    be a column of the suite), else every column of the suite -- once per block that has the column
    (an ablation block may add labels to a column of another block), in suite order."""
    found: dict[tuple[str, str, float], list] = {}
    for block in suite.blocks:
        for task in block.tasks:
            for text in block.patterns:
                pattern = parse_pattern(text)
                for s in [pattern.fixed_sparsity] if pattern.fixed_sparsity is not None else block.sparsities:
                    found.setdefault((task, str(pattern), round(float(s), 10)), []).append(block)
    if not settings.columns:
        return [(*column, block) for column, blocks in found.items() for block in blocks]
    out = []
    for i, column in enumerate(settings.columns):
        if column not in found:
            raise ConfigError(
                f"suite.tune.columns[{i}]",
                f"{column[0]} {column[1]} {column[2]:g} is not a column of the suite; allowed: "
                + ", ".join(f"{t} {p} {s:g}" for t, p, s in found),
            )
        out.extend((*column, block) for block in found[column])
    return out


def family_columns(suite, settings: TuneSettings, tasks, kinds=None, label: str | None = None) -> dict[str, list]:
    """{family: [(task, pattern, sparsity, block)]}: the columns a pruner of pattern ``kinds`` (None:
    any) listed as ``label`` in a block (None: any block) is tuned on -- the declared ones of each
    family, else the family's first such column.

    A label whose blocks hold none of its family's declared columns (an ablation that only runs at
    the highest block sparsities, say) is tuned on the family's declared columns all the same --
    where the entry it varies was tuned -- so an ablation and its default get the same trials on
    the same columns."""
    per_family: dict[str, list] = {}
    declared: dict[str, dict[tuple, tuple]] = {}  # family -> {column: first (task, pattern, sparsity, block)}
    for column in suite_columns(suite, settings):
        task, pattern, _, block = column
        if kinds is not None and parse_pattern(pattern).kind not in kinds:
            continue
        family = tasks[task].family
        declared.setdefault(family, {}).setdefault(column[:3], column)
        if label is not None and label not in [e.label for e in block.pruners]:
            continue
        per_family.setdefault(family, []).append(column)
    if settings.columns and label is not None:
        for family in _label_families(suite, tasks, kinds, label) - set(per_family):
            if family in declared:
                per_family[family] = list(declared[family].values())
    return {family: usable if settings.columns else usable[:1] for family, usable in per_family.items()}


def tuned_entries(suite) -> dict[str, Any]:
    """{label: PrunerEntry} of the labels tuning gives trials to: every label of the suite but the
    transplant controls, which run with their pruner's tuned config (``suite.tuning_label``, checked
    here so that ``tune --plan`` refuses what ``suite run`` would)."""
    from bench.suites.suite import is_transplant_block, tuning_label

    for block in suite.blocks:
        for entry in block.pruners:
            tuning_label(suite, block, entry)
    transplants_only = {e.label for b in suite.blocks if is_transplant_block(b) for e in b.pruners} - {
        e.label for b in suite.blocks if not is_transplant_block(b) for e in b.pruners
    }
    return {e.label: e for b in suite.blocks for e in b.pruners if e.label not in transplants_only}


def _label_families(suite, tasks, kinds, label: str) -> set[str]:
    """The task families where a block lists ``label`` on a pattern of ``kinds`` (None: any)."""
    return {
        tasks[task].family
        for block in suite.blocks
        if label in [e.label for e in block.pruners]
        for task in block.tasks
        if any(kinds is None or parse_pattern(text).kind in kinds for text in block.patterns)
    }


def _trial_block(block, column, settings: TuneSettings, entry, budget: dict[str, Any]):
    """The one-cell block of a trial: ``entry`` on ``column`` with seed ``settings.seed``."""
    from dataclasses import replace

    task, pattern, sparsity, _ = column
    return replace(
        block,
        tasks=[task],
        patterns=[pattern],
        sparsities=[] if parse_pattern(pattern).fixed_sparsity is not None else [sparsity],
        seeds=[settings.seed],
        pruners=[entry],
        budget=budget,
        where=f"suite.tune ({task} {pattern} {sparsity:g})",
    )


class _Budgets:
    """The task's own Budget per (task, model, data), built once; checks a tuning column's budget."""

    def __init__(self):
        self.cache: dict[tuple, Any] = {}

    def tuning(self, column) -> tuple[dict[str, Any], Any]:
        from bench.tasks.registry import get_task

        task, pattern, sparsity, block = column
        key = (task, block.model, block.data)
        if key not in self.cache:
            self.cache[key] = get_task(*key).budget
        if not tunes_retraining_lr(block.budget, self.cache[key]):
            raise ConfigError(
                f"{block.where}.budget",
                f"tuning column {task} {pattern} {sparsity:g}: the retraining lr multiplier needs a fine-tuning "
                "schedule of its own (finetune_schedule: restart or hold) and finetune_epochs >= 1",
            )
        return dict(block.budget), self.cache[key]


def schedule_suite(suite, settings: TuneSettings, device: str = "auto", amp: bool = False, compile: bool = False):
    """(the ``<suite>-schedules`` suite, {cell label: (family, schedule)}): the no-mask control at the
    defaults (lr multiplier 1) with each of ``settings.schedules`` on every family's tuning columns.
    The schedule it scores best on validation becomes the family's, for every pruner alike."""
    from bench.suites.suite import PrunerEntry, Suite, expand
    from bench.tasks.registry import load_tasks

    held_out_warning(suite)  # with held_out_seed: true, an evaluated tune.seed is refused before any run
    tasks, budgets = load_tasks(), _Budgets()
    blocks, of = [], {}
    for family, usable in family_columns(suite, settings, tasks).items():
        for schedule in settings.schedules:
            label = f"nomask#{family}#{schedule}"
            of[label] = (family, schedule)
            for column in usable:
                budget, defaults = budgets.tuning(column)
                budget.update(finetune_schedule=schedule, finetune_lr=retraining_lr(1.0, budget, defaults))
                blocks.append(_trial_block(column[3], column, settings, PrunerEntry("nomask", label), budget))
    schedules = Suite(f"{suite.name}-schedules", suite.path, f"fine-tuning schedule choice of {suite.name}", blocks)
    return expand(schedules, device, amp, compile), of


def choose_schedules(cells, of: dict[str, tuple[str, str]], rows: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """{family: {"chosen": schedule, "val_metric": {schedule: mean over the family's columns}}};
    ties go to the schedule listed first."""
    scores: dict[str, dict[str, list[float]]] = {}
    for cell in cells:
        family, schedule = of[cell.label]
        scores.setdefault(family, {}).setdefault(schedule, []).append(float(rows[cell.run_id]["val_metric"]))
    out = {}
    for family, by_schedule in scores.items():
        means = {s: sum(v) / len(v) for s, v in by_schedule.items()}
        best = max(means, key=lambda s: (means[s], -list(means).index(s)))
        out[family] = {"chosen": best, "val_metric": means}
    return out


def trial_suite(
    suite,
    settings: TuneSettings,
    device: str = "auto",
    amp: bool = False,
    schedules=None,
    extra=(),
    compile: bool = False,
):
    """(the ``<suite>-tune`` suite whose cells are the trials, {cell label: Trial}).

    Each (pruner entry, family) is tuned on the family's declared columns that the pruner can run
    (its pattern kinds, its block's pruners), or without declared columns on the first such column
    of the suite -- so srste (N:M only) is tuned on an N:M column, not skipped. ``schedules``
    ({family: schedule}, from ``choose_schedules``): the fine-tuning schedule of every trial of
    that family. ``extra``: more trials (:func:`edge_trials`), run on their (label, family)'s
    columns like the others. The suite's description (``tune --plan`` prints it) gives each
    label's space size and coverage (:func:`plan_notes`). With ``held_out_seed: true`` a tune.seed
    that is also an evaluation seed is a ConfigError (bench.suites.tuned.held_out_warning)."""
    from bench.runs.registry import get_pruner_class
    from bench.suites.suite import PrunerEntry, Suite, expand
    from bench.tasks.registry import load_tasks

    warning = held_out_warning(suite)
    tasks, budgets = load_tasks(), _Budgets()
    entries = tuned_entries(suite)
    more: dict[tuple[str, str], list[Trial]] = {}
    for trial in extra:
        more.setdefault((trial.label, trial.family), []).append(trial)
    blocks, by_label = [], {}
    for label, entry in entries.items():
        kinds = get_pruner_class(entry.name).patterns
        for family, usable in family_columns(suite, settings, tasks, kinds, label).items():
            trials = [*trials_of(suite.name, entry, family, settings), *more.pop((label, family), [])]
            for column in usable:
                budget, defaults = budgets.tuning(column)
                if schedules and family in schedules:
                    budget["finetune_schedule"] = schedules[family]
                for trial in trials:
                    by_label[trial.cell_label] = trial
                    cell_budget = {**budget, "finetune_lr": retraining_lr(trial.lr_multiplier, budget, defaults)}
                    options = {**entry.options, **trial.options}
                    blocks.append(
                        _trial_block(
                            column[3], column, settings, PrunerEntry(entry.name, trial.cell_label, options), cell_budget
                        )
                    )
    if more:
        raise ValueError(f"extra trials for (label, family) pairs the suite does not tune: {sorted(more)}")
    notes = plan_notes(suite, settings, by_label, warning)
    trials = Suite(f"{suite.name}-tune", suite.path, "\n".join([f"tuning trials of {suite.name}", *notes]), blocks)
    return expand(trials, device, amp, compile), by_label


def coverage(suite, settings: TuneSettings, by_label: dict[str, Trial]) -> dict[str, dict[str, dict[str, Any]]]:
    """{label: {family: {space_size, trials, coverage}}} of every tuned (label, family)."""
    entries = {e.label: e for b in suite.blocks for e in b.pruners}
    pairs = sorted({(t.label, t.family) for t in by_label.values()})
    sizes = {label: coverage_of(entries[label], settings) for label in {label for label, _ in pairs}}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, family in pairs:
        out.setdefault(label, {})[family] = dict(sizes[label])
    return out


def plan_notes(suite, settings: TuneSettings, by_label: dict[str, Trial], warning: str | None = None) -> list[str]:
    """Lines for ``tune --plan``: the held-out warning, each (label, family)'s space size, coverage
    and lr multipliers drawn, and what ``--extend-edges`` would add to the current tuned file."""
    entries = {e.label: e for b in suite.blocks for e in b.pruners}
    mults = ", ".join(f"x{m:g}" for m in settings.lr_multipliers)
    lines = [f"  {warning}"] if warning else []
    lines.append(
        f"  space and coverage per (label, family): knobs {'all' if settings.knobs is None else settings.knobs}, "
        f"lr multipliers {mults} ({'stratified' if settings.stratify_lr else 'drawn with the knobs'}), "
        f"seed {settings.seed} ({'held out' if held_out(suite) else 'an evaluation seed'})"
    )
    drawn: dict[tuple[str, str], list[float]] = {}
    for trial in by_label.values():
        if not trial.extension:
            drawn.setdefault((trial.label, trial.family), []).append(trial.lr_multiplier)
    for (label, family), multipliers in sorted(drawn.items()):
        entry = entries[label]
        c = coverage_of(entry, settings)
        knobs = " x ".join(f"{k} {len(v)}" for k, v in searched_knobs(entry, settings).items())
        counts = " ".join(f"x{m:g}:{multipliers.count(m)}" for m in settings.lr_multipliers)
        lines.append(
            f"    {label:16s} {family:15s} {c['space_size']:4d} points ({knobs + ' x ' if knobs else ''}lr "
            f"{len(settings.lr_multipliers)}), {c['trials']} trials = {c['coverage']:.0%} coverage; lr {counts}"
        )
    try:
        payload = read_payload(settings, suite.name)
    except ConfigError:  # stale or unreadable: `tune` rewrites it
        payload = None
    if payload is not None:
        extra = edge_trials(payload["chosen"], settings)
        grid, wins = sorted(settings.lr_multipliers), edge_wins(payload["chosen"], settings)
        counts = ", ".join(
            f"x{m:g}: {sum(w['edge'] == e for w in wins)}" for m, e in ((grid[-1], "max"), (grid[0], "min"))
        )
        lines.append(
            f"  {settings.file.name}: {len(extra)} (label, family) pair(s) won at the lr grid's edge ({counts})"
            + (
                "; `--extend-edges` adds one trial each, the winning knobs at: "
                + ", ".join(f"{t.label} {t.family} x{t.lr_multiplier:g}" for t in extra)
                if extra
                else ""
            )
            + (" (the file already holds that extension)" if payload.get("extension") else "")
        )
    return lines


# -- choosing and the file ----------------------------------------------------------------------
def choose(trial_cells, by_label: dict[str, Trial], rows: dict[str, dict]) -> tuple[dict, list[dict]]:
    """({label: {family: chosen}}, every trial's record). Score: mean validation metric over the
    family's columns; ties go to the earlier trial (the defaults first)."""
    records, scores, trial_of = [], {}, {}
    for cell in trial_cells:
        trial, row = by_label[cell.label], rows[cell.run_id]
        records.append(
            {
                "label": trial.label,
                "family": trial.family,
                "trial": trial.index,
                "options": trial.options,
                "lr_multiplier": trial.lr_multiplier,
                "task": cell.spec.task,
                "pattern": cell.spec.pattern,
                "sparsity": cell.spec.sparsity,
                "run_id": cell.run_id,
                "val_metric": row["val_metric"],
                "wall_s": row.get("wall_s"),
                **({"extension": True} if trial.extension else {}),
            }
        )
        key = (trial.label, trial.family, trial.index)
        trial_of[key] = trial
        scores.setdefault(key, []).append(float(row["val_metric"]))
    chosen: dict[str, dict[str, Any]] = {}
    for key in sorted(scores):  # trial order within (label, family): a later trial must be strictly better
        label, family, index = key
        mean = sum(scores[key]) / len(scores[key])
        best = chosen.setdefault(label, {}).get(family)
        if best is None or mean > best["val_metric"]:
            chosen[label][family] = {
                "trial": index,
                "options": trial_of[key].options,
                "lr_multiplier": trial_of[key].lr_multiplier,
                "val_metric": mean,
            }
    return chosen, records


def run_tune(
    suite,
    settings: TuneSettings,
    workers: int = 1,
    device: str = "auto",
    amp: bool = False,
    progress: bool = True,
    store=None,
    paths=None,
    log=print,
    extend_edges: bool = False,
    compile: bool = False,
) -> int:
    """Run every pending trial (resumable), then write the tuned file; 0 on success, 1 if a trial failed.

    ``extend_edges`` (``smartbench tune NAME --extend-edges``): after choosing, the (label, family)
    pairs whose lr multiplier won at the grid's edge get one more trial each (:func:`edge_trials`),
    run like the others, and the choice is made again over all. A file that holds an extension
    keeps it when tuning is rerun without the flag (a resumed `tune` never drops it silently)."""
    import time

    from bench.core.paths import paths_or_env
    from bench.runs.record import ResultStore
    from bench.suites.suite_run import run_suite

    paths = paths_or_env(paths)
    store = store or ResultStore(paths.store)
    started = time.perf_counter()
    warning = held_out_warning(suite)  # ConfigError with held_out_seed: true
    if warning:
        log(f"tune {suite.name}: {warning}")
    try:
        previous = read_payload(settings, suite.name)
    except ConfigError:  # stale or unreadable: rewritten below
        previous = None
    if not extend_edges and previous is not None and previous.get("extension"):
        extend_edges = True
        log(f"tune {suite.name}: {settings.file.name} holds an edge extension: kept (as with --extend-edges)")
    schedules = {}
    if settings.schedules:  # first the fine-tuning schedule of each family, by the no-mask control
        choice, of = schedule_suite(suite, settings, device, amp, compile)
        log(
            f"tune {suite.name}: fine-tuning schedule of each family ({', '.join(settings.schedules)}) "
            f"by the no-mask control on the validation split: {len(choice.cells)} runs"
        )
        code = run_suite(choice, workers=workers, progress=progress, store=store, paths=paths)
        if code:
            log(f"tune {suite.name}: some schedule runs failed; the file is not written (rerun to retry them)")
            return code
        schedules = choose_schedules(choice.cells, of, store.get_many(c.run_id for c in choice.cells))
        for family, result in sorted(schedules.items()):
            scores = ", ".join(f"{s} {v:.2f}" for s, v in result["val_metric"].items())
            log(f"  {family:15s} {result['chosen']} (val {scores})")
    chosen_schedules = {f: r["chosen"] for f, r in schedules.items()}
    trials, by_label = trial_suite(suite, settings, device, amp, chosen_schedules, compile=compile)
    trial_steps = sum(c.steps or 0 for c in trials.cells)
    suite_steps = sum(c.steps or 0 for c in suite.cells)
    ratio = trial_steps / suite_steps if suite_steps else None
    per_entry = sorted({(t.label, t.family) for t in by_label.values()})
    log(
        f"tune {suite.name}: {settings.trials} trials x {len(per_entry)} (pruner, family) = {len(trials.cells)} "
        f"runs on the validation split, seed {settings.seed}; {trial_steps} optimizer steps = "
        + (f"{ratio:.0%} of the suite's {suite_steps}" if ratio is not None else "n/a")
        + " (dense models not counted)"
    )
    if ratio is not None and ratio > 0.25:
        log("  note: tuning costs more than 25% of the suite it tunes (the protocol's bound)")

    def run_trials(trials) -> tuple[int, dict | None]:
        """(exit code, the trials' rows; None while another runner still holds some)."""
        code = run_suite(trials, workers=workers, progress=progress, store=store, paths=paths)
        if code:
            log(f"tune {suite.name}: some trials failed; the file is not written (rerun to retry them)")
            return code, None
        rows = store.get_many(cell.run_id for cell in trials.cells)
        pending = [cell for cell in trials.cells if cell.run_id not in rows]
        if pending:  # claimed by another runner that is still at work: the file needs every trial
            log(
                f"tune {suite.name}: {len(pending)} trial(s) are still running in another process "
                f"(e.g. {pending[0].label} on {pending[0].spec.task}); the file is written by whichever "
                "`smartbench tune` finishes last -- rerun this command once they are done"
            )
            return 0, None
        return 0, rows

    code, rows = run_trials(trials)
    if rows is None:
        return code
    chosen, records = choose(trials.cells, by_label, rows)
    edges = edge_wins(chosen, settings)
    extension = None
    if edges:
        counts = {edge: sum(w["edge"] == edge for w in edges) for edge in ("max", "min")}
        grid = sorted(settings.lr_multipliers)
        log(
            f"tune {suite.name}: {len(edges)} of {len(per_entry)} (label, family) pairs won at the lr grid's edge "
            f"(x{grid[-1]:g}: {counts['max']}, x{grid[0]:g}: {counts['min']})"
            + ("" if extend_edges else f"; `smartbench tune {suite.name} --extend-edges` tries one step beyond")
        )
    if extend_edges and edges:
        extra = edge_trials(chosen, settings)
        trials, by_label = trial_suite(suite, settings, device, amp, chosen_schedules, extra, compile=compile)
        added = [c for c in trials.cells if by_label[c.label].extension]
        log(
            f"tune {suite.name}: --extend-edges: {len(extra)} trial(s) one step beyond the edge "
            f"({len(added)} runs, {sum(c.steps or 0 for c in added)} optimizer steps), the winning knob values"
        )
        trial_steps = sum(c.steps or 0 for c in trials.cells)
        code, rows = run_trials(trials)
        if rows is None:
            return code
        chosen, records = choose(trials.cells, by_label, rows)
        extension = {
            "step": "one geometric step of the lr grid beyond the edge that won, with the winning knob values",
            "trials": [
                {
                    "label": t.label,
                    "family": t.family,
                    "trial": t.index,
                    "options": t.options,
                    "lr_multiplier": t.lr_multiplier,
                    "won": chosen[t.label][t.family]["trial"] == t.index,
                }
                for t in extra
            ],
        }
    for families in chosen.values():  # the family's schedule goes with every chosen config
        for family, record in families.items():
            if family in schedules:
                record["finetune_schedule"] = schedules[family]["chosen"]
    payload = {
        "version": FILE_VERSION,
        "suite": suite.name,
        "settings": settings.identity(),
        "score": "val_metric (validation split carved from train), mean over the family's columns",
        "search_spaces": {label: _declared_space(suite, label, settings) for label, _ in per_entry},
        "coverage": coverage(suite, settings, by_label),  # {label: {family: {space_size, trials, coverage}}}
        "held_out": held_out(suite),  # tune.seed is none of the suite's evaluation seeds
        "edge_wins": edges,  # before any extension
        "chosen": chosen,
        "schedules": schedules,  # {family: {chosen, val_metric per schedule}} (the no-mask control)
        "trials": records,
        "trial_wall_s": round(sum(r["wall_s"] or 0.0 for r in records), 1),
        "this_sitting_wall_s": round(time.perf_counter() - started, 1),
        "trial_steps": trial_steps,
        "suite_steps": suite_steps,
    }
    if extension is not None:
        payload["extension"] = extension
    write_file(settings.file, payload)
    log(f"tune {suite.name}: wrote {settings.file} (trials' wall time {payload['trial_wall_s']:.0f} s)")
    extra = added_cost(suite, trials.cells, records, store)
    if extra["suite_cells_done"] == extra["suite_cells"]:
        wall = (
            f"= {extra['extra_wall_s'] / max(extra['suite_wall_s'], 1e-9):.0%} of the suite's measured cell wall time"
        )
    else:
        wall = f"(the suite's wall time is known when its cells have run: {extra['suite_cells_done']} of {extra['suite_cells']} in the store)"
    share = f"{extra['extra_steps'] / max(suite_steps, 1):.0%}"
    if payload["held_out"]:
        log(
            f"  tune.seed {settings.seed} is held out: no trial is a suite cell; tuning adds all {extra['extra_steps']} "
            f"optimizer steps = {share} of the suite's, {extra['extra_wall_s']:.0f} s of trial wall time {wall}, "
            f"plus {extra['extra_dense_models']} dense model(s) of seed {settings.seed} "
            f"({extra['extra_dense_steps']} steps) the suite does not share"
        )
    else:
        log(
            f"  {extra['reused_trials']} winning trials are the suite's own seed-{settings.seed} cells (same run id): "
            f"tuning adds {extra['extra_steps']} optimizer steps = {share} of the "
            f"suite's, {extra['extra_wall_s']:.0f} s of trial wall time {wall}"
        )
    for label, families in sorted(chosen.items()):
        for family, c in sorted(families.items()):
            log(
                f"  {label:16s} {family:15s} trial {c['trial']} val {c['val_metric']:.2f} "
                f"lr x{c['lr_multiplier']:g} {json.dumps(c['options'], sort_keys=True)}"
            )
    return 0


def added_cost(suite, trial_cells, records: list[dict], store=None) -> dict[str, Any]:
    """What tuning adds to a suite's cost: the trials that are not also cells of the tuned suite.

    Found by run id, not assumed: when ``tune.seed`` is one of the suite's seeds (v2), a tuning
    column is a column of the suite, so each (label, family)'s winning trial *is* that label's seed
    cell in the column (the same run id) and the suite would run it anyway; with a held-out seed
    (v3) no trial is a suite cell and every trial counts. ``{reused_trials, extra_steps,
    extra_wall_s}`` count the others; the suite is re-read with the tuned file just written to
    find its cells. ``extra_dense_models`` / ``extra_dense_steps``: the dense models of the
    trials' (task, seed) that no suite cell shares (those of the held-out seed). With ``store``,
    also the suite's measured cost to set it against: ``suite_wall_s`` (the wall time of its
    cells' rows in the store, dense models not counted, as trials count none), ``suite_cells_done``
    of ``suite_cells``."""
    from bench.suites.suite import expand, load_suite

    tuned = expand(load_suite(str(suite.path)))
    cells = {cell.run_id for cell in tuned.cells}
    steps = {cell.run_id: cell.steps or 0 for cell in trial_cells}
    extra = [r for r in records if r["run_id"] not in cells]
    suite_dense = {cell.dense_key for cell in tuned.cells}
    dense = {c.dense_key: c.dense_steps or 0 for c in trial_cells if c.dense_key not in suite_dense}
    done = store.get_many(cells) if store is not None else {}
    return {
        "reused_trials": len(records) - len(extra),
        "extra_steps": sum(steps.get(r["run_id"], 0) for r in extra),
        "extra_wall_s": sum(r["wall_s"] or 0.0 for r in extra),
        "extra_dense_models": len(dense),
        "extra_dense_steps": sum(dense.values()),
        "suite_cells": len(cells),
        "suite_cells_done": len(done),
        "suite_wall_s": sum(row.get("wall_s") or 0.0 for row in done.values()),
    }


def _declared_space(suite, label: str, settings: TuneSettings) -> dict[str, list]:
    """The label's pruner's search_space as the file records it: its first ``tune.knobs`` entries
    (all without ``knobs``), fixed options included (the trials' options show what was searched)."""
    items = list(_config_of(suite, label).search_space.items())
    if settings.knobs is not None:
        items = items[: settings.knobs]
    return {k: list(v) for k, v in items}


def _config_of(suite, label: str):
    from bench.runs.registry import get_pruner_class

    entry = next(e for b in suite.blocks for e in b.pruners if e.label == label)
    return get_pruner_class(entry.name).Config


def write_file(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write (a kill never leaves half a file that suites would read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
