"""Equal tuning (`smartbench tune`, bench.suites.tune): same trials for every pruner, val split only."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

from bench.core.errors import ConfigError
from bench.runs.record import ResultStore
from bench.runs.registry import load_pruners
from bench.suites.suite import PrunerEntry, expand, load_suite
from bench.suites.suite_run import run_suite
from bench.suites.tune import choose, choose_schedules, run_tune, schedule_suite, space_of, trial_suite, trials_of
from bench.suites.tuned import TuneSettings, parse_settings

SUITE = {
    "description": "tune test",
    "tasks": ["fmnist-tiny"],
    "pruners": ["magnitude", "random"],
    "patterns": ["block:1x8"],
    "sparsities": [0.5],
    "seeds": [0, 1],
    "budget": {"prune_epochs": 1, "finetune_epochs": 1, "finetune_schedule": "restart"},
    "tune": {"trials": 4, "file": "t.tuned.json"},
}


def write_suite(folder: Path, **changes) -> Path:
    path = folder / "t.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}), encoding="utf-8")
    return path


def settings(**changes) -> TuneSettings:
    return parse_settings({"trials": 4, "file": "x.json", **changes}, Path("/tmp/s.yaml"))


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"trials": 3, "file": "x.json"}, "suite.tune.trials"),
        ({"trials": 4}, "suite.tune.file"),
        ({"file": "x.json", "lr_multipliers": [0.5, 2]}, "suite.tune.lr_multipliers"),  # 1 (the default) missing
        ({"file": "x.json", "seed": -1}, "suite.tune.seed"),
        (
            {"file": "x.json", "columns": [{"task": "fmnist-tiny", "pattern": "block:1x8", "sparsity": 1.5}]},
            "suite.tune.columns[0].sparsity",
        ),
        ({"file": "x.json", "budget": 3}, "suite.tune"),
        ({"file": "x.json", "schedules": ["restart"]}, "suite.tune.schedules"),  # nothing to choose among
        ({"file": "x.json", "schedules": ["shared", "restart"]}, "suite.tune.schedules"),  # no stage of its own
        ({"file": "x.json", "schedules": ["restart", "restart"]}, "suite.tune.schedules"),
        ({"file": "x.json", "schedules": [{"a": 1}, "restart"]}, "suite.tune.schedules"),
        ({"file": "x.json", "knobs": -1}, "suite.tune.knobs"),
        ({"file": "x.json", "knobs": "2"}, "suite.tune.knobs"),
        ({"file": "x.json", "knobs": True}, "suite.tune.knobs"),
        ({"file": "x.json", "stratify_lr": "yes"}, "suite.tune.stratify_lr"),
        ({"file": "x.json", "held_out_seed": 1}, "suite.tune.held_out_seed"),
    ],
)
def test_bad_settings_name_the_field(raw, field):
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, Path("/tmp/s.yaml"))
    assert err.value.field == field


def test_every_pruner_declares_a_space_holding_its_defaults():
    """The defaults are trial 0 of every pruner, and every declared value is a valid config."""
    for name, cls in load_pruners().items():
        fields = cls.Config.__dataclass_fields__
        for key, values in cls.Config.search_space.items():
            assert key in fields, (name, key)
            assert getattr(cls.Config(), key) in values, (name, key)
        points = space_of(PrunerEntry(name, name), settings())
        assert len(points) >= 4, name


def test_trials_equal_in_number_distinct_seeded_and_defaults_first():
    got = {}
    for name in load_pruners():
        trials = trials_of("s", PrunerEntry(name, name), "classification", settings())
        assert len(trials) == 4 and trials[0].lr_multiplier == 1.0
        assert all(v == getattr(load_pruners()[name].Config(), k) for k, v in trials[0].options.items())
        keys = [(json.dumps(t.options, sort_keys=True), t.lr_multiplier) for t in trials]
        assert len(set(keys)) == 4
        got[name] = keys
    again = {
        n: [
            (json.dumps(t.options, sort_keys=True), t.lr_multiplier)
            for t in trials_of("s", PrunerEntry(n, n), "classification", settings())
        ]
        for n in load_pruners()
    }
    assert got == again
    # an entry's fixed options are not searched
    fixed = trials_of("s", PrunerEntry("smart", "smart-a", {"tau0": 2.0}), "classification", settings())
    assert all("tau0" not in t.options for t in fixed)


def test_a_space_smaller_than_the_trials_is_refused():
    with pytest.raises(ConfigError, match="fewer than the 4 trials") as err:
        trials_of("s", PrunerEntry("magnitude", "magnitude"), "classification", settings(lr_multipliers=[0.5, 1, 2]))
    assert err.value.field == "suite.tune.trials"
    assert str(err.value) == (
        "suite.tune.trials: 'magnitude' has 3 point(s) in its search space (1 knob setting(s) of no knob x 3 lr "
        "multipliers), fewer than the 4 trials every pruner gets: lower tune.trials, or add knobs (raise "
        "tune.knobs, declare more search_space knobs or values) or lr_multipliers"
    )
    with pytest.raises(ConfigError, match="lower tune.trials, or add knobs"):  # knobs: 0 leaves smart the lr only
        trials_of("s", PrunerEntry("smart", "smart"), "classification", settings(trials=5, knobs=0))


def test_choose_takes_the_best_mean_val_and_the_earlier_trial_on_ties():
    from types import SimpleNamespace

    from bench.suites.tune import Trial

    trials = [Trial("p", "classification", i, {"k": i}, 1.0) for i in range(3)]
    by_label = {t.cell_label: t for t in trials}
    cells = [
        SimpleNamespace(
            label=t.cell_label, run_id=f"r{t.index}", spec=SimpleNamespace(task="x", pattern="channel", sparsity=0.5)
        )
        for t in trials
    ]
    rows = {"r0": {"val_metric": 70.0}, "r1": {"val_metric": 72.0}, "r2": {"val_metric": 72.0}}
    chosen, records = choose(cells, by_label, rows)
    assert chosen["p"]["classification"]["trial"] == 1 and len(records) == 3


def test_tuning_columns_need_a_restart_fine_tune(tmp_path):
    path = write_suite(tmp_path, budget={"prune_epochs": 1, "finetune_epochs": 1})
    suite = expand(load_suite(str(path), tuned=False))
    with pytest.raises(ConfigError, match="finetune_schedule: restart") as err:
        trial_suite(suite, suite.tune)
    assert err.value.field == "suite.budget"


def test_tune_end_to_end_then_the_suite_runs_tuned(tmp_path, runs_dir):
    """Trials run on val, the file records every trial, the suite's cells take the chosen config
    (seed 0 is the winning trial itself), a rerun resumes (nothing new), stale/untuned files refuse."""
    path = write_suite(tmp_path)
    suite = expand(load_suite(str(path), tuned=False))
    assert suite.tuned is None
    store = ResultStore(runs_dir / "results.jsonl")
    lines: list[str] = []
    assert run_tune(suite, suite.tune, progress=False, store=store, log=lines.append) == 0
    payload = json.loads((tmp_path / "t.tuned.json").read_text())
    # each label's winner is its seed-0 suite cell: tuning adds the 6 other trials (equal steps each)
    per_trial = payload["trial_steps"] // 8
    cost = next(line for line in lines if "winning trials" in line)
    assert f"2 winning trials are the suite's own seed-0 cells (same run id): tuning adds {6 * per_trial} " in cost
    assert len(payload["trials"]) == 8 and payload["settings"]["trials"] == 4
    for label in ("magnitude", "random"):
        records = [r for r in payload["trials"] if r["label"] == label]
        assert len(records) == 4
        best = max(records, key=lambda r: (r["val_metric"], -r["trial"]))
        assert payload["chosen"][label]["classification"]["trial"] == best["trial"]
        assert store.get(best["run_id"])["val_metric"] == best["val_metric"]  # the score is the val split's

    from bench.tasks.registry import get_task

    prune_lr = get_task("fmnist-tiny").budget.prune_lr
    tuned = expand(load_suite(str(path)))
    assert tuned.untuned == []
    for cell in tuned.cells:
        chosen = payload["chosen"][cell.label]["classification"]
        assert cell.spec.budget["finetune_lr"] == pytest.approx(chosen["lr_multiplier"] * prune_lr)
        if cell.spec.seed == 0:
            winner = next(r for r in payload["trials"] if r["label"] == cell.label and r["trial"] == chosen["trial"])
            assert cell.run_id == winner["run_id"]
    assert "the suite's wall time is known when its cells have run" in cost  # only its seed-0 winners ran
    rows_before = sum(1 for _ in store.rows())
    assert run_tune(suite, suite.tune, progress=False, store=store, log=lambda m: None) == 0
    assert sum(1 for _ in store.rows()) == rows_before  # resumed: every trial was done
    for (
        cell
    ) in tuned.cells:  # the suite's other cells "ran" (rows with their wall time): the cost tuning is set against
        if store.get(cell.run_id) is None:
            assert store.append({"run_id": cell.run_id, "metric": 50.0, "wall_s": 40.0})
    again: list[str] = []
    assert run_tune(suite, suite.tune, progress=False, store=store, log=again.append) == 0
    cells = store.get_many(cell.run_id for cell in tuned.cells)
    added = sum(r["wall_s"] for r in payload["trials"] if r["run_id"] not in cells)
    share = added / sum(row["wall_s"] for row in cells.values())
    assert f"= {share:.0%} of the suite's measured cell wall time" in next(m for m in again if "winning trials" in m)

    stale = write_suite(tmp_path, tune={"trials": 5, "file": "t.tuned.json"})
    with pytest.raises(ConfigError, match="other settings") as err:
        load_suite(str(stale))
    assert err.value.field == "suite.tune.file"
    grown = write_suite(tmp_path, pruners=["magnitude", "random", "gmp"])
    with pytest.raises(ConfigError, match="gmp on classification") as err:
        run_suite(expand(load_suite(str(grown))), progress=False, store=store)
    assert err.value.field == "suite.tune.file"


def test_a_label_added_to_a_column_by_another_block_is_tuned(tmp_path):
    """An ablation block (its own labels at a column of another block) gets its trials too."""
    path = write_suite(
        tmp_path,
        cells=[
            {"patterns": ["block:1x8"], "sparsities": [0.5]},
            {
                "patterns": ["block:1x8"],
                "sparsities": [0.5],
                "pruners": [{"name": "smart", "as": "smart-ramp", "options": {"ramp_steps": 4}}],
            },
        ],
    )
    suite = expand(load_suite(str(path), tuned=False))
    trials, by_label = trial_suite(suite, suite.tune)
    labels = sorted({t.label for t in by_label.values()})
    assert labels == ["magnitude", "random", "smart-ramp"]
    assert all(c.spec.pruner_options["ramp_steps"] == 4 for c in trials.cells if c.label.startswith("smart-ramp"))
    assert len(trials.cells) == 12


def test_an_ablation_outside_the_declared_columns_is_tuned_where_its_default_was(tmp_path):
    """An ablation listed only at a column that is not a tuning column gets the same trials on the
    family's declared column as the entry it varies (same number, same columns)."""
    path = write_suite(
        tmp_path,
        pruners=["smart"],
        tune={
            "trials": 4,
            "file": "t.tuned.json",
            "columns": [{"task": "fmnist-tiny", "pattern": "channel", "sparsity": 0.5}],
        },
        cells=[
            {"patterns": ["channel", "block:1x8"], "sparsities": [0.5]},
            {
                "patterns": ["block:1x8"],
                "sparsities": [0.9],
                "pruners": [{"name": "smart", "as": "smart-ramp", "options": {"ramp_steps": 4}}],
            },
        ],
    )
    suite = expand(load_suite(str(path), tuned=False))
    trials, by_label = trial_suite(suite, suite.tune)
    assert sorted({t.label for t in by_label.values()}) == ["smart", "smart-ramp"]
    assert len(trials.cells) == 8
    for cell in trials.cells:
        assert (cell.spec.pattern, cell.spec.sparsity) == ("channel", 0.5)
        assert (cell.spec.pruner_options.get("ramp_steps") == 4) == cell.label.startswith("smart-ramp")


