"""Golden behaviour of every pruner: final-mask hash and metrics of small, fixed runs.

``python tests/golden/record.py`` (from the repository root) runs every case and updates
``tests/golden/golden.json`` (the mm cases only where mm* is installed); ``tests/test_golden.py`` runs the same cases and asserts the same
numbers, bit for bit (CPU, same seed, same thread count). Record only when a change is *meant*
to change behaviour, and say so in the commit message.

Cases: every registered built-in pruner x {block:1x8 0.5, channel 0.5, nm:2:4} it supports on
``fmnist-tiny`` (1 pruning + 1 fine-tuning epoch from the cached dense model), and SMART and
magnitude on the mmseg micro task of ``tests/test_mm.py`` (channel 0.5) when mm* is installed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("golden.json")
BUILTIN = ("acdc", "awg", "gmp", "magnitude", "pas", "pdp", "smart", "srste")
PATTERNS = (("block:1x8", 0.5), ("channel", 0.5), ("nm:2:4", None))
NATIVE_BUDGET = {"prune_epochs": 1, "finetune_epochs": 1}


def mask_hash(masks: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].bool().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def native_cases() -> list[dict]:
    from bench.runs.registry import load_pruners

    pruners = load_pruners()
    cases = []
    for name in BUILTIN:
        for pattern, sparsity in PATTERNS:
            if pattern.split(":")[0] in pruners[name].patterns:
                cases.append(
                    {
                        "task": "fmnist-tiny",
                        "pruner": name,
                        "pattern": pattern,
                        "sparsity": sparsity,
                        "budget": NATIVE_BUDGET,
                        "threads": 2,
                    }
                )
    return cases


MM_CASES = [
    {"task": "micro-seg", "pruner": p, "pattern": "channel", "sparsity": 0.5, "budget": {}, "threads": 1}
    for p in ("smart", "magnitude")
]


def register_micro() -> None:
    """Register the mmseg micro task of the tests (raises ImportError without mm*)."""
    import mmseg  # noqa: F401  (ImportError without mm*)
    from mm_micro import MicroSeg

    from bench.tasks import base, registry

    registry.load_tasks()
    base.TASKS[MicroSeg.name] = MicroSeg


def case_key(case: dict) -> str:
    return f"{case['task']}/{case['pruner']}/{case['pattern']}"


def run_case(case: dict, runs: Path) -> dict:
    """Run one case in ``runs`` (dense model cached there); returns its golden numbers."""
    from bench.runs.export import load_saved
    from bench.runs.record import ResultStore
    from bench.runs.run import RunSpec, execute, resolve

    torch.set_num_threads(case["threads"])
    run = resolve(
        RunSpec(
            task=case["task"],
            pruner=case["pruner"],
            pattern=case["pattern"],
            sparsity=case["sparsity"],
            budget=dict(case["budget"]),
        )
    )
    row = execute(run, log=lambda _msg: None, store=ResultStore(runs / "results.jsonl"))
    saved = load_saved(row["run_id"])
    return {
        "mask": mask_hash(saved["hard_masks"]),
        "metric": row["metric"],
        "val_metric": row["val_metric"],
        "achieved_sparsity": row["achieved_sparsity"],
    }


def main() -> int:
    import os
    import tempfile

    os.environ.setdefault("WANDB_MODE", "disabled")
    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root), str(root / "tests")]
    results = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}  # cases not run here are kept
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        os.environ["SMARTBENCH_RUNS"] = str(runs)
        os.environ["SMARTBENCH_CACHE"] = str(Path(tmp) / "cache")
        cases = native_cases()
        try:
            register_micro()
            cases += MM_CASES
        except ImportError as err:
            print(f"skipping the mm cases: {err}", file=sys.stderr)
        for case in cases:
            results[case_key(case)] = run_case(case, runs)
            print(case_key(case), results[case_key(case)], flush=True)
            GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")  # after every case
    print(f"wrote {len(results)} cases to {GOLDEN}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
