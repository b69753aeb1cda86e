"""Is a task's dense reference trained to a plateau? (protocol v3, issue 32 item 3)

    python scripts/dense_plateau.py TASK [--seeds 0,1,2] [--epochs E] [--threads 1] [--out FILE.json]

Trains the task's dense recipe from scratch for each seed (``--epochs`` overrides
``Budget.dense_epochs``: the recipe's cosine is then over E epochs), evaluates the validation split
after epoch E - round(0.2 E) and after the last epoch, and prints per seed the val gain over the
last 20% of the epochs, the seed spread (sample SD of the final val metric) and the verdict: the
recipe is at a plateau when the mean gain is below the spread (``bench.reports.stats.plateau``).
Nothing is cached: the task's dense cache and the result store are not touched. The numbers in the
tasks' docstrings come from this script.

The tail test is necessary, not sufficient: under a cosine schedule the last epochs run at a small
lr and gain little whatever the model's state. Run it again with ``--epochs`` twice the task's: a
recipe is at a plateau when that longer recipe's final val is also within the seed spread of this
one's (scenes-det-lite passes the tail test at 16 epochs and gains 5.9 mAP at 32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.reports.stats import plateau, tail_start  # noqa: E402
from bench.tasks.registry import get_task  # noqa: E402
from bench.training.train import fit_dense, seed_everything  # noqa: E402


def curve(task, seed: int, epochs: int, at: set[int], log) -> dict[int, float]:
    """{epochs done: val metric} at the epochs ``at`` of one dense training of ``task``."""
    seed_everything(seed)
    values: dict[int, float] = {}
    with task.quiet():
        model = task.build_model().to(task.device)

    def on_epoch(done: int) -> None:
        if done in at:
            with task.quiet():
                values[done] = float(task.evaluate(model, "val"))
            log(f"  seed {seed} epoch {done}/{epochs}: val {task.metric_name} {values[done]:.2f}")

    if task.loop == "mmengine":
        with tempfile.TemporaryDirectory() as work:
            task.fit_dense(model, epochs, seed, Path(work), lambda line: None, on_epoch=on_epoch)
    else:
        fit_dense(task, model, epochs, seed, lambda line: None, on_epoch=on_epoch)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="dense epochs (default: the task's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the curves and the verdict as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    epochs = args.epochs or task.budget.dense_epochs
    if epochs < 2:
        parser.error("--epochs: at least 2 (the check compares two epochs)")
    task.budget = dataclasses.replace(task.budget, dense_epochs=epochs)
    at = {tail_start(epochs), epochs}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.task}: dense {task.dense_optimizer} lr {task.budget.lr:g}, {epochs} epochs, val at {sorted(at)}")
    started = time.perf_counter()
    curves = {seed: curve(task, seed, epochs, at, print) for seed in seeds}
    result = plateau(curves, epochs)
    gains = ", ".join(f"{result.gains[s]:+.2f}" for s in seeds)
    finals = ", ".join(f"{result.finals[s]:.2f}" for s in seeds)
    print(f"final val {task.metric_name} (seeds {args.seeds}): {finals}")
    print(
        f"gain over the last 20% of epochs: {gains}; mean {result.mean_gain:+.2f}; seed spread (SD) {result.spread:.2f}"
    )
    print(
        f"verdict: {'at a plateau' if result.converged else 'NOT at a plateau'} ({time.perf_counter() - started:.0f} s)"
    )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "task": args.task,
                    "epochs": epochs,
                    "curves": {str(s): {str(e): v for e, v in c.items()} for s, c in curves.items()},
                    "mean_gain": result.mean_gain,
                    "spread": result.spread,
                    "converged": result.converged,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