def test_a_second_runner_leaves_the_file_to_the_one_still_running_trials(tmp_path, runs_dir):
    """Trials claimed by another live runner: this one writes no file and does not fail."""
    from bench.suites.suite import claim_cell

    path = write_suite(tmp_path, pruners=["random"])
    suite = expand(load_suite(str(path), tuned=False))
    trials, _ = trial_suite(suite, suite.tune)
    store, lines = ResultStore(runs_dir / "results.jsonl"), []
    with contextlib.ExitStack() as held:
        assert all(held.enter_context(claim_cell(trials.name, cell.run_id)) for cell in trials.cells)
        assert run_tune(suite, suite.tune, progress=False, store=store, log=lines.append) == 0
    assert not (tmp_path / "t.tuned.json").exists()
    assert "4 trial(s) are still running in another process" in lines[-1]
    assert list(store.rows()) == []


def test_each_family_has_its_own_trials(tmp_path):
    """One label is tuned once per family: the trial cells of two families never share a label."""
    path = write_suite(
        tmp_path,
        cells=[
            {"tasks": ["fmnist-tiny"], "patterns": ["block:1x8"], "sparsities": [0.5]},
            {"tasks": ["fmnist-vit-tiny"], "patterns": ["nm:2:4"]},
        ],
    )
    suite = expand(load_suite(str(path), tuned=False))
    trials, by_label = trial_suite(suite, suite.tune)
    assert len(trials.cells) == len(by_label) == 16  # 2 labels x 2 families x 4 trials
    for cell in trials.cells:
        family = by_label[cell.label].family
        assert family == {"fmnist-tiny": "classification", "fmnist-vit-tiny": "vit"}[cell.spec.task]


