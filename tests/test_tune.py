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
