"""Artifacts read back from the runs folder are checked: a truncated dense or resume checkpoint is
rebuilt, a truncated saved model is one ``error:`` line naming the file (no loader traceback)."""

from __future__ import annotations

import pytest
import torch

from bench.cli.main import main
from bench.core.artifacts import CorruptArtifact, atomic_save, load_artifact
from bench.core.paths import RunPaths
from bench.runs.run import RunSpec, dense_checkpoint_path, execute, resolve

BUDGET = {"prune_epochs": 1, "finetune_epochs": 0}


def truncate(path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_load_artifact_names_the_file(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(1000)}, path)
    assert torch.equal(load_artifact(path, "thing")["a"], torch.ones(1000))
    truncate(path)
    with pytest.raises(CorruptArtifact, match=f"thing {path} is truncated or corrupt"):
        load_artifact(path, "thing")


@pytest.mark.slow
def test_truncated_checkpoints_are_rebuilt_and_a_truncated_model_is_one_error(runs_dir, capsys):
    paths = RunPaths(runs_dir)
    first = resolve(RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5, 0, budget=BUDGET))
    row = execute(first, log=lambda _m: None, paths=paths)
    dense = dense_checkpoint_path(first.task, 0, paths)
    reference = load_artifact(dense, "dense")

    # a truncated dense checkpoint is deleted and trained again (same seed: the same weights)
    truncate(dense)
    second = resolve(RunSpec("fmnist-tiny", "gmp", "block:1x8", 0.5, 0, budget=BUDGET))
    log: list[str] = []
    execute(second, log=log.append, paths=paths)
    assert any("dense checkpoint" in line and "truncated or corrupt" in line for line in log)
    rebuilt = load_artifact(dense, "dense")
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)

    # a truncated resume checkpoint: the run starts its stages again instead of crashing
    third = resolve(RunSpec("fmnist-tiny", "smart", "block:1x8", 0.5, 0, budget=BUDGET))
    paths.checkpoint(third.run_id).parent.mkdir(parents=True, exist_ok=True)
    paths.checkpoint(third.run_id).write_bytes(b"PK\x03\x04 not a checkpoint")
    log.clear()
    assert execute(third, log=log.append, paths=paths)["achieved_sparsity"] == 0.5
    assert any("resume checkpoint" in line and "truncated or corrupt" in line for line in log)

    # a truncated saved model: `export` and `speed` end in one error line naming the file
    truncate(paths.model(row["run_id"]))
    capsys.readouterr()
    for argv in (
        ["export", row["run_id"], "--out", str(runs_dir / "x.pt")],
        ["speed", row["run_id"], "--repeats", "1"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: saved pruned model ") and str(paths.model(row["run_id"])) in err
        assert err.count("\n") == 1 and "Traceback" not in err