def test_choose_schedules_takes_the_best_mean_val_and_the_first_listed_on_ties():
    from types import SimpleNamespace

    of = {
        "a": ("classification", "restart"),
        "b": ("classification", "hold"),
        "c": ("vit", "restart"),
        "d": ("vit", "hold"),
    }
    cells = [SimpleNamespace(label=label, run_id=label) for label in of]
    rows = {"a": {"val_metric": 70.0}, "b": {"val_metric": 71.0}, "c": {"val_metric": 60.0}, "d": {"val_metric": 60.0}}
    got = choose_schedules(cells, of, rows)
    assert got["classification"] == {"chosen": "hold", "val_metric": {"restart": 70.0, "hold": 71.0}}
    assert got["vit"]["chosen"] == "restart"


def test_the_no_mask_control_chooses_each_familys_schedule_for_every_pruner(tmp_path, runs_dir):
    """With `schedules:`, tune first runs nomask with each schedule (val split), then every trial of
    the family, and every cell of the suite, fine-tunes with the chosen one; nomask's trial 0 is the
    schedule run itself."""
    path = write_suite(
        tmp_path,
        pruners=["magnitude", "nomask"],
        tune={"trials": 4, "file": "t.tuned.json", "schedules": ["restart", "hold"]},
    )
    suite = expand(load_suite(str(path), tuned=False))
    choice, of = schedule_suite(suite, suite.tune)
    assert sorted(of.values()) == [("classification", "hold"), ("classification", "restart")]
    assert sorted(c.spec.budget["finetune_schedule"] for c in choice.cells) == ["hold", "restart"]
    assert all(c.spec.pruner == "nomask" and c.spec.seed == 0 for c in choice.cells)
    store = ResultStore(runs_dir / "results.jsonl")
    lines: list[str] = []
    assert run_tune(suite, suite.tune, progress=False, store=store, log=lines.append) == 0
    payload = json.loads((tmp_path / "t.tuned.json").read_text())
    # each label's winner is its seed-0 suite cell: tuning adds the 6 other trials (equal steps each)
    per_trial = payload["trial_steps"] // 8
    cost = next(line for line in lines if "winning trials" in line)
    assert f"2 winning trials are the suite's own seed-0 cells (same run id): tuning adds {6 * per_trial} " in cost
    result = payload["schedules"]["classification"]
    scores = {c.spec.budget["finetune_schedule"]: store.get(c.run_id)["val_metric"] for c in choice.cells}
    assert result["val_metric"] == scores
    best = max(scores, key=lambda s: (scores[s], s == "restart"))
    assert result["chosen"] == best and payload["settings"]["schedules"] == ["restart", "hold"]
    trial_rows = [store.get(r["run_id"]) for r in payload["trials"]]
    assert {row["budget"]["finetune_schedule"] for row in trial_rows} == {best}
    nomask_default = next(r for r in payload["trials"] if r["label"] == "nomask" and r["trial"] == 0)
    assert nomask_default["run_id"] == next(
        c.run_id for c in choice.cells if c.spec.budget["finetune_schedule"] == best
    )
    tuned = expand(load_suite(str(path)))
    assert {c.spec.budget["finetune_schedule"] for c in tuned.cells} == {best}


