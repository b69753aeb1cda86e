"""Export round trip: a real short fmnist-tiny run -> saved folded weights -> export -> load -> same metric."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli.main import main
from bench.runs.export import EXPORT_FORMAT, export_run, load_exported, save_pruned, saved_model_path
from bench.runs.run import RunSpec, execute, resolve
from bench.tasks.registry import get_task


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    """One real run (magnitude, channel 50%, 1 prune epoch, no fine-tune) in a private runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    patch = pytest.MonkeyPatch()
    patch.setenv("SMARTBENCH_RUNS", str(runs))
    patch.setenv("WANDB_MODE", "disabled")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared test machine: avoid oversubscription stalls
    run = resolve(
        RunSpec(
            task="fmnist-tiny",
            pruner="magnitude",
            pattern="channel",
            sparsity=0.5,
            budget={"prune_epochs": 1, "finetune_epochs": 0},
        )
    )
    row = execute(run, log=lambda _msg: None)
    assert saved_model_path(row["run_id"]).exists()  # every run saves its pruned model
    yield row, runs
    patch.undo()
    torch.set_num_threads(threads)


def test_export_round_trip_reproduces_the_metric_exactly(channel_run, tmp_path):
    row, _ = channel_run
    out = tmp_path / "pruned.pt"
    summary = export_run(row["run_id"], out)
    assert summary["shrunk_groups"] > 0 and summary["params"] < summary["dense_params"]
    payload = torch.load(out, weights_only=True)  # tensors + plain containers only
    assert payload["format"] == EXPORT_FORMAT and payload["meta"]["run_id"] == row["run_id"]
    model, meta = load_exported(out)
    assert sum(p.numel() for p in model.parameters()) == summary["params"]
    task = get_task(row["task"], row["model"])
    assert task.evaluate(model, "test") == row["metric"]
    assert task.evaluate(model, "val") == row["val_metric"]
    assert meta["metric"] == row["metric"] and set(meta["hard_masks"]) == {a["layer"] for a in row["audit"]["layers"]}


def test_cli_export_and_speed(channel_run, tmp_path, capsys):
    row, runs = channel_run
    out = tmp_path / "cli.pt"
    assert main(["export", row["run_id"], "--out", str(out)]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["speed", row["run_id"], "--batch-sizes", "1,4", "--repeats", "3", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["latency"]) == {"masked_dense", "shrunk", "masked_dense_frozen", "shrunk_frozen"}
    assert set(result["latency"]["shrunk"]) == {"1", "4"} == set(result["latency"]["shrunk_frozen"])
    assert result["ratios"]["shrunk_frozen"]["1"]["reference"] == "masked_dense_frozen"
    assert result["costs"]["params_shrunk"] < result["costs"]["params_dense"]
    assert (runs / "speed" / f"{row['run_id']}.json").exists()


def test_cli_errors_are_clean(channel_run, capsys):
    assert main(["export", "nope", "--out", "/tmp/never.pt"]) == 2
    assert "run_id" in capsys.readouterr().err
    assert main(["speed", channel_run[0]["run_id"], "--batch-sizes", "0"]) == 2


def test_save_pruned_needs_a_folded_model(tmp_path):
    from torch import nn

    from bench.core.masks import Masker
    from bench.core.sparsity import Unstructured

    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    masker = Masker(net, ["1"], Unstructured())
    hard = {"1": torch.ones(16, dtype=torch.bool)}
    with pytest.raises(ValueError, match="folded"):
        save_pruned(tmp_path, net, hard, {"run_id": "abc"})
    masker.remove(fold=True)
    path = save_pruned(tmp_path, net, hard, {"run_id": "abc"})
    assert path == tmp_path / "models" / "abc.pt"
    assert torch.load(path, weights_only=True)["hard_masks"]["1"].dtype == torch.bool
