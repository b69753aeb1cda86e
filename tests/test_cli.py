"""The command line: bad inputs fail early with exit code 2 and write nothing; end-to-end runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli.main import main
from bench.runs.record import ResultStore
from bench.runs.run import RunSpec, execute, resolve

ROOT = Path(__file__).resolve().parents[1]

BAD_INPUTS = [
    (
        ["--task", "nope", "--pruner", "smart", "--pattern", "block:1x8", "--sparsity", "0.5"],
        "task: unknown task 'nope'; allowed: ",
    ),
    (
        ["--task", "fmnist-tiny", "--pruner", "nope", "--pattern", "block:1x8", "--sparsity", "0.5"],
        "pruner: unknown pruner 'nope'; allowed: ",
    ),
    (
        ["--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "diag", "--sparsity", "0.5"],
        "pattern: unknown pattern 'diag'",
    ),
    (
        ["--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "block:1x8", "--sparsity", "1.5"],
        "sparsity: 1.5 is outside (0, 1)",
    ),
    (
        ["--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "block:1x8", "--sparsity", "0"],
        "sparsity: 0.0 is outside (0, 1)",
    ),
    (["--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "nm:4:4"], "needs 0 < N < M"),
    (
        ["--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "block:1x7", "--sparsity", "0.5"],
        "does not divide layer",
    ),
    (
        [
            "--task",
            "fmnist-tiny",
            "--pruner",
            "smart",
            "--pattern",
            "block:1x8",
            "--sparsity",
            "0.5",
            "--opt",
            "tau0=-1",
        ],
        "tau0: -1.0 is outside",
    ),
    (
        [
            "--task",
            "fmnist-tiny",
            "--pruner",
            "smart",
            "--pattern",
            "block:1x8",
            "--sparsity",
            "0.5",
            "--opt",
            "bogus=1",
        ],
        "smart.bogus: unknown option; allowed:",
    ),
    (
        [
            "--task",
            "fmnist-tiny",
            "--pruner",
            "smart",
            "--pattern",
            "block:1x8",
            "--sparsity",
            "0.5",
            "--model",
            "timm:no_such_net",
        ],
        "model: unknown timm model",
    ),
    (
        ["--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "block:1x8", "--sparsity", "0.5"]
        + ["--finetune-schedule", "cyclic"],
        "budget.finetune_schedule: 'cyclic' is not one of shared, restart",
    ),
    (
        ["--task", "fmnist-tiny", "--pruner", "smart", "--pattern", "block:1x8", "--sparsity", "0.5"]
        + ["--finetune-lr", "0.1"],
        "budget.finetune_lr: only with a finetune_schedule of its own: restart, hold",
    ),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_writes_nothing(args, message, runs_dir, capsys):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not runs_dir.exists()


def test_list_shows_pruners_patterns_and_tasks(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("smart", "magnitude", "gmp", "fmnist-tiny", "fmnist-resnet", "nm:N:M"):
        assert name in out


def test_run_ids_are_pinned():
    """Regression: the run identity only changes when the canonical config changes."""
    ids = {
        resolve(RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5, 0)).run_id,
        resolve(RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5, 1)).run_id,
        resolve(RunSpec("fmnist-tiny", "magnitude", "channel", 0.5, 0)).run_id,
    }
    assert len(ids) == 3
    assert (
        resolve(RunSpec("fmnist-resnet", "magnitude", "block:1x8", 0.5, 0)).run_id
        == PINNED["fmnist-resnet/magnitude/block:1x8/0.5/0"]
    )
    assert resolve(RunSpec("fmnist-tiny", "gmp", "nm:2:4", None, 2)).run_id == PINNED["fmnist-tiny/gmp/nm:2:4/-/2"]
    # the option spelled out at its default value is the same run
    same = resolve(RunSpec("fmnist-tiny", "gmp", "nm:2:4", 0.5, 2, pruner_options={"update_every": "10"})).run_id
    assert same == PINNED["fmnist-tiny/gmp/nm:2:4/-/2"]


PINNED = {
    "fmnist-resnet/magnitude/block:1x8/0.5/0": "9f5b35cc9a35",
    "fmnist-tiny/gmp/nm:2:4/-/2": "de0fb1b6bb2a",
}


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["block:1x8", "channel", "unstructured", "nm:2:4"])
def test_end_to_end_fmnist_tiny_every_pattern(pattern, shared_runs_dir, monkeypatch):
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    sparsity = None if pattern.startswith("nm") else 0.5
    allocation = {"policy": "global", "floor": 0.1} if pattern == "channel" else None  # v2 rule on one
    budget = {"prune_epochs": 1, "finetune_epochs": 1}
    run = resolve(RunSpec("fmnist-tiny", "smart", pattern, sparsity, 0, budget=budget, allocation=allocation))
    row = execute(run, log=lambda msg: None)
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"]
    assert row.get("allocation") == (allocation and allocation | {"ranking": "raw"})  # the rule it ran under
    assert row["metric"] > 50.0  # 10 classes: chance is 10%
    assert ResultStore().count(run.run_id) == 1
    assert not (shared_runs_dir / "checkpoints" / f"{run.run_id}.pt").exists()
    again = execute(run, log=lambda msg: None)  # finished runs are not redone
    assert again == row and ResultStore().count(run.run_id) == 1


@pytest.mark.slow
def test_cli_json_row(shared_runs_dir):
    env = {**os.environ, "SMARTBENCH_RUNS": str(shared_runs_dir), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "bench.cli.main",
        "run",
        "--task",
        "fmnist-tiny",
        "--pruner",
        "smart",
        "--pattern",
        "block:1x8",
        "--sparsity",
        "0.5",
        "--seed",
        "0",
        "--prune-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--json",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    row = json.loads(out)
    for field in (
        "run_id",
        "task",
        "model",
        "pruner",
        "pattern",
        "target_sparsity",
        "achieved_sparsity",
        "metric_name",
        "metric",
        "dense_metric",
        "seed",
        "wall_s",
        "audit",
        "provenance",
    ):
        assert field in row
    assert row["achieved_sparsity"] == 0.5 and row["metric_name"] == "top1"
    assert {"git_sha", "git_dirty", "torch", "timm", "dataset_hash", "cpu_model", "cpu_capability"} <= set(
        row["provenance"]
    )
    assert row["provenance"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