# -- protocol v3: knobs, stratified lr, edge extension, held-out seed -----------------------------
CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "configs" / "suites"


def test_v3_settings_default_to_v2_and_enter_the_identity_only_when_set():
    old = settings()
    assert (old.knobs, old.stratify_lr, old.held_out_seed) == (None, False, False)
    assert set(old.identity()) == {"trials", "lr_multipliers", "seed", "columns"}  # what v1 files hold
    new = settings(knobs=2, stratify_lr=True, held_out_seed=True, seed=7)
    assert new.identity() == {
        "trials": 4,
        "lr_multipliers": [0.25, 0.5, 1.0, 2.0],
        "seed": 7,
        "columns": [],
        "knobs": 2,
        "stratify_lr": True,  # held_out_seed changes no trial: not part of the identity
    }


def test_knobs_limit_the_space_and_the_file_records_its_size_and_coverage():
    from bench.suites.tune import coverage_of, searched_knobs

    two = settings(knobs=2)
    got = {n: coverage_of(PrunerEntry(n, n), two) for n in ("smart", "magnitude", "srste", "pdp", "scratch")}
    assert got == {
        "smart": {"space_size": 36, "trials": 4, "coverage": 0.1111},  # 3 x 3 knob values x 4 multipliers
        "magnitude": {"space_size": 4, "trials": 4, "coverage": 1.0},  # no knob: the 4 multipliers
        "srste": {"space_size": 16, "trials": 4, "coverage": 0.25},  # lambda_w's 4 values x 4
        "pdp": {"space_size": 36, "trials": 4, "coverage": 0.1111},
        "scratch": {"space_size": 4, "trials": 4, "coverage": 1.0},
    }
    for name in load_pruners():  # no pruner declares more than 2 knobs today: knobs: 2 == all of them
        assert space_of(PrunerEntry(name, name), two) == space_of(PrunerEntry(name, name), settings())
    # knobs: 1 keeps the first declared knob (declaration order = importance)
    one = settings(knobs=1)
    assert searched_knobs(PrunerEntry("smart", "smart"), one) == {"score_lr": (0.02, 0.05, 0.1)}
    assert searched_knobs(PrunerEntry("pdp", "pdp"), one) == {"tau": (0.03, 0.1, 0.3)}
    assert coverage_of(PrunerEntry("smart", "smart"), one) == {"space_size": 12, "trials": 4, "coverage": 0.3333}
    trials = trials_of("s", PrunerEntry("smart", "smart"), "classification", one)
    assert all(set(t.options) == {"score_lr"} for t in trials)
    # an entry's fixed option among the first knobs is not searched (and not replaced by the next one)
    fixed = PrunerEntry("smart", "smart-a", {"score_lr": 0.1})
    assert searched_knobs(fixed, one) == {} and coverage_of(fixed, one)["space_size"] == 4


