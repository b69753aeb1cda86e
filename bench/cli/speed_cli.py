"""``smartbench speed RUN_ID`` and ``smartbench export RUN_ID --out FILE``."""

from __future__ import annotations

import json
from pathlib import Path

from bench.core.errors import ConfigError


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError("--batch-sizes", f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError("--batch-sizes", f"expected integers >= 1, got {text!r}")
    return sizes


def cmd_speed(args) -> int:
    from bench.core.device import resolve_device
    from bench.core.paths import RunPaths
    from bench.deploy.speed import cost_figures, measure
    from bench.runs.export import find_row, load_saved, pruned_model
    from bench.runs.record import ResultStore

    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--threads/--repeats/--warmup", "need threads >= 1, repeats >= 1, warmup >= 0")
    device = str(resolve_device(args.device))
    paths = RunPaths.from_env()
    row = find_row(args.run_id, ResultStore(paths.store))
    saved = load_saved(args.run_id, paths)
    task, model = pruned_model(row, saved)
    example = task.example_input()
    result = measure(
        row,
        model,
        example,
        saved["hard_masks"],
        batch_sizes=_batch_sizes(args.batch_sizes),
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        device=device,
    )
    result["costs"] = cost_figures(model, None, saved["hard_masks"], example, row["pattern"])
    out = Path(args.out) if args.out else paths.speed(args.run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    fp = result["fingerprint"]
    print(
        f"run {args.run_id} {row['task']} {row['pruner']} {row['pattern']} | {fp['cpu']} | torch {fp['torch']} | "
        f"threads {result['protocol']['threads']} | load {fp['load_avg_1m']}"
    )
    for variant, by_batch in result["latency"].items():
        for bs, stats in by_batch.items():
            ratio = result["ratios"].get(variant, {}).get(bs)
            extra = (
                f"  x{ratio['ratio_of_medians']:.3f} of {ratio['reference']} (paired {ratio['paired_median']:.3f})"
                if ratio
                else ""
            )
            print(
                f"  {variant:19s} batch {bs:>4s}: median {stats['median_ms']:.3f} ms  IQR {stats['iqr_ms']:.3f} ms{extra}"
            )
    for variant, why in result["skipped"].items():
        print(f"  {variant:19s} skipped: {why}")
    folded = result["protocol"]["bn_folded"]
    print(f"  BatchNorm folded into the convs of: {', '.join(folded)}" if folded else "  BatchNorm not folded")
    print("  costs: " + ", ".join(f"{k} {v:,}" for k, v in result["costs"].items()))
    print(f"written {out}")
    return 0


def cmd_export(args) -> int:
    from bench.core.paths import RunPaths
    from bench.runs.export import export_run

    summary = export_run(args.run_id, args.out, paths=RunPaths.from_env())
    print(
        f"exported run {summary['run_id']} -> {summary['out']}: {summary['params']:,} parameters "
        f"(dense {summary['dense_params']:,}), {summary['shrunk_groups']} shrunk channel groups; "
        f"load with bench.runs.export.load_exported(path)"
    )
    return 0


def add_parser(subparsers) -> None:
    speed = subparsers.add_parser("speed", help="latency of a finished run's pruned model (masked-dense, shrunk, 2:4)")
    speed.add_argument("run_id")
    speed.add_argument("--batch-sizes", default="1,32,128")
    speed.add_argument("--threads", type=int, default=1)
    speed.add_argument("--warmup", type=int, default=5)
    speed.add_argument("--repeats", type=int, default=30)
    speed.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    speed.add_argument("--out", default=None, help="JSON file (default runs/speed/RUN_ID.json)")
    speed.add_argument("--json", action="store_true", help="print the result as one JSON object")
    speed.set_defaults(func=cmd_speed)

    export = subparsers.add_parser(
        "export", help="write a run's pruned model (shrunk for channel) with masks + metadata"
    )
    export.add_argument("run_id")
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_export)
