"""A suite's ``tune:`` settings and its tuned-config file (read by bench.suites.suite; written by
bench.suites.tune, ``smartbench tune``; docs/suites.md "Equal tuning")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import ConfigError
from bench.core.schedules import OWN_FINETUNE_SCHEDULES
from bench.core.sparsity import parse_pattern

# 2 (protocol v3): adds per (label, family) space_size and coverage, held_out, edge_wins and the
# edge extension; version-1 files (leaderboard-v2, smoke) are read as before
FILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
MIN_TRIALS = 4
DEFAULT_LR_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0)
TUNE_FIELDS = (
    "trials",
    "file",
    "lr_multipliers",
    "seed",
    "columns",
    "schedules",
    "knobs",
    "stratify_lr",
    "held_out_seed",
)
COLUMN_FIELDS = ("task", "pattern", "sparsity")


@dataclass(frozen=True)
class TuneSettings:
    trials: int
    file: Path
    lr_multipliers: tuple[float, ...]
    seed: int
    columns: tuple[tuple[str, str, float], ...]  # empty: the first column of each family
    # fine-tuning schedule families the no-mask control chooses among per task family before the
    # trials (bench.suites.tune); empty: every cell keeps its block's own schedule
    schedules: tuple[str, ...] = ()
    # protocol v3 (their defaults are v2's behaviour, so older suites and files are unchanged):
    knobs: int | None = None  # search only the first `knobs` entries of Config.search_space; None: all
    stratify_lr: bool = False  # a (label, family)'s trials cycle through the lr multipliers
    held_out_seed: bool = False  # tune.seed must not be an evaluation seed (else a ConfigError)

    def identity(self) -> dict[str, Any]:
        """What a tuned file must match to be used (a changed setting makes it stale)."""
        identity = {
            "trials": self.trials,
            "lr_multipliers": list(self.lr_multipliers),
            "seed": self.seed,
            "columns": [list(c) for c in self.columns],
        }
        if self.schedules:  # absent without a choice: files tuned before the field existed stay valid
            identity["schedules"] = list(self.schedules)
        # the same for the v3 settings that change the trials: absent at their defaults.
        # held_out_seed changes no trial (only what is refused), so it is not part of the identity.
        if self.knobs is not None:
            identity["knobs"] = self.knobs
        if self.stratify_lr:
            identity["stratify_lr"] = True
        return identity


def parse_settings(raw: Any, suite_path: Path) -> TuneSettings | None:
    """The suite's ``tune:`` mapping, validated (ConfigError naming the field)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("suite.tune", f"must be a mapping with {', '.join(TUNE_FIELDS)}")
    unknown = set(raw) - set(TUNE_FIELDS)
    if unknown:
        raise ConfigError("suite.tune", f"unknown field(s) {sorted(unknown)}; allowed: {', '.join(TUNE_FIELDS)}")
    trials = raw.get("trials", MIN_TRIALS)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < MIN_TRIALS:
        raise ConfigError("suite.tune.trials", f"must be an integer >= {MIN_TRIALS}, got {trials!r}")
    file = raw.get("file")
    if not isinstance(file, str) or not file.endswith(".json"):
        raise ConfigError("suite.tune.file", f"must be a .json path (relative to the suite file), got {file!r}")
    mults = raw.get("lr_multipliers", list(DEFAULT_LR_MULTIPLIERS))
    if (
        not isinstance(mults, list)
        or not mults
        or any(isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 for m in mults)
        or 1 not in mults
        or len(set(mults)) != len(mults)
    ):
        raise ConfigError("suite.tune.lr_multipliers", f"must be distinct numbers > 0 including 1, got {mults!r}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("suite.tune.seed", f"must be an integer >= 0, got {seed!r}")
    columns = []
    for i, item in enumerate(raw.get("columns") or []):
        at = f"suite.tune.columns[{i}]"
        if not isinstance(item, dict) or set(item) - set(COLUMN_FIELDS) or not {"task", "pattern"} <= set(item):
            raise ConfigError(at, f"must be a mapping {{task, pattern, sparsity}}, got {item!r}")
        try:
            pattern = parse_pattern(item["pattern"])
        except ConfigError as err:
            raise ConfigError(f"{at}.pattern", str(err)) from None
        sparsity = pattern.fixed_sparsity if pattern.fixed_sparsity is not None else item.get("sparsity")
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
            raise ConfigError(f"{at}.sparsity", f"must be a number in (0, 1), got {sparsity!r}")
        columns.append((item["task"], str(pattern), round(float(sparsity), 10)))
    schedules = raw.get("schedules", [])
    if (
        not isinstance(schedules, list)
        or any(s not in OWN_FINETUNE_SCHEDULES for s in schedules)  # before set(): no unhashable values
        or (schedules and len(schedules) < 2)
        or len(set(schedules)) != len(schedules)
    ):
        raise ConfigError(
            "suite.tune.schedules",
            f"must list at least two distinct fine-tuning schedules of {', '.join(OWN_FINETUNE_SCHEDULES)}, got {schedules!r}",
        )
    knobs = raw.get("knobs")
    if knobs is not None and (isinstance(knobs, bool) or not isinstance(knobs, int) or knobs < 0):
        raise ConfigError(
            "suite.tune.knobs",
            f"must be an integer >= 0 (the first KNOBS entries of each pruner's search_space), got {knobs!r}",
        )
    flags = {}
    for key in ("stratify_lr", "held_out_seed"):
        flags[key] = raw.get(key, False)
        if not isinstance(flags[key], bool):
            raise ConfigError(f"suite.tune.{key}", f"must be true or false, got {flags[key]!r}")
    path = Path(file)
    return TuneSettings(
        trials,
        path if path.is_absolute() else suite_path.parent / path,
        tuple(float(m) for m in mults),
        seed,
        tuple(columns),
        tuple(schedules),
        knobs,
        flags["stratify_lr"],
        flags["held_out_seed"],
    )


def evaluation_seeds(suite) -> list[int]:
    """Every seed a cell of the suite runs with (its blocks' ``seeds``), sorted."""
    return sorted({seed for block in suite.blocks for seed in block.seeds})


def held_out(suite) -> bool:
    """Whether the suite tunes on a seed it never evaluates (protocol v3)."""
    return suite.tune is not None and suite.tune.seed not in evaluation_seeds(suite)


def held_out_warning(suite) -> str | None:
    """None when ``tune.seed`` is held out (or the suite has no ``tune:``); otherwise the warning
    that names the seed -- or, with ``held_out_seed: true``, a ConfigError (protocol v3).

    ``smartbench tune`` (bench.suites.tune) calls it; ``suite plan`` and ``load_suite`` are the
    other places meant to (the warning, and the error before any cell runs)."""
    if suite.tune is None or held_out(suite):
        return None
    seed = suite.tune.seed
    if suite.tune.held_out_seed:
        raise ConfigError(
            "suite.tune.seed",
            f"tune.seed {seed} is also an evaluation seed; protocol v3 tunes on a seed never evaluated: "
            "set tune.seed to one not in seeds",
        )
    return (
        f"warning: tune.seed {seed} is also an evaluation seed (seeds {', '.join(map(str, evaluation_seeds(suite)))}): "
        f"the chosen trials are the suite's own seed-{seed} cells, picked on the seed they are "
        "scored on; protocol v3 tunes on a held-out seed (set tune.seed to one not in seeds, held_out_seed: true)"
    )


def tunes_retraining_lr(budget: dict[str, Any], task_budget) -> bool:
    """Whether a cell with this budget override (on the task's own ``Budget``) has a fine-tuning
    stage with its own schedule (restart, hold), the one the tuned retraining lr multiplier and
    the tuned schedule family apply to."""
    epochs = budget.get("finetune_epochs", task_budget.finetune_epochs)
    return budget.get("finetune_schedule") in OWN_FINETUNE_SCHEDULES and epochs >= 1


def retraining_lr(multiplier: float, budget: dict[str, Any], task_budget) -> float:
    """A cell's ``finetune_lr``: ``multiplier`` x its ``prune_lr`` (the block's override, else the
    task's ``Budget.prune_lr``)."""
    return round(multiplier * budget.get("prune_lr", task_budget.prune_lr), 10)


def read_payload(settings: TuneSettings, suite_name: str) -> dict[str, Any] | None:
    """The whole tuned file of a suite (any readable version); None if there is none yet;
    ConfigError if it is unreadable or was tuned with other settings (stale)."""
    if not settings.file.exists():
        return None
    try:
        payload = json.loads(settings.file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError("suite.tune.file", f"{settings.file} is not readable JSON: {err}") from None
    if payload.get("version") not in READABLE_VERSIONS or payload.get("suite") != suite_name:
        raise ConfigError(
            "suite.tune.file",
            f"{settings.file} is not a version-{'/'.join(map(str, READABLE_VERSIONS))} file of '{suite_name}'",
        )
    if payload.get("settings") != settings.identity():
        raise ConfigError(
            "suite.tune.file",
            f"{settings.file} was tuned with other settings ({payload.get('settings')}); "
            f"rerun `smartbench tune {suite_name}`",
        )
    return payload


def read_tuned(settings: TuneSettings, suite_name: str) -> dict[str, dict[str, Any]] | None:
    """The chosen configs {label: {family: chosen}} of a suite's tuned file; None if there is none
    yet; ConfigError if it is unreadable or was tuned with other settings (stale)."""
    payload = read_payload(settings, suite_name)
    return None if payload is None else payload["chosen"]