def test_stratified_lr_tries_every_multiplier_once_in_four_trials_for_every_label():
    strat = settings(stratify_lr=True, knobs=2)
    for name in load_pruners():
        for family in ("classification", "vit"):
            trials = trials_of("s", PrunerEntry(name, name), family, strat)
            assert [t.lr_multiplier for t in trials] == [1.0, 0.25, 0.5, 2.0], (name, family)
            assert all(v == getattr(load_pruners()[name].Config(), k) for k, v in trials[0].options.items())
            assert trials == trials_of("s", PrunerEntry(name, name), family, strat)  # seeded: the same everywhere
    # the knob values: drawn without replacement from the rest of the grid at each multiplier
    smart = trials_of("s", PrunerEntry("smart", "smart"), "classification", strat)
    assert [(t.options, t.lr_multiplier) for t in smart] == [
        ({"score_lr": 0.05, "tau0": 1.0}, 1.0),
        ({"score_lr": 0.05, "tau0": 0.5}, 0.25),
        ({"score_lr": 0.02, "tau0": 1.0}, 0.5),
        ({"score_lr": 0.1, "tau0": 0.5}, 2.0),
    ]
    srste = trials_of("s", PrunerEntry("srste", "srste"), "vit", strat)
    assert [t.lr_multiplier for t in srste] == [1.0, 0.25, 0.5, 2.0]
    # more trials than multipliers: floor(trials / M) or that + 1 each, 1 first, then declared order
    six = trials_of("s", PrunerEntry("smart", "smart"), "classification", settings(stratify_lr=True, trials=6))
    assert [t.lr_multiplier for t in six] == [1.0, 0.25, 0.5, 2.0, 1.0, 0.25]
    assert len({(json.dumps(t.options, sort_keys=True), t.lr_multiplier) for t in six}) == 6
    nine = trials_of("s", PrunerEntry("srste", "srste"), "vit", settings(stratify_lr=True, trials=9))
    counts = {m: [t.lr_multiplier for t in nine].count(m) for m in (0.25, 0.5, 1.0, 2.0)}
    assert counts == {0.25: 2, 0.5: 2, 1.0: 3, 2.0: 2}
    # a knob-less label covers its whole space: each multiplier once, nothing drawn twice
    assert [t.lr_multiplier for t in trials_of("s", PrunerEntry("random", "random"), "vit", strat)] == [
        1.0,
        0.25,
        0.5,
        2.0,
    ]


def test_the_committed_v2_files_load_and_drive_their_suites_as_before():
    """leaderboard-v2.tuned.json and smoke.tuned.json (version 1): same chosen configs; the v2 draw
    (no knobs, no stratify_lr) still plans exactly the trials the file records."""
    from bench.suites.tuned import read_payload
    from bench.tasks.registry import get_task, load_tasks

    for name in ("leaderboard-v2", "smoke"):
        payload = json.loads((CONFIGS / f"{name}.tuned.json").read_text())
        assert payload["version"] == 1
        suite = load_suite(name)
        assert suite.tuned == payload["chosen"]
        assert read_payload(suite.tune, name)["trials"] == payload["trials"]
        entries = {e.label: e for b in suite.blocks for e in b.pruners}
        for record in payload["trials"]:
            trial = trials_of(name, entries[record["label"]], record["family"], suite.tune)[record["trial"]]
            assert (trial.options, trial.lr_multiplier) == (record["options"], record["lr_multiplier"])
    smoke = expand(load_suite("smoke"))
    chosen = json.loads((CONFIGS / "smoke.tuned.json").read_text())["chosen"]
    tasks = load_tasks()
    assert smoke.untuned == [] and len(smoke.cells) > 0
    for cell in smoke.cells:
        c = chosen[cell.label][tasks[cell.spec.task].family]
        assert {k: cell.spec.pruner_options[k] for k in c["options"]} == c["options"]
        prune_lr = get_task(cell.spec.task).budget.prune_lr
        assert cell.spec.budget["finetune_lr"] == pytest.approx(c["lr_multiplier"] * prune_lr)


def test_edge_wins_and_the_trials_extend_edges_adds():
    from bench.suites.tune import beyond_edge, edge_trials, edge_wins

    s = settings()
    assert (beyond_edge(s, "max"), beyond_edge(s, "min")) == (4.0, 0.125)
    assert beyond_edge(settings(lr_multipliers=[0.5, 1, 1.5]), "max") == 2.25
    chosen = {
        "smart": {
            "classification": {"trial": 3, "options": {"score_lr": 0.1, "tau0": 0.5}, "lr_multiplier": 2.0},
            "vit": {"trial": 1, "options": {"score_lr": 0.02, "tau0": 1.0}, "lr_multiplier": 0.5},
        },
        "magnitude": {"classification": {"trial": 2, "options": {}, "lr_multiplier": 0.25}},
        "random": {"classification": {"trial": 0, "options": {}, "lr_multiplier": 1.0}},
    }
    assert edge_wins(chosen, s) == [
        {
            "label": "magnitude",
            "family": "classification",
            "trial": 2,
            "lr_multiplier": 0.25,
            "edge": "min",
            "next": 0.125,
        },
        {"label": "smart", "family": "classification", "trial": 3, "lr_multiplier": 2.0, "edge": "max", "next": 4.0},
    ]
    extra = edge_trials(chosen, s)
    assert [(t.label, t.family, t.index, t.options, t.lr_multiplier, t.extension) for t in extra] == [
        ("magnitude", "classification", 4, {}, 0.125, True),
        ("smart", "classification", 4, {"score_lr": 0.1, "tau0": 0.5}, 4.0, True),
    ]
    assert extra[1].cell_label == "smart#classification#t4"
    assert edge_wins(chosen, settings(lr_multipliers=[1])) == []  # one multiplier: no edge
    # leaderboard-v2's committed choice: x2 won 22 of 42 pairs, x0.25 one
    v2 = load_suite("leaderboard-v2", tuned=False)
    wins = edge_wins(json.loads((CONFIGS / "leaderboard-v2.tuned.json").read_text())["chosen"], v2.tune)
    assert len(wins) == 23 and sum(w["edge"] == "max" for w in wins) == 22
    assert [(w["label"], w["family"], w["next"]) for w in wins if w["edge"] == "min"] == [
        ("nomask", "segmentation", 0.125)
    ]


