"""Where one cell's time goes: a ``smartbench run`` under cProfile, split into the parts of a cell.

Usage (a runs folder where the task's dense model is already trained, or it is trained first and
counted under "dense model"):

    SMARTBENCH_RUNS=/tmp/runs python scripts/profile_cell.py -- --task scenes-det-tiny \
        --pruner magnitude --pattern channel --sparsity 0.7 --prune-epochs 1 --finetune-epochs 0

Prints wall seconds per part (cumulative cProfile times of the functions that bound each part;
parts nest as listed, "other" is the rest). One thread, as a 2-worker suite gives each cell.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

# part -> (file fragment, function name) whose cumulative time is the part's
PARTS = {
    "imports of the run pipeline": [("bench/runs/run.py", "<module>")],
    "mm registration and config": [("bench/tasks/mm_common.py", "register_mm")],
    "dense model (train or load)": [
        ("bench/training/train.py", "train_dense"),
        ("bench/tasks/mm_common.py", "train_dense"),
    ],
    "training (prune + fine-tune)": [("bench/training/train.py", "run"), ("bench/tasks/mm_common.py", "train_stages")],
    "  of which data loading": [("torch/utils/data/dataloader.py", "__next__")],
    "  of which backward": [("torch/autograd/__init__.py", "backward")],
    "evaluation (every split and call)": [
        ("bench/tasks/base.py", "evaluate_all"),
        ("bench/tasks/mm_common.py", "evaluate_all"),
    ],
    "calibration": [("bench/core/masks.py", "calibrate")],
    "cost figures (FLOP counter)": [("bench/deploy/speed.py", "cost_figures")],
    "checkpoint writes": [("torch/serialization.py", "save")],
    "W&B row": [("bench/runs/record.py", "log_wandb")],
}


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for part, functions in PARTS.items():
        total = 0.0
        for (file, _, name), (_, _, _, cumulative, callers) in stats.stats.items():
            for fragment, function in functions:
                if fragment in file and name == function:
                    # count only outermost calls: a recursive or nested call of the same function is inside them
                    if not any(fragment in caller[0] and caller[2] == function for caller in callers):
                        total += cumulative
        out[part] = total
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then the arguments of `smartbench run`")
    args = parser.parse_args(argv)
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import torch

    from bench.core.process import prepare_process

    prepare_process()  # as bench.cli.main does, before the thread pool exists
    torch.set_num_threads(args.threads)
    from bench.cli.main import main as smartbench

    profiler = cProfile.Profile()
    begin = time.perf_counter()
    profiler.enable()
    code = smartbench(["run", *run_args])
    profiler.disable()
    wall = time.perf_counter() - begin
    parts = breakdown(pstats.Stats(profiler))
    print(f"cell wall {wall:.1f} s (under cProfile), exit {code}")
    top = sum(v for k, v in parts.items() if not k.startswith("  "))
    for part, seconds in parts.items():
        print(f"  {part:36s} {seconds:7.2f} s")
    print(f"  {'other':36s} {wall - top:7.2f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
