"""The transplant control (``allocation: from:RUN_ID``): magnitude or random keeping another run's
per-layer unit counts, chosen by their own scores -- whether a win comes from allocation or selection."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from bench.cli.main import main
from bench.core.errors import ConfigError
from bench.core.select import Allocation, expected_kept, hard_topk
from bench.core.sparsity import parse_pattern

CHANNEL = parse_pattern("channel")


def test_allocation_from_a_run_id():
    rule = Allocation.from_value("from:0123456789ab")
    assert (rule.policy, rule.source) == ("from", "0123456789ab") and rule.to_dict() == {
        "policy": "from",
        "source": "0123456789ab",
    }
    assert Allocation.from_value({"policy": "from", "source": "x"}) == Allocation("from", source="x")
    with pytest.raises(ConfigError, match="policy 'from' needs source"):
        Allocation("from")
    with pytest.raises(ConfigError, match="a source is only read by policy 'from'"):
        Allocation("global", source="x")


def test_hard_topk_keeps_the_transplanted_count_of_every_layer_by_its_own_scores():
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.7]), "b": torch.tensor([3.0, 1.0, 2.0])}
    rule = Allocation("from", source="r").with_counts({"a": 1, "b": 2})
    masks = hard_topk(scores, CHANNEL, 0.5, allocation=rule)
    assert masks["a"].tolist() == [False, True, False, False] and masks["b"].tolist() == [True, False, True]
    assert expected_kept({"a": 4, "b": 3}, CHANNEL, 0.5, allocation=rule) == 3
    with pytest.raises(ConfigError, match="do not fit this run's layers"):
        Allocation("from", source="r").with_counts({"a": 5, "b": 2}).check({"a": 4, "b": 3}, CHANNEL, 0.5)


def run(args, capsys) -> dict:
    assert main(["run", "--task", "fmnist-tiny", "--prune-epochs", "1", "--finetune-epochs", "0", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def kept_by_layer(row) -> dict[str, int]:
    return {layer["layer"]: layer["kept_units"] for layer in row["audit"]["layers"]}


def test_magnitude_and_random_with_smarts_allocation(shared_runs_dir, monkeypatch, capsys):
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    source = run(["--pruner", "smart", "--pattern", "channel", "--sparsity", "0.5", "--allocation", "global"], capsys)
    for pruner in ("magnitude", "random"):
        row = run(
            [
                "--pruner",
                pruner,
                "--pattern",
                "channel",
                "--sparsity",
                "0.5",
                "--allocation",
                f"from:{source['run_id']}",
            ],
            capsys,
        )
        assert row["allocation"] == {"policy": "from", "source": source["run_id"]}
        assert kept_by_layer(row) == kept_by_layer(source)  # the same count in every layer
        assert row["achieved_sparsity"] == pytest.approx(source["achieved_sparsity"])
    uniform = run(
        ["--pruner", "magnitude", "--pattern", "channel", "--sparsity", "0.5", "--allocation", "uniform"], capsys
    )
    assert kept_by_layer(uniform) != kept_by_layer(source)  # smart's allocation is not uniform: the test can fail


def test_transplant_errors_before_training(shared_runs_dir, monkeypatch, capsys):
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    base = ["run", "--task", "fmnist-tiny", "--pattern", "channel", "--sparsity", "0.5"]
    assert main(base + ["--pruner", "smart", "--allocation", "from:000000000000"]) == 2
    assert "pruner 'smart' selects during training. Allowed: magnitude, random" in capsys.readouterr().err
    assert main(base + ["--pruner", "magnitude", "--allocation", "from:000000000000"]) == 2
    assert "run 000000000000 is not in the result store" in capsys.readouterr().err
    assert main(base + ["--pruner", "magnitude", "--allocation", "sideways"]) == 2
    assert "'sideways' is not one of uniform, global, from:RUN_ID" in capsys.readouterr().err
    nm = ["run", "--task", "fmnist-tiny", "--pattern", "nm:2:4", "--pruner", "magnitude", "--allocation", "from:x"]
    assert main(nm) == 2 and "nothing to transplant under nm:2:4" in capsys.readouterr().err


def test_suite_transplant_block_runs_after_its_source(shared_runs_dir, monkeypatch, tmp_path, capsys):
    """``allocation: {policy: from, source: LABEL}`` in a block: each cell takes the run id of that
    label's cell at its column and seed; `suite run` runs the transplants last."""
    from bench.suites.suite import load_and_expand

    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    common = {"tasks": ["fmnist-tiny"], "patterns": ["block:1x8"], "sparsities": [0.8], "seeds": [0]}
    spec = {
        "budget": {"prune_epochs": 1, "finetune_epochs": 0},
        "cells": [
            {**common, "pruners": ["pas"], "allocation": {"policy": "global", "floor": 0.05}},
            {
                **common,
                "pruners": [{"name": "magnitude", "as": "magnitude<-pas"}],
                "allocation": {"policy": "from", "source": "pas"},
            },
        ],
    }
    path = tmp_path / "transplant.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    suite = load_and_expand(str(path))
    source, transplant = suite.cells
    assert transplant.spec.allocation == {"policy": "from", "source": source.run_id}
    assert main(["suite", "run", str(path), "--workers", "1", "--no-progress"]) == 0
    from bench.runs.record import ResultStore

    rows = ResultStore(shared_runs_dir / "results.jsonl").get_many([source.run_id, transplant.run_id])
    assert kept_by_layer(rows[transplant.run_id]) == kept_by_layer(rows[source.run_id])
    bad = {**spec, "cells": [spec["cells"][1]]}  # the source label has no earlier cell
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ConfigError, match="no cell of label 'pas' at fmnist-tiny block:1x8 0.8 seed 0"):
        load_and_expand(str(path))
