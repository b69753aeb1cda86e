"""ONNX export (bench/deploy/onnx_export.py): real short runs -> .onnx -> onnx.checker -> ONNX Runtime
equivalence on the task's test split; the sparsity sidecar round trip for block:1x8 and nm:2:4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from bench.cli.main import main  # noqa: E402
from bench.core.sparsity import parse_pattern  # noqa: E402
from bench.deploy.onnx_export import (  # noqa: E402
    SIDECAR_SUFFIX,
    deploy_model,
    export_onnx,
    masks_from_zeros,
    read_sidecar_masks,
    unit_grid,
)
from bench.runs.export import load_saved  # noqa: E402
from bench.runs.run import RunSpec, execute, resolve  # noqa: E402

BUDGET = {"prune_epochs": 1, "finetune_epochs": 0}


@pytest.fixture(scope="module")
def runs(shared_runs_dir):
    """Real short magnitude runs (1 prune epoch, no fine-tune), one thread, in the session's shared runs
    folder (its dense models are cached there for every end-to-end test)."""
    folder = shared_runs_dir
    patch = pytest.MonkeyPatch()
    patch.setenv("SMARTBENCH_RUNS", str(folder))
    patch.setenv("WANDB_MODE", "disabled")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = {}

    def run(task: str, pattern: str, sparsity: float | None = None) -> dict:
        key = (task, pattern)
        if key not in rows:
            spec = RunSpec(task=task, pruner="magnitude", pattern=pattern, sparsity=sparsity, budget=BUDGET)
            rows[key] = execute(resolve(spec), log=lambda _msg: None)
        return rows[key]

    yield run
    patch.undo()
    torch.set_num_threads(threads)


def check_equivalence(summary: dict) -> None:
    assert summary["checker"] == "passed" and summary["opset"] == 17
    assert summary["inputs"][0]["shape"][0] == "batch"  # the dynamic batch axis
    assert summary["max_abs_error"] <= 1e-4, summary
    assert abs(summary["metric_diff"]) <= 0.1, summary
    assert summary["batches"] > 0


def test_channel_run_exports_the_shrunk_model(runs, tmp_path):
    row = runs("fmnist-tiny", "channel", 0.5)
    summary = export_onnx(row["run_id"], tmp_path / "model.onnx")
    check_equivalence(summary)
    assert summary["params"] < summary["dense_params"] and summary["sidecar"] is None
    assert summary["metric_torch"] == row["metric"]  # the shrunk model is the run's model
    proto = onnx.load(summary["path"])
    names = {name for name, _ in deploy_model(row["run_id"]).model.named_parameters()}
    assert sum(numpy_helper.to_array(i).size for i in proto.graph.initializer if i.name in names) == summary["params"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["smartbench.run_id"] == row["run_id"] and meta["smartbench.variant"] == "pruned"
    masked = export_onnx(row["run_id"], tmp_path / "masked.onnx", variant="masked", verify=False)
    assert masked["params"] == masked["dense_params"] == summary["dense_params"]


@pytest.mark.parametrize("pattern", ["block:1x8", "nm:2:4"])
def test_sidecar_reproduces_every_mask_from_the_zeros(runs, tmp_path, pattern):
    row = runs("fmnist-vit-tiny", pattern, 0.5 if pattern.startswith("block") else None)
    summary = export_onnx(row["run_id"], tmp_path / "vit.onnx")
    check_equivalence(summary)
    assert summary["sidecar"] == summary["path"] + SIDECAR_SUFFIX
    sidecar = json.loads((tmp_path / f"vit.onnx{SIDECAR_SUFFIX}").read_text())
    proto = onnx.load(summary["path"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["smartbench.sparsity"]) == sidecar  # the same record inside the model
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    grids = read_sidecar_masks(tmp_path / f"vit.onnx{SIDECAR_SUFFIX}")
    hard = load_saved(row["run_id"])["hard_masks"]
    pat = parse_pattern(pattern)
    assert {entry["layer"] for entry in sidecar["layers"]} == set(hard)
    for entry in sidecar["layers"]:
        weight = weights[entry["initializer"]]
        assert list(weight.shape) == entry["weight_shape"]
        from_zeros = masks_from_zeros(weight, entry)
        np.testing.assert_array_equal(from_zeros, grids[entry["initializer"]])  # sidecar == zeros of the weight
        np.testing.assert_array_equal(grids[entry["initializer"]], unit_grid(pat, hard[entry["layer"]], weight.shape))
        assert entry["kept_units"] == int(from_zeros.sum()) and entry["pattern"] == pattern.split(":")[0]
        if pat.kind == "nm":  # every M consecutive weights of a row keep at most N
            assert (from_zeros.reshape(-1, pat.m).sum(1) <= pat.n).all()


def test_cli_export_onnx_and_bad_format(runs, tmp_path, capsys):
    row = runs("fmnist-tiny", "channel", 0.5)
    out = tmp_path / "cli.onnx"
    assert main(["export", row["run_id"], "--format", "onnx", "--out", str(out), "--no-verify", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert out.exists() and summary["path"] == str(out) and "max_abs_error" not in summary
    assert main(["export", row["run_id"], "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["export", row["run_id"], "--format", "onnx", "--opset", "5", "--out", str(out)]) == 2


@pytest.mark.mm
def test_mm_segmenter_exports_its_tensor_forward(runs, tmp_path_factory, monkeypatch):
    """micro-seg (tests/mm_micro.py), channel 50%: the shrunk FCN's tensor forward in ONNX Runtime,
    evaluated through the real mm model (preprocessor, resize to the image, argmax in Python)."""
    pytest.importorskip("mmseg")
    from mm_micro import MicroSeg

    from bench.tasks import base as tasks_base
    from bench.tasks import registry as tasks_registry

    monkeypatch.setenv("SMARTBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))
    tasks_registry.load_tasks()
    monkeypatch.setitem(tasks_base.TASKS, MicroSeg.name, MicroSeg)
    row = runs(MicroSeg.name, "channel", 0.5)
    summary = export_onnx(row["run_id"], tmp_path_factory.mktemp("seg") / "seg.onnx")
    check_equivalence(summary)
    assert summary["params"] < summary["dense_params"] and summary["metric_torch"] == row["metric"]
    assert summary["inputs"][0]["name"] == "inputs" and [o["name"] for o in summary["outputs"]] == ["out0"]
