"""``smartbench speed RUN_ID --runtime onnxruntime``: the run's dense-shaped and deployable ONNX exports
timed in ONNX Runtime with the interleaved latency protocol (bench/deploy/ort_speed.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from bench.cli.main import main  # noqa: E402
from bench.runs.run import RunSpec, execute, resolve  # noqa: E402


@pytest.fixture(scope="module")
def channel_run(shared_runs_dir):
    """A short channel run in the session's shared runs folder (its fmnist-tiny dense model is cached there)."""
    runs = shared_runs_dir
    patch = pytest.MonkeyPatch()
    patch.setenv("SMARTBENCH_RUNS", str(runs))
    run = resolve(RunSpec("fmnist-tiny", "magnitude", "channel", 0.5, budget={"prune_epochs": 1, "finetune_epochs": 0}))
    row = execute(run, log=lambda _m: None, wandb=False)
    yield row, runs
    patch.undo()


def test_onnxruntime_latency_of_the_dense_shaped_and_shrunk_exports(channel_run, capsys, monkeypatch):
    row, runs = channel_run
    monkeypatch.setenv("SMARTBENCH_RUNS", str(runs))
    args = ["speed", row["run_id"], "--runtime", "onnxruntime", "--batch-sizes", "1,4", "--repeats", "5"]
    assert main(args + ["--warmup", "1", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["latency"]) == {"ort_dense", "ort_pruned"}
    for by_batch in result["latency"].values():
        assert set(by_batch) == {"1", "4"}
        for stats in by_batch.values():
            assert stats["repeats"] == 5 and 0 < stats["p25_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    ratios = result["ratios"]["ort_pruned"]
    assert {r["reference"] for r in ratios.values()} == {"ort_dense"}
    assert result["latency_ratio_ort"] == {bs: r["ratio_of_medians"] for bs, r in ratios.items()}
    assert result["protocol"]["interleaved"] and result["protocol"]["threads"] == 1
    runtime = result["runtime"]
    assert runtime["name"] == "onnxruntime" and runtime["intra_op_threads"] == 1 and runtime["opset"] == 17
    assert result["fingerprint"]["onnxruntime"] == runtime["version"]
    flops = result["flops"]  # channel 50%: the shrunk graph does less than half the dense one's work
    assert flops["ort_pruned"] < 0.6 * flops["ort_dense"] and flops["ratio"] == pytest.approx(
        flops["ort_pruned"] / flops["ort_dense"], abs=1e-4
    )
    written = runs / "speed" / f"{row['run_id']}.onnxruntime.json"
    assert json.loads(written.read_text())["latency_ratio_ort"] == result["latency_ratio_ort"]
    assert (runs / "speed" / f"{row['run_id']}-onnx" / "pruned.onnx").is_file()


def test_onnxruntime_speed_refuses_a_gpu_device(channel_run, capsys, monkeypatch):
    row, runs = channel_run
    monkeypatch.setenv("SMARTBENCH_RUNS", str(runs))
    assert main(["speed", row["run_id"], "--runtime", "onnxruntime", "--device", "cuda"]) == 2
    assert "--device: --runtime onnxruntime measures the CPU execution provider" in capsys.readouterr().err