def test_extension_trials_run_on_their_pairs_columns_and_win_only_if_strictly_better(tmp_path):
    from types import SimpleNamespace

    from bench.suites.tune import Trial, edge_trials
    from bench.tasks.registry import get_task

    path = write_suite(tmp_path)
    suite = expand(load_suite(str(path), tuned=False))
    chosen = {
        "magnitude": {"classification": {"trial": 3, "options": {}, "lr_multiplier": 2.0}},
        "random": {"classification": {"trial": 1, "options": {}, "lr_multiplier": 0.5}},
    }
    extra = edge_trials(chosen, suite.tune)
    assert [(t.label, t.lr_multiplier) for t in extra] == [("magnitude", 4.0)]
    trials, by_label = trial_suite(suite, suite.tune, extra=extra)
    assert len(trials.cells) == 9
    added = [c for c in trials.cells if by_label[c.label].extension]
    assert [c.label for c in added] == ["magnitude#classification#t4"]
    prune_lr = get_task("fmnist-tiny").budget.prune_lr
    assert added[0].spec.budget["finetune_lr"] == pytest.approx(4 * prune_lr)
    assert (added[0].spec.task, added[0].spec.pattern, added[0].spec.seed) == ("fmnist-tiny", "block:1x8", 0)
    with pytest.raises(ValueError, match="does not tune"):
        trial_suite(suite, suite.tune, extra=[Trial("gmp", "classification", 4, {}, 4.0, extension=True)])
    # choose: the extension (a later trial) must be strictly better
    trials = [Trial("p", "classification", i, {}, m) for i, m in enumerate([1.0, 0.25, 0.5, 2.0])]
    trials.append(Trial("p", "classification", 4, {}, 4.0, extension=True))
    by_label = {t.cell_label: t for t in trials}
    cells = [
        SimpleNamespace(
            label=t.cell_label, run_id=f"r{t.index}", spec=SimpleNamespace(task="x", pattern="channel", sparsity=0.5)
        )
        for t in trials
    ]
    rows = {f"r{i}": {"val_metric": v} for i, v in enumerate([70.0, 60.0, 65.0, 75.0, 75.0])}
    chosen, records = choose(cells, by_label, rows)
    assert chosen["p"]["classification"]["trial"] == 3 and records[-1]["extension"] is True
    rows["r4"]["val_metric"] = 75.5
    assert choose(cells, by_label, rows)[0]["p"]["classification"]["lr_multiplier"] == 4.0


def test_a_tuning_seed_that_is_an_evaluation_seed_warns_or_is_refused(tmp_path):
    from bench.suites.tuned import held_out, held_out_warning

    v2 = load_suite("leaderboard-v2", tuned=False)
    assert not held_out(v2)
    assert held_out_warning(v2).startswith("warning: tune.seed 0 is also an evaluation seed (seeds 0, 1, 2)")
    strict = write_suite(tmp_path, tune={**SUITE["tune"], "held_out_seed": True})
    with pytest.raises(ConfigError) as err:  # refused when the suite is read: before tune, plan or run
        load_suite(str(strict), tuned=False)
    assert err.value.field == "suite.tune.seed"
    assert str(err.value) == (
        "suite.tune.seed: tune.seed 0 is also an evaluation seed; protocol v3 tunes on a seed never "
        "evaluated: set tune.seed to one not in seeds"
    )
    held = expand(
        load_suite(str(write_suite(tmp_path, tune={**SUITE["tune"], "held_out_seed": True, "seed": 5})), tuned=False)
    )
    assert held_out(held) and held_out_warning(held) is None
    trials, _ = trial_suite(held, held.tune)
    assert {c.spec.seed for c in trials.cells} == {5}
    assert "seed 5 (held out)" in trials.description
    # a seed of a cells block counts as an evaluation seed too
    blocks = write_suite(
        tmp_path,
        tune={**SUITE["tune"], "seed": 3},
        cells=[
            {"patterns": ["block:1x8"], "sparsities": [0.5]},
            {"patterns": ["channel"], "sparsities": [0.5], "seeds": [3]},
        ],
    )
    assert not held_out(load_suite(str(blocks), tuned=False))


