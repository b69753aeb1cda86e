"""Host synchronisations per training step of every pruner, counted on the CPU (issue 34).

    python scripts/count_syncs.py [--pruners smart,pdp] [--patterns block:1x8,channel,unstructured]
                                  [--allocations v1,global,uniform] [--steps 30] [--json FILE]

Each (pruner, pattern, allocation) drives ``bench.prune`` on timm's resnet10t (13 prunable layers)
with a user loop of ``--steps`` steps, pruning over the first two thirds, and counts with
``bench.core.syncs.HostSyncCounter`` what a GPU would stall on, split into the pruning steps, the
fine-tuning steps and the mean over the steady-state pruning steps (the last half of them: past
any warm-up). By default the code runs its accelerator paths (``bench.core.syncs.sync_free``): what
a GPU would stall on; ``--host-paths`` counts the CPU's own paths, which read values on the host
where that is faster and nothing waits. The whole step is counted: the pruner's own calls (``step``,
``penalty``, ``after_optimizer_step``), the forward, the backward (which runs the pruners' own
autograd functions: AWG's unit norms, straight-through estimators) and the optimizer step. Until
commit 39ecc64 only the pruner's own calls were, which missed AWG's one read per layer in its
backward on the accelerator path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
from bench.core.errors import ConfigError  # noqa: E402
from bench.core.syncs import HostSyncCounter, sync_free  # noqa: E402
from bench.runs.registry import load_pruners  # noqa: E402

ALLOCATIONS = {"v1": "v1", "global": {"policy": "global", "floor": 0.1}, "uniform": "uniform"}


def measure(pruner: str, pattern: str, allocation: str, steps: int, host: bool = False) -> dict | None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    prune_steps = 2 * steps // 3
    sparsity = None if pattern.startswith("nm:") else 0.8
    try:
        pruning = bench.prune(
            model,
            pruner=pruner,
            pattern=pattern,
            sparsity=sparsity,
            steps=prune_steps,
            example_input=x[:4],
            allocation=ALLOCATIONS[allocation],
        )
    except ConfigError as err:  # a pattern the pruner does not support, a control refused in a user loop
        return {"skipped": str(err)}
    optimizer = torch.optim.SGD([{"params": model.parameters()}, *pruning.param_groups()], lr=0.01, momentum=0.9)
    per_step = []
    with contextlib.nullcontext() if host else sync_free():
        for _ in range(steps):
            per_step.append(one_step(pruning, model, optimizer, x, y))
    return _summary(per_step, prune_steps)


def one_step(pruning, model, optimizer, x, y) -> dict[str, int]:
    """One step of a user's loop, counted whole (the forward, the backward through the pruner's own
    autograd functions and the optimizer step included); the host syncs, by op."""
    with HostSyncCounter() as syncs:
        pruning.step()
        loss = torch.nn.functional.cross_entropy(model(x), y) + pruning.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruning.after_optimizer_step(optimizer)
    return dict(syncs.by_op)


def _summary(per_step: list[dict[str, int]], prune_steps: int) -> dict:
    steady = per_step[prune_steps // 2 : prune_steps]
    total = lambda ops: sum(ops.values())  # noqa: E731
    ops: dict[str, int] = {}
    for step in steady:
        for op, n in step.items():
            ops[op] = ops.get(op, 0) + n
    return {
        "steady_per_step": round(sum(total(s) for s in steady) / max(1, len(steady)), 2),
        "pruning_total": sum(total(s) for s in per_step[:prune_steps]),
        "finetune_total": sum(total(s) for s in per_step[prune_steps:]),
        "steady_ops": ops,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pruners", default=None, help="default: every registered pruner")
    parser.add_argument("--patterns", default="block:1x8,channel,unstructured,nm:2:4")
    parser.add_argument("--allocations", default="v1,global,uniform")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--host-paths",
        action="store_true",
        help="count the CPU's host-read paths (bit for bit the committed rows) instead of the accelerator's",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pruners = args.pruners.split(",") if args.pruners else sorted(load_pruners())
    results = []
    print(f"{'pruner':12} {'pattern':13} {'allocation':10} {'steady/step':>11} {'pruning':>8} {'finetune':>8}  ops")
    for pruner in pruners:
        for pattern in args.patterns.split(","):
            for allocation in args.allocations.split(","):
                if pattern.startswith("nm:") and allocation != "v1":
                    continue  # N:M: every row keeps N of M whatever the allocation
                got = measure(pruner, pattern, allocation, args.steps, host=args.host_paths)
                results.append({"pruner": pruner, "pattern": pattern, "allocation": allocation, **got})
                if "skipped" in got:
                    continue
                ops = ", ".join(f"{k} {v}" for k, v in sorted(got["steady_ops"].items()))
                print(
                    f"{pruner:12} {pattern:13} {allocation:10} {got['steady_per_step']:>11} "
                    f"{got['pruning_total']:>8} {got['finetune_total']:>8}  {ops}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
