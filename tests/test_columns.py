"""The protocol's column rule (bench.suites.columns): sparsities where uniform magnitude loses 1-15
val points against the no-mask control, plus 50%."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from bench.core.errors import ConfigError
from bench.suites.columns import choose_columns, column_suite, report
from bench.suites.suite import load_suite


def cell(pattern, sparsity, label, run_id):
    return SimpleNamespace(
        run_id=run_id, label=label, spec=SimpleNamespace(task="t", pattern=pattern, sparsity=sparsity)
    )


def test_choose_columns_keeps_the_gaps_inside_the_band_and_half():
    cells = [cell("channel", 0.5, "nomask", "n")] + [
        cell("channel", s, "magnitude-uniform", f"m{s}") for s in (0.5, 0.7, 0.8, 0.9, 0.95)
    ]
    val = {"n": 80.0, "m0.5": 79.8, "m0.7": 78.5, "m0.8": 70.0, "m0.9": 60.0, "m0.95": 40.0}
    rows = {k: {"val_metric": v} for k, v in val.items()}
    (choice,) = choose_columns(cells, rows)
    assert choice["gaps"][0.8] == pytest.approx(10.0)
    assert choice["chosen"] == [0.5, 0.7, 0.8]  # gaps 0.2 (always), 1.5, 10; not 20 or 40
    assert "sparsities: [0.5, 0.7, 0.8]" in report([choice], 1.0, 15.0)
    (missing,) = choose_columns(cells, {k: v for k, v in rows.items() if k != "m0.7"})
    assert missing["gaps"][0.7] is None and 0.7 not in missing["chosen"]


def test_column_suite_runs_uniform_magnitude_and_one_control(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tasks": ["fmnist-tiny"],
                "pruners": ["smart"],
                "patterns": ["block:1x8", "nm:2:4"],
                "sparsities": [0.5],
                "seeds": [0, 1],
                "budget": {"prune_epochs": 1, "finetune_epochs": 1},
            }
        )
    )
    suite = column_suite(load_suite(str(path)), (0.7, 0.9))
    assert suite.name == "s-columns"
    got = sorted((c.label, c.spec.pattern, c.spec.sparsity, c.spec.seed) for c in suite.cells)
    assert got == [
        ("magnitude-uniform", "block:1x8", 0.5, 0),
        ("magnitude-uniform", "block:1x8", 0.7, 0),
        ("magnitude-uniform", "block:1x8", 0.9, 0),
        ("nomask", "block:1x8", 0.5, 0),
    ]  # N:M columns are fixed by their pattern, not chosen
    assert all(c.spec.allocation == {"policy": "uniform", "floor": 0.0} for c in suite.cells)
    assert all(c.spec.budget == {"prune_epochs": 1, "finetune_epochs": 1} for c in suite.cells)
    with pytest.raises(ConfigError, match="--candidates"):
        column_suite(load_suite(str(path)), (1.5,))


def test_one_control_run_serves_every_pattern_of_a_task(tmp_path):
    path = tmp_path / "s.yaml"
    spec = {"tasks": ["fmnist-tiny"], "pruners": ["smart"], "patterns": ["block:1x8", "channel"], "seeds": [0]}
    path.write_text(yaml.safe_dump({**spec, "sparsities": [0.5], "budget": {"prune_epochs": 1, "finetune_epochs": 1}}))
    suite = column_suite(load_suite(str(path)), (0.9,))
    control = [c for c in suite.placed() if c.label == "nomask"]
    assert [c.spec.pattern for c in control] == ["block:1x8", "channel"] and len({c.run_id for c in control}) == 1
    assert [c.label for c in suite.cells].count("nomask") == 1  # run once
    val = {c.run_id: {"val_metric": 80.0 if c.label == "nomask" else 75.0} for c in suite.cells}
    choices = choose_columns(suite.placed(), val)
    assert [(ch["pattern"], ch["gaps"]) for ch in choices] == [
        ("block:1x8", {0.5: 5.0, 0.9: 5.0}),
        ("channel", {0.5: 5.0, 0.9: 5.0}),
    ]


def test_power_criterion_keeps_columns_whose_mde_is_within_the_margin():
    """Pilot seeds 0-2: sigma_d of (magnitude - random) per candidate; MDE at 3 seeds = 3.264 sigma_d."""
    cells = []
    for seed in (0, 1, 2):
        cells.append(
            SimpleNamespace(
                run_id=f"n{seed}",
                label="nomask",
                spec=SimpleNamespace(task="t", pattern="channel", sparsity=0.5, seed=seed),
            )
        )
        for s in (0.5, 0.8, 0.9):
            for label in ("magnitude-uniform", "random-uniform"):
                cells.append(
                    SimpleNamespace(
                        run_id=f"{label[0]}{s}-{seed}",
                        label=label,
                        spec=SimpleNamespace(task="t", pattern="channel", sparsity=s, seed=seed),
                    )
                )
    val = {f"n{seed}": 80.0 for seed in (0, 1, 2)}
    noise = {0.5: (0.0, 0.1, -0.1), 0.8: (0.0, 1.0, -1.0), 0.9: (0.0, 0.05, -0.05)}  # magnitude - random per seed
    gap = {0.5: 0.2, 0.8: 5.0, 0.9: 9.0}
    for s in (0.5, 0.8, 0.9):
        for seed in (0, 1, 2):
            val[f"m{s}-{seed}"] = 80.0 - gap[s]
            val[f"r{s}-{seed}"] = 80.0 - gap[s] - 1.0 - noise[s][seed]
    rows = {k: {"val_metric": v} for k, v in val.items()}
    (choice,) = choose_columns(cells, rows, margin=0.5, planned_seeds=3)
    assert choice["power"][0.8]["sigma_d"] == pytest.approx(1.0)
    assert choice["power"][0.8]["mde"] == pytest.approx(3.264, abs=2e-3)  # > 0.5: out
    assert choice["power"][0.9]["mde"] == pytest.approx(3.264 * 0.05, abs=1e-3)  # in
    assert choice["chosen"] == [0.9]  # 0.5 fails the gap band, 0.8 the power criterion
    assert choose_columns(cells, rows)[0]["chosen"] == [0.5, 0.8, 0.9]  # without: v2's rule
    text = report([choice], 1.0, 15.0)
    assert "0.8: sigma_d 1.00, MDE 3.26 at 3 seeds" in text and "whose MDE at 3 seeds" in text


def test_pilot_seeds_add_the_random_pruner(tmp_path):
    path = tmp_path / "s.yaml"
    spec = {"tasks": ["fmnist-tiny"], "pruners": ["smart"], "patterns": ["channel"], "seeds": [0], "sparsities": [0.5]}
    path.write_text(yaml.safe_dump({**spec, "budget": {"prune_epochs": 1, "finetune_epochs": 1}}))
    suite = column_suite(load_suite(str(path)), (0.9,), pilot_seeds=(0, 1))
    got = sorted({(c.label, c.spec.seed) for c in suite.cells})
    assert ("random-uniform", 1) in got and ("magnitude-uniform", 0) in got and ("nomask", 1) in got
    with pytest.raises(ConfigError, match="--pilot-seeds"):
        column_suite(load_suite(str(path)), (0.9,), pilot_seeds=(0, 0))


def test_under_the_power_criterion_each_nm_pattern_is_a_candidate(tmp_path):
    """Pilot seeds 0-2 on a ViT: every N:M pattern runs N:M magnitude and random (no allocation rule:
    N:M is per row) beside the task's one no-mask control; nm:2:4 (gap 0.1) fails the band, nm:1:8
    (gap 3, sigma_d 0.1) is a column, nm:1:4 (gap 2, sigma_d 1) fails the MDE at 3 seeds. With one
    pilot seed (v2's rule) N:M patterns are not candidates."""
    path = tmp_path / "s.yaml"
    spec = {"tasks": ["fmnist-vit-tiny"], "pruners": ["smart"], "patterns": ["nm:2:4", "nm:1:4", "nm:1:8"]}
    path.write_text(yaml.safe_dump({**spec, "seeds": [0], "budget": {"prune_epochs": 1, "finetune_epochs": 1}}))
    suite = column_suite(load_suite(str(path)), (0.9,), pilot_seeds=(0, 1, 2))
    got = sorted({(c.label, c.spec.pattern, c.spec.sparsity) for c in suite.cells if c.spec.seed == 0})
    assert got == [
        ("magnitude-uniform", "nm:1:4", 0.75),
        ("magnitude-uniform", "nm:1:8", 0.875),
        ("magnitude-uniform", "nm:2:4", 0.5),
        ("nomask", "nm:2:4", 0.5),  # one control run per seed, placed in every pattern
        ("random-uniform", "nm:1:4", 0.75),
        ("random-uniform", "nm:1:8", 0.875),
        ("random-uniform", "nm:2:4", 0.5),
    ]
    assert all(c.spec.allocation is None for c in suite.cells)  # "v1": no allocation rule
    gap = {"nm:2:4": 0.1, "nm:1:4": 2.0, "nm:1:8": 3.0}
    noise = {"nm:2:4": 0.1, "nm:1:4": 1.0, "nm:1:8": 0.1}
    rows = {}
    for c in suite.placed():
        if c.label == "nomask":
            rows[c.run_id] = {"val_metric": 80.0}
        elif c.label == "magnitude-uniform":
            rows[c.run_id] = {"val_metric": 80.0 - gap[c.spec.pattern]}
        else:  # random: 1 point below magnitude, +-noise over the seeds
            rows[c.run_id] = {"val_metric": 79.0 - gap[c.spec.pattern] + noise[c.spec.pattern] * (c.spec.seed - 1)}
    choices = {ch["pattern"]: ch for ch in choose_columns(suite.placed(), rows, margin=0.5, planned_seeds=3)}
    assert choices["nm:1:8"]["gaps"] == {0.875: pytest.approx(3.0)} and choices["nm:1:8"]["chosen"] == [0.875]
    assert choices["nm:2:4"]["chosen"] == [] and choices["nm:1:4"]["chosen"] == []
    assert choices["nm:1:4"]["power"][0.75]["mde"] == pytest.approx(3.264, abs=2e-3)
    assert choose_columns(suite.placed(), rows)[0]["chosen"] == []  # nm:2:4: not exempt like 50 %
    with pytest.raises(ConfigError, match="no non-N:M pattern"):
        column_suite(load_suite(str(path)), (0.9,))  # one pilot seed: N:M stays fixed by its pattern
