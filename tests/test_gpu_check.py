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
