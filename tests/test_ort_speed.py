"""``smartbench speed RUN_ID --runtime onnxruntime``: the run's dense-shaped and deployable ONNX exports
timed in ONNX Runtime with the interleaved latency protocol (bench/deploy/ort_speed.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

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
    assert "--device: --runtime onnxruntime measures the CPU" in capsys.readouterr().err


OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not OPENVINO, reason="openvino is not installed")


def in_subprocess(code: str, runs) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout. The OpenVINO tests keep openvino
    out of the test process: loaded there, its threading runtime shared the process with every later
    test, and one full run of the suite ended in a segfault in the next in-process training run."""
    env = {**os.environ, "SMARTBENCH_RUNS": str(runs)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@needs_openvino
def test_openvino_latency_of_the_same_exports(channel_run):
    row, runs = channel_run
    args = ["speed", row["run_id"], "--runtime", "openvino", "--batch-sizes", "1,4", "--repeats", "3"]
    code = f"import sys; from bench.cli.main import main; sys.exit(main({args + ['--warmup', '1', '--json']!r}))"
    result = json.loads(in_subprocess(code, runs).strip().splitlines()[-1])
    runtime = result["runtime"]
    assert runtime["name"] == "openvino" and runtime["config"]["INFERENCE_NUM_THREADS"] == 1
    assert runtime["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert set(result["latency_ratio_ov"]) == {"1", "4"} and "latency_ratio_ort" not in result
    assert result["flops"]["ort_pruned"] < 0.6 * result["flops"]["ort_dense"]
    assert (runs / "speed" / f"{row['run_id']}.openvino.json").is_file()


@needs_openvino
def test_openvino_computes_what_onnx_runtime_computes(channel_run):
    """The two runtimes run the same file: the same logits to fp32 rounding."""
    row, runs = channel_run
    code = f"""
import torch
from bench.deploy.onnx_export import OrtModule, export_onnx, ort_session
from bench.deploy.ort_speed import OpenVinoSession
summary = export_onnx({row["run_id"]!r}, {str(runs / "ov-check" / "pruned.onnx")!r}, verify=False)
x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
ort = OrtModule(ort_session(summary["path"]))(x)
ov = OrtModule(OpenVinoSession(summary["path"]))(x)
print(tuple(ov.shape), tuple(ort.shape), float((ov - ort).abs().max()))
"""
    line = in_subprocess(code, runs).strip().splitlines()[-1]
    assert line.startswith("(3, 10) (3, 10) ")
    assert float(line.rsplit(" ", 1)[1]) < 1e-4


def test_runtime_results_reach_the_rows(channel_run, monkeypatch, tmp_path):
    """runtime_fields reads the stored result (batch-1 ratio, every batch, versions); a row's own
    values win over a stored measurement."""
    from bench.deploy.ort_speed import result_path, runtime_fields, with_runtime_fields
    from bench.runs.record import ResultStore

    row, runs = channel_run
    monkeypatch.setenv("SMARTBENCH_RUNS", str(runs))
    stored = json.loads(result_path(row["run_id"], "onnxruntime").read_text())
    fields = runtime_fields(row["run_id"])
    assert fields["latency_ratio_ort"] == stored["latency_ratio_ort"]["1"]
    ort = fields["runtime_latency"]["onnxruntime"]
    assert ort["ratio"] == stored["latency_ratio_ort"] and ort["flops_ratio"] == stored["flops"]["ratio"]
    assert ort["version"] == stored["runtime"]["version"] and ort["threads"] == 1
    merged = list(with_runtime_fields([row, {"run_id": "nothing-measured"}, {**row, "latency_ratio_ort": 9.0}]))
    assert merged[0]["latency_ratio_ort"] == fields["latency_ratio_ort"]
    assert merged[1] == {"run_id": "nothing-measured"}
    assert merged[2]["latency_ratio_ort"] == 9.0 and "onnxruntime" in merged[2]["runtime_latency"]
    assert runtime_fields("nothing-measured") == {}
    assert (
        next(iter(ResultStore(runs / "results.jsonl").rows()), {}).get("latency_ratio_ort") is None
    )  # store untouched


def test_suite_speed_then_cost_table_and_latency_figure(shared_runs_dir, monkeypatch, tmp_path, capsys):
    """`suite speed` measures every finished cell once (resumable), `table --cost` shows FLOPs kept
    and the ORT ratio per cell, `--raw` rows carry the ratio, and `--plot` draws the latency twin of
    the FLOPs Pareto figure."""
    import yaml

    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    spec = {
        "tasks": ["fmnist-tiny"],
        "pruners": ["magnitude"],
        "patterns": ["channel"],
        "sparsities": [0.625],  # not the channel_run fixture's cell
        "seeds": [0],
        "budget": {"prune_epochs": 1, "finetune_epochs": 0},
    }
    suite = tmp_path / "ortsuite.yaml"
    suite.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert main(["suite", "run", str(suite), "--no-progress"]) == 0
    capsys.readouterr()
    speed = ["suite", "speed", str(suite), "--batch-sizes", "1", "--repeats", "3", "--warmup", "1"]
    assert main(speed) == 0
    out = capsys.readouterr().out
    assert "1 finished cell(s), 1 to measure in onnxruntime" in out and "measured 1, failed 0" in out
    assert main(speed) == 0  # resumable: nothing left to measure
    assert "0 to measure" in capsys.readouterr().out
    assert main(["table", str(suite), "--cost", "--out", str(tmp_path / "t"), "--raw", "--plot"]) == 0
    capsys.readouterr()
    text = (tmp_path / "t" / "ortsuite.md").read_text()
    rows = [json.loads(line) for line in (tmp_path / "t" / "ortsuite.rows.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["latency_ratio_ort"] > 0
    kept = rows[0]["flops_masked"] / rows[0]["flops_dense"]
    cost = text.split("### ortsuite · allocation track: cost")[1]  # the protocol default: the allocation track
    assert f"F {kept:.2f} · ORT {rows[0]['latency_ratio_ort']:.2f}" in cost
    assert "| dense " in cost and "F 1.00" in cost
    assert (tmp_path / "t" / "ortsuite-fmnist-tiny-pareto-latency-ort.png").is_file()
    csv_out = tmp_path / "csv"
    assert main(["table", str(suite), "--format", "csv", "--out", str(csv_out)]) == 0
    header = (csv_out / "ortsuite.csv").read_text().splitlines()[0].split(",")
    assert {"flops_kept", "latency_ratio_ort", "latency_ratio_ov"} <= set(header)


def test_unknown_or_missing_runtime_is_one_clear_error(capsys, monkeypatch):
    import builtins

    from bench.core.errors import ConfigError
    from bench.deploy.ort_speed import check_runtime

    with pytest.raises(ConfigError, match="'tensorrt' is not one of torch, onnxruntime, openvino"):
        check_runtime("tensorrt")
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(ConfigError, match="openvino is not installed"):
        check_runtime("openvino")
