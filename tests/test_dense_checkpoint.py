"""`--dense-checkpoint PATH`: the user's dense model replaces dense training; its hash is in the run id."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli.main import main
from bench.core.errors import ConfigError
from bench.core.paths import RunPaths
from bench.runs.run import RunSpec, dense_checkpoint_path, execute, resolve
from bench.tasks.registry import get_task

BUDGET = {"prune_epochs": 1, "finetune_epochs": 0}


def user_model(tmp_path, wrap: str | None = None):
    """A 'pretrained' fmnist-tiny model of the user's (here: a seeded init), saved as a file."""
    torch.manual_seed(7)
    model = get_task("fmnist-tiny").build_model()
    state = model.state_dict()
    path = tmp_path / "mine.pt"
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    return model, path


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_checkpoint_replaces_dense_training_and_enters_the_id(wrap, tmp_path, runs_dir):
    model, path = user_model(tmp_path, wrap)
    plain = resolve(RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5, 0, budget=BUDGET))
    mine = resolve(RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5, 0, budget=BUDGET, dense_checkpoint=str(path)))
    assert mine.run_id != plain.run_id and mine.canonical["task"]["dense_checkpoint"]["sha256"]
    assert "dense_checkpoint" not in plain.canonical["task"]  # ids of runs without one are unchanged
    row = execute(mine, log=lambda _m: None, paths=RunPaths(runs_dir))
    assert row["dense_metric"] == mine.task.evaluate(model.eval(), "test")
    assert row["achieved_sparsity"] == 0.5
    assert not dense_checkpoint_path(mine.task, 0, RunPaths(runs_dir)).exists()  # nothing was trained


def test_a_mismatched_checkpoint_is_one_error_naming_the_keys(tmp_path, runs_dir, capsys):
    other = get_task("fmnist-resnet").build_model()  # resnet10t, not fmnist-tiny's test_resnet
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit the task's model; missing keys"):
        resolve(RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5, 0, dense_checkpoint=str(path)))
    args = ["run", "--task", "fmnist-tiny", "--pruner", "magnitude", "--pattern", "block:1x8", "--sparsity", "0.5"]
    assert main([*args, "--dense-checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dense_checkpoint: ") and "missing keys" in err and "shape mismatches" in err
    assert err.count("\n") == 1
    assert main([*args, "--dense-checkpoint", str(tmp_path / "absent.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not runs_dir.exists()


def test_data_is_refused_by_tasks_with_their_own_dataset(capsys, runs_dir):
    args = ["run", "--task", "fmnist-tiny", "--pruner", "magnitude", "--pattern", "channel", "--sparsity", "0.5"]
    assert main([*args, "--data", "/tmp"]) == 2
    assert capsys.readouterr().err.startswith("error: data: task 'fmnist-tiny' brings its own dataset")


def test_cli_json_row_from_a_checkpoint(tmp_path, runs_dir, capsys):
    _, path = user_model(tmp_path)
    args = [
        "run",
        "--task",
        "fmnist-tiny",
        "--pruner",
        "gmp",
        "--pattern",
        "channel",
        "--sparsity",
        "0.5",
        "--prune-epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--dense-checkpoint",
        str(path),
        "--json",
    ]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["achieved_sparsity"] == 0.5 and not (runs_dir / "dense").exists()