def test_added_cost_counts_every_trial_when_the_seed_is_held_out(tmp_path):
    """The winners are suite cells only when tune.seed is evaluated: added_cost finds them by run id."""
    from bench.suites.tune import added_cost, coverage, write_file
    from bench.suites.tuned import FILE_VERSION

    for seed, reused in ((0, 2), (5, 0)):
        path = write_suite(tmp_path, tune={**SUITE["tune"], "seed": seed})
        suite = expand(load_suite(str(path), tuned=False))
        trials, by_label = trial_suite(suite, suite.tune)
        chosen = {
            label: {"classification": {"trial": 0, "options": {}, "lr_multiplier": 1.0}}
            for label in ("magnitude", "random")
        }
        write_file(
            suite.tune.file,
            {
                "version": FILE_VERSION,
                "suite": suite.name,
                "settings": suite.tune.identity(),
                "chosen": chosen,
                "coverage": coverage(suite, suite.tune, by_label),
            },
        )
        records = [{"run_id": c.run_id, "wall_s": 10.0} for c in trials.cells]
        got = added_cost(suite, trials.cells, records)
        per_trial = trials.cells[0].steps
        assert got["reused_trials"] == reused, seed
        assert got["extra_steps"] == (8 - reused) * per_trial and got["extra_wall_s"] == (8 - reused) * 10.0
        # the held-out seed's dense model is one the suite does not share
        assert (got["extra_dense_models"], got["extra_dense_steps"] > 0) == ((0, False) if seed == 0 else (1, True))
        tuned = expand(load_suite(str(path)))  # the version-2 file is read like a version-1 one
        assert tuned.untuned == [] and ({c.spec.seed for c in tuned.cells} == {0, 1})


