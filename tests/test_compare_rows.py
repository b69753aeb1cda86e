"""scripts/compare_rows.py: two runs of the same cells paired by run id (a code change's effect)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_rows.py"
spec = importlib.util.spec_from_file_location("compare_rows", SCRIPT)
compare_rows = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_rows)


def rows(metrics: list[float], dense: float = 88.9, floor: int = 0) -> list[dict]:
    return [
        {
            "run_id": f"r{seed}",
            "label": "smart",
            "pruner": "smart",
            "task": "t",
            "pattern": "block:1x8",
            "target_sparsity": 0.9,
            "seed": seed,
            "metric": metric,
            "metric_before_finetune": metric - 50,
            "dense_metric": dense,
            "audit": {"layers_at_floor": floor},
        }
        for seed, metric in enumerate(metrics)
    ]


def write(path: Path, data: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(path)


def test_pairs_by_run_id_and_tests_the_paired_difference(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", rows([88.0, 87.0, 86.5], floor=0))
    b = write(tmp_path / "b.jsonl", rows([87.0, 86.1, 85.4], floor=3))
    assert compare_rows.main([a, b, "--names", "fixed,defect"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("| smart"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # diffs 1.0, 0.9, 1.1: mean +1.00, t = 1.0 / (0.1 / sqrt 3) = 17.32 on 2 df -> p = 1 - t / sqrt(t^2 + 2) = 0.00332
    assert cells[4:9] == ["3", "87.17", "86.17", "+1.00", "0.00332"]
    assert cells[11:] == ["0.0", "3.0"]
    assert "fixed vs defect (paired t-test over seeds, p < 0.05): 1 better, 0 worse, 0 not separated" in out


def test_refuses_rows_from_different_dense_models(tmp_path):
    a = write(tmp_path / "a.jsonl", rows([88.0, 87.0], dense=88.9))
    b = write(tmp_path / "b.jsonl", rows([87.0, 86.0], dense=88.7))
    with pytest.raises(SystemExit, match="different dense models"):
        compare_rows.main([a, b])
