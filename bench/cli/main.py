"""``smartbench`` command line. Every command module adds its own sub-parser."""

from __future__ import annotations

import argparse
import json
import sys

from bench.cli.args import add_device_arguments
from bench.core.errors import ConfigError, SmartbenchError
from bench.core.process import prepare_process


def parse_options(items: list[str], field: str = "--opt") -> dict[str, str]:
    options = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(field, f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def cmd_list(args) -> int:
    from bench.core.sparsity import PATTERN_HELP
    from bench.runs.registry import load_pruners
    from bench.tasks.registry import load_tasks

    print("pruners:")
    for name, cls in sorted(load_pruners().items()):
        print(f"  {name:12s} patterns: {', '.join(cls.patterns)}")
    print(f"patterns: {PATTERN_HELP}")
    print("tasks:")
    for name, cls in sorted(load_tasks().items()):
        print(f"  {name:18s} [{cls.family}] {cls.description}")
    try:
        from bench.suites.suite import list_suites

        print("suites: " + ", ".join(list_suites()))
    except ImportError:
        pass
    return 0


def allocation_of(args) -> dict | None:
    """``--allocation``/``--keep-floor``/``--budget`` as a RunSpec allocation. Without
    ``--allocation`` the protocol's rule (bench.core.select.protocol_allocation): one global
    ranking with the keep floor min(10 %, half the kept fraction), or ``--keep-floor``'s;
    ``--allocation v1``: no rule (each pruner's own scope, as the v1 runs)."""
    from bench.core.select import protocol_allocation

    if args.allocation == "v1":
        if args.keep_floor or args.budget != "params" or args.ranking != "raw":
            raise ConfigError(
                "--allocation", "v1 (each pruner's own scope) takes no --keep-floor, --budget flops or --ranking"
            )
        return None
    sparsity = args.sparsity
    if sparsity is None:  # N:M: its own sparsity (1 - N/M); the floor does not bind it
        from bench.core.sparsity import parse_pattern

        sparsity = parse_pattern(args.pattern).fixed_sparsity
    if args.allocation is not None and args.allocation.startswith("from:"):
        if args.keep_floor or args.budget != "params" or args.ranking != "raw":
            raise ConfigError(
                "--allocation", "from:RUN_ID takes the source run's counts: no --keep-floor, --budget or --ranking"
            )
        return {"policy": "from", "source": args.allocation.removeprefix("from:")}
    if args.allocation is not None and args.allocation not in ("uniform", "global"):
        raise ConfigError("--allocation", f"{args.allocation!r} is not one of uniform, global, from:RUN_ID, v1")
    if args.allocation is None:  # the default: the benchmark's rule, its floor unless --keep-floor
        rule = protocol_allocation("protocol", sparsity) | ({"floor": args.keep_floor} if args.keep_floor else {})
    else:
        rule = {"policy": args.allocation, "floor": args.keep_floor}
    if args.ranking != "raw":
        if rule["policy"] != "global":
            raise ConfigError("--ranking", f"only a global allocation ranks across layers, not {rule['policy']!r}")
        rule["ranking"] = args.ranking
    return rule | ({"budget": args.budget} if args.budget != "params" else {})


def cmd_run(args) -> int:
    from bench.core.paths import RunPaths
    from bench.runs.run import RunSpec, execute, resolve

    budget = {
        k: v
        for k, v in (
            ("prune_epochs", args.prune_epochs),
            ("finetune_epochs", args.finetune_epochs),
            ("finetune_schedule", args.finetune_schedule),
            ("finetune_lr", args.finetune_lr),
        )
        if v is not None
    }
    spec = RunSpec(
        task=args.task,
        pruner=args.pruner,
        pattern=args.pattern,
        sparsity=args.sparsity,
        seed=args.seed,
        model=args.model,
        pruner_options=parse_options(args.opt),
        budget=budget,
        data=args.data,
        dense_checkpoint=args.dense_checkpoint,
        allocation=allocation_of(args),
        device=args.device,
        amp=args.amp,
        compile=args.compile,
    )
    run = resolve(spec)
    if run.dense_layers:  # the coverage rule: say which layers stay dense before training
        print(
            f"note: {len(run.dense_layers)} prunable layer(s) left dense ({spec.pattern} cannot cover them; "
            f"audit.dense_layers has the reasons): {', '.join(list(run.dense_layers)[:6])}"
            + (" ..." if len(run.dense_layers) > 6 else ""),
            file=sys.stderr,
        )
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    row = execute(run, log=log, wandb_project=args.wandb_project, paths=RunPaths.from_env())
    if args.json:
        print(json.dumps(row, sort_keys=True))
    else:
        print(
            f"run {row['run_id']}: {row['task']} {row['pruner']} {row['pattern']} target {row['target_sparsity']:g} "
            f"achieved {row['achieved_sparsity']:.4f} {row['metric_name']} {row['metric']:.2f} "
            f"(dense {row['dense_metric']:.2f}) in {row['wall_s']:.1f}s"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartbench", description="Benchmark suite for training-time pruning.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered pruners, patterns, tasks, suites").set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="one pruning run; prints a result row")
    run.add_argument("--task", required=True)
    run.add_argument("--pruner", required=True)
    run.add_argument("--pattern", required=True, help="unstructured | channel | block:RxC | nm:N:M")
    run.add_argument("--sparsity", type=float, default=None, help="target in (0,1); implied by nm:N:M")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--model", default=None, help="timm:NAME to swap the architecture of a classification task")
    run.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="pruner config override")
    run.add_argument("--data", default=None, metavar="PATH", help="dataset folder, for tasks that read one by path")
    run.add_argument(
        "--dense-checkpoint",
        default=None,
        metavar="PATH",
        help="start from this dense state_dict (or timm checkpoint) instead of training one; its hash enters the run id",
    )
    add_device_arguments(run)
    run.add_argument(
        "--allocation",
        default=None,
        metavar="uniform|global|from:RUN_ID|v1",
        help="the allocation rule: uniform per layer, or one global ranking (of the scores chosen by --ranking), "
        "or from:RUN_ID, the transplant control (magnitude or random keeping that run's per-layer unit counts), "
        "or v1 (each pruner's own scope, no floor); default: the protocol's, global with the keep floor "
        "min(10%%, half the kept fraction); part of the run id",
    )
    run.add_argument(
        "--ranking",
        choices=("raw", "mixed"),
        default="raw",
        help="what a global allocation ranks: raw, every pruner's scores as it defines them (the protocol's), or "
        "mixed, leaderboard v2's rule (weight-norm scores standardised per layer, learned ones raw); part of the run id",
    )
    run.add_argument(
        "--keep-floor", type=float, default=0.0, help="with --allocation: every layer keeps >= this fraction"
    )
    run.add_argument(
        "--budget",
        choices=("params", "flops"),
        default="params",
        help="what --sparsity removes: params (units of the covered layers; default) or flops (their forward "
        "FLOPs at the task's input size, kept to within one unit; without --allocation: global with the "
        "protocol's floor min(10%%, half the kept fraction)); part of the run id",
    )
    run.add_argument("--prune-epochs", type=int, default=None)
    run.add_argument("--finetune-epochs", type=int, default=None)
    run.add_argument(
        "--finetune-schedule",
        default=None,
        help="shared (one cosine over pruning + fine-tuning; default) | restart (a fresh cosine for fine-tuning)"
        " | hold (fine-tuning: constant, then a cosine over its second half)",
    )
    run.add_argument(
        "--finetune-lr", type=float, default=None, help="with --finetune-schedule restart|hold: its peak lr"
    )
    run.add_argument("--wandb-project", default=None)
    run.add_argument("--json", action="store_true", help="emit the row as one JSON object on stdout")
    run.set_defaults(func=cmd_run)

    for module in ("bench.cli.suite_cli", "bench.cli.speed_cli", "bench.cli.scaffold"):
        try:
            __import__(module, fromlist=["add_parser"]).add_parser(sub)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prepare_process()
    try:
        return args.func(args)
    except SmartbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