def test_tune_plan_prints_space_size_and_coverage_per_label(tmp_path, capsys):
    from bench.cli.main import main

    path = write_suite(
        tmp_path,
        pruners=["smart", "magnitude", "srste"],
        patterns=["block:1x8", "nm:2:4"],
        tune={**SUITE["tune"], "knobs": 2, "stratify_lr": True, "held_out_seed": True, "seed": 7},
    )
    assert main(["tune", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "knobs 2, lr multipliers x0.25, x0.5, x1, x2 (stratified), seed 7 (held out)" in out
    lines = {line.split()[0]: line for line in out.splitlines() if "coverage;" in line}
    assert set(lines) == {"smart", "magnitude", "srste"}
    assert (
        "36 points (score_lr 3 x tau0 3 x lr 4), 4 trials = 11% coverage; lr x0.25:1 x0.5:1 x1:1 x2:1" in lines["smart"]
    )
    assert "4 points (lr 4), 4 trials = 100% coverage; lr x0.25:1 x0.5:1 x1:1 x2:1" in lines["magnitude"]
    assert "16 points (lambda_w 4 x lr 4), 4 trials = 25% coverage" in lines["srste"]
    warned = write_suite(tmp_path, pruners=["magnitude"])  # tune.seed 0 is an evaluation seed (v2 suites)
    assert main(["tune", str(warned), "--plan"]) == 0
    assert "warning: tune.seed 0 is also an evaluation seed (seeds 0, 1)" in capsys.readouterr().out


def test_run_tune_with_held_out_seed_stratified_draw_and_edge_extension(tmp_path, runs_dir, monkeypatch):
    """The whole v3 flow without training: a stand-in runner scores each trial by its lr (higher is
    better), so x2 wins, --extend-edges adds x4 for exactly the edge pairs, x4 wins; the file records
    coverage, held_out, edge_wins and the extension, the suite runs x4; a plain rerun keeps it."""
    from bench.tasks.registry import get_task

    prune_lr = get_task("fmnist-tiny").budget.prune_lr

    def fake_run_suite(suite, workers=1, progress=True, store=None, paths=None):
        for cell in suite.cells:
            lr = cell.spec.budget["finetune_lr"] / prune_lr
            score = 50.0 + lr if cell.label.startswith("magnitude") else 50.0 - abs(lr - 1.0)  # random: x1 best
            store.append({"run_id": cell.run_id, "val_metric": score, "wall_s": 2.0})
        return 0

    monkeypatch.setattr("bench.suites.suite_run.run_suite", fake_run_suite)
    path = write_suite(
        tmp_path, tune={**SUITE["tune"], "seed": 5, "knobs": 2, "stratify_lr": True, "held_out_seed": True}
    )
    suite = expand(load_suite(str(path), tuned=False))
    store, lines = ResultStore(runs_dir / "results.jsonl"), []
    assert run_tune(suite, suite.tune, progress=False, store=store, log=lines.append) == 0
    payload = json.loads((tmp_path / "t.tuned.json").read_text())
    assert payload["version"] == 2 and payload["held_out"] is True
    assert payload["settings"]["knobs"] == 2 and payload["settings"]["stratify_lr"] is True
    assert payload["coverage"] == {
        label: {"classification": {"space_size": 4, "trials": 4, "coverage": 1.0}} for label in ("magnitude", "random")
    }
    assert sorted(r["lr_multiplier"] for r in payload["trials"] if r["label"] == "magnitude") == [0.25, 0.5, 1.0, 2.0]
    assert payload["edge_wins"] == [
        {"label": "magnitude", "family": "classification", "trial": 3, "lr_multiplier": 2.0, "edge": "max", "next": 4.0}
    ]
    assert "extension" not in payload
    assert any("1 of 2 (label, family) pairs won at the lr grid's edge (x2: 1, x0.25: 0)" in m for m in lines)
    assert any("tune.seed 5 is held out: no trial is a suite cell; tuning adds all" in m for m in lines)
    # --extend-edges: exactly magnitude gets one more trial, at x4, which wins
    lines.clear()
    assert run_tune(suite, suite.tune, progress=False, store=store, log=lines.append, extend_edges=True) == 0
    payload = json.loads((tmp_path / "t.tuned.json").read_text())
    assert payload["extension"]["trials"] == [
        {"label": "magnitude", "family": "classification", "trial": 4, "options": {}, "lr_multiplier": 4.0, "won": True}
    ]
    assert payload["edge_wins"][0]["lr_multiplier"] == 2.0  # the choice before the extension
    assert payload["chosen"]["magnitude"]["classification"]["lr_multiplier"] == 4.0
    assert payload["chosen"]["random"]["classification"]["trial"] == 0
    assert [r["trial"] for r in payload["trials"] if r.get("extension")] == [4]
    assert len(payload["trials"]) == 9
    tuned = expand(load_suite(str(path)))
    assert {c.spec.budget["finetune_lr"] for c in tuned.cells if c.label == "magnitude"} == {round(4 * prune_lr, 10)}
    assert all(c.spec.seed in (0, 1) for c in tuned.cells)
    # a plain rerun keeps the extension (nothing new runs)
    rows = sum(1 for _ in store.rows())
    lines.clear()
    assert run_tune(suite, suite.tune, progress=False, store=store, log=lines.append) == 0
    assert sum(1 for _ in store.rows()) == rows
    assert json.loads((tmp_path / "t.tuned.json").read_text())["chosen"] == payload["chosen"]
    assert any("holds an edge extension: kept" in m for m in lines)


def test_a_transplant_is_not_tuned_and_runs_with_its_pruners_tuned_config(tmp_path):
    """A transplant (magnitude's selection with SMART's per-layer counts) has no trials of its own
    (its source would have to be a trial at the tuning seed): its cells take the config chosen for
    the entry of the same pruner and options outside transplant blocks; none or two such entries
    is a ConfigError naming the transplant block."""
    from bench.tasks.registry import get_task

    transplant = {
        "patterns": ["block:1x8"],
        "sparsities": [0.5],
        "pruners": [{"name": "magnitude", "as": "magnitude<-smart"}, {"name": "random", "as": "random<-smart"}],
        "allocation": {"policy": "from", "source": "smart"},
    }
    path = write_suite(
        tmp_path,
        pruners=["smart", "magnitude", "random"],
        cells=[{"patterns": ["block:1x8"], "sparsities": [0.5]}, transplant],
    )
    suite = expand(load_suite(str(path), tuned=False))
    _, by_label = trial_suite(suite, suite.tune)
    assert sorted({t.label for t in by_label.values()}) == ["magnitude", "random", "smart"]

    raw = load_suite(str(path), tuned=False)
    raw.tuned = {
        label: {"classification": {"options": {}, "lr_multiplier": m, "trial": 0}}
        for label, m in (("smart", 0.5), ("magnitude", 2.0), ("random", 0.25))
    }
    tuned = expand(raw)
    prune_lr = get_task("fmnist-tiny").budget.prune_lr
    lrs = {(c.label, c.spec.seed): c.spec.budget["finetune_lr"] for c in tuned.cells}
    assert tuned.untuned == []
    for seed in (0, 1):
        assert lrs[("magnitude<-smart", seed)] == pytest.approx(2.0 * prune_lr) == lrs[("magnitude", seed)]
        assert lrs[("random<-smart", seed)] == pytest.approx(0.25 * prune_lr) == lrs[("random", seed)]

    alone = write_suite(
        tmp_path,
        pruners=["smart", "random"],
        cells=[{"patterns": ["block:1x8"], "sparsities": [0.5]}, transplant],
    )
    with pytest.raises(ConfigError, match="found 0 \\(none\\)") as err:
        trial_suite(expand(load_suite(str(alone), tuned=False)), suite.tune)
    assert err.value.field == "suite.cells[1].pruners (magnitude<-smart)"
    twice = write_suite(
        tmp_path,
        pruners=["smart", "magnitude", "random"],
        cells=[
            {"patterns": ["block:1x8"], "sparsities": [0.5]},
            {"patterns": ["block:1x8"], "sparsities": [0.7], "pruners": [{"name": "magnitude", "as": "magnitude-b"}]},
            transplant,
        ],
    )
    with pytest.raises(ConfigError, match="found 2 \\(magnitude, magnitude-b\\)"):
        trial_suite(expand(load_suite(str(twice), tuned=False)), suite.tune)
