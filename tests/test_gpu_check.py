"""The GPU check's CPU mode (issue 34 item 4): scripts/gpu_check.py's realistic training-step section
runs here at toy sizes (scripts/gpu_steps.py --small), through the same code as on a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gpu_check  # noqa: E402


def test_the_training_step_section_reports_every_entry_with_zero_syncs(tmp_path):
    small = "--small --models resnet50 --patterns channel --modes eager --warmup 1 --rounds 2 --steps 2"
    argv = ["--out-dir", str(tmp_path), "--device", "cpu", "--sections", "train_steps", "--pruners", "smart,pdp"]
    assert gpu_check.main([*argv, "--steps-args", small]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    rows = report["sections"]["train_steps"]["rows"]
    measured = [r for r in rows if "median_ms" in r]
    entries = {(r["pattern"], r["pruner"], r["allocation"]) for r in measured}
    assert {("channel", "dense", "-"), ("channel", "fixed-mask", "global")} <= entries
    assert {("channel", p, a) for p in ("smart", "pdp") for a in ("global", "v1")} <= entries
    for r in measured:
        assert r["syncs_per_step"] == 0, r  # the accelerator paths, counted on the CPU
        assert r["median_ms"] > 0 and r["ratio_median"] > 0 and r["launches_per_step"] > 0
    assert all(r["ratio_median"] == 1.0 for r in measured if r["pruner"] == "dense")
    text = (tmp_path / "gpu-check.md").read_text()
    assert "## 0. Training steps at realistic sizes on CPU" in text and "| smart | eager | global |" in text


def linear_row(name, rows, dense_kernel, sparse_kernel, target=0.85, graph=True):
    import bench_24

    shape = next(s for s in bench_24.shapes() if s.name == name)
    dense = {
        "kernel_ms": dense_kernel,
        "graph_ms": dense_kernel * 1.01 if graph else None,
        "eager_ms": 2 * dense_kernel,
    }
    sparse = {"kernel_ms": sparse_kernel, "graph_ms": sparse_kernel * 1.01 if graph else None, "eager_ms": 0.9}
    row = {"name": name, "out_features": shape.out_features, "in_features": shape.in_features, "rows": rows}
    row.update(macs=shape.macs, small=shape.small, target=shape.target, dtype="bf16", rel_err=1e-3)
    row.update(alg={"alg_id": 2, "split_k": 1}, dense=dense, sparse=sparse, **bench_24.ratios(dense, sparse))
    return row


def test_the_24_plan_flags_small_shapes_and_targets_only_the_large_mlp_linears(capsys):
    import bench_24

    plan = bench_24.shapes()
    targeted = [s for s in plan if s.target is not None]
    assert {s.name.split()[0] for s in targeted} == {"vit_b.fc1", "vit_b.fc2", "vit_l.fc1", "vit_l.fc2"}
    assert all(s.rows >= 12_000 and not s.small for s in targeted)
    assert {s.name for s in plan if s.small} == {"fmnist-vit.fc1 b16", "fmnist-vit.fc2 b16"}
    assert next(s for s in plan if s.name == "vit_b.fc1 b256").macs == 256 * 197 * 3072 * 768
    assert bench_24.main(["--plan", "--shapes", "vit_l"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 4 and all("target 0.85" in line for line in printed)


def test_the_24_report_separates_kernel_from_host_time_and_marks_targets(tmp_path):
    import bench_24

    met = linear_row("vit_b.fc1 b64", 12608, 0.200, 0.150)
    missed = linear_row("vit_l.fc2 b64", 12608, 0.300, 0.270, graph=False)
    small = linear_row("fmnist-vit.fc1 b16", 272, 0.004, 0.010)
    assert met["kernel_ratio"] == 0.150 / 0.200 and abs(met["graph_ratio"] - 0.75) < 1e-12
    assert met["host_ms"] == {"dense": 0.2, "sparse": 0.9 - 0.15}  # eager - kernel: dispatch not hidden
    assert "graph_ratio" not in missed  # the capture failed: no ratio, not a made-up one
    failed = {**linear_row("vit_b.fc2 b64", 12608, 1, 1), "error": "RuntimeError: no kernel"}
    whole = {"dtype": "bf16", "batch": 256, "converted": "48/48", "rel_err": 2e-3, "ratio": 0.99}
    whole.update(kernel_ratio=0.95, dense={"eager_ms": 100.0}, sparse={"eager_ms": 99.0})
    report = {"header": "H100", "linears": [met, missed, small, failed], "whole": [whole]}
    text = bench_24.render(report)
    lines = {line.split(" |")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert lines["| vit_b.fc1 b64 (3072x768)"].endswith("| 0.750 | 0.750 | 2.250 | 0.750 | 1.0e-03 | met |")
    assert lines["| vit_l.fc2 b64 (1024x4096)"].endswith("| 0.900 | - | 1.500 | 0.630 | 1.0e-03 | MISSED |")
    assert lines["| fmnist-vit.fc1 b16 (384x96)"].endswith("| small |")
    assert "failed: RuntimeError: no kernel" in lines["| vit_b.fc2 b64 (768x3072)"]
    assert lines["| bf16"].endswith("| 0.990 | 0.950 | 2.0e-03 | MISSED |")  # 0.99 > 0.97
    # the GPU check renders the same tables from its JSON
    (tmp_path / "gpu-check.json").write_text(
        json.dumps(
            {
                "environment": gpu_check.environment(),
                "device": "cuda",
                "finished_at": "2026-12-08 00:00 UTC",
                "commit": "abc",
                "wall_s": 300.0,
                "sections": {"sparse24": {"report": report, "returncode": 0, "wall_s": 300.0, "commit": "abc"}},
            }
        )
    )
    gpu_check.rerender(tmp_path)
    rendered = (tmp_path / "gpu-check.md").read_text()
    assert "## 4. 2:4 semi-structured kernels vs dense" in rendered and lines["| vit_b.fc1 b64 (3072x768)"] in rendered
