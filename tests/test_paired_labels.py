"""scripts/paired_labels.py: per column, the paired difference between two labels (an ablation)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_labels.py"
spec = importlib.util.spec_from_file_location("paired_labels", SCRIPT)
paired_labels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_labels)


def row(label: str, seed: int, metric: float, policy: str = "global", kept=(4, 2)) -> dict:
    layers = [{"layer": f"l{i}", "units": 8, "kept_units": k, "at_floor": k == 1} for i, k in enumerate(kept)]
    return {
        "run_id": f"{label}-{policy}-{seed}",
        "label": label,
        "pruner": label.removesuffix("-raw"),
        "task": "t",
        "pattern": "channel",
        "target_sparsity": 0.5,
        "seed": seed,
        "metric": metric,
        "achieved_flops_sparsity": 0.5,
        "allocation": {"policy": policy, "floor": 0.1},
        "audit": {"layers": layers, "layers_at_floor": sum(k == 1 for k in kept)},
    }


def test_pairs_by_seed_within_a_track_with_holm_and_the_allocation_figures(tmp_path, capsys):
    rows = [row("magnitude-raw", s, m, kept=(7, 1)) for s, m in enumerate([80.0, 81.0, 83.0])]
    rows += [row("magnitude", s, m) for s, m in enumerate([81.0, 81.5, 84.0])]
    rows += [row("magnitude", s, 10.0, policy="uniform") for s in range(3)]  # another track: not paired
    path = tmp_path / "s.rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert paired_labels.main([str(path), "--pairs", "magnitude-raw:magnitude"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # header, rule, one column: the uniform rows have no raw partner
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[:6] == ["magnitude-raw", "magnitude", "t · channel · 0.5 · allocation", "3", "81.33", "82.17"]
    assert cells[6].startswith("-0.83 [")  # differences -1, -0.5, -1
    assert cells[9:] == ["0.500 / 0.500", "1.0 / 0.0", "0.125 / 0.250"]
