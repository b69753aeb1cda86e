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


def check_timing(args) -> None:
    """--threads/--repeats/--warmup of a latency measurement, before anything runs."""
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--threads/--repeats/--warmup", "need threads >= 1, repeats >= 1, warmup >= 0")


def cmd_speed(args) -> int:
    from bench.core.device import resolve_device
    from bench.core.paths import RunPaths
    from bench.deploy.speed import cost_figures, measure
    from bench.runs.export import find_row, load_saved, pruned_model
    from bench.runs.record import ResultStore

    check_timing(args)
    if args.runtime != "torch":
        return speed_runtime(args)
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
    print_latency(result)
    for variant, why in result["skipped"].items():
        print(f"  {variant:19s} skipped: {why}")
    folded = result["protocol"]["bn_folded"]
    print(f"  BatchNorm folded into the convs of: {', '.join(folded)}" if folded else "  BatchNorm not folded")
    print("  costs: " + ", ".join(f"{k} {v:,}" for k, v in result["costs"].items()))
    print(f"written {out}")
    return 0


def print_latency(result: dict) -> None:
    """One line per (variant, batch size): median, IQR and p90, and the ratio to its reference."""
    for variant, by_batch in result["latency"].items():
        for bs, stats in by_batch.items():
            ratio = result["ratios"].get(variant, {}).get(bs)
            extra = (
                f"  x{ratio['ratio_of_medians']:.3f} of {ratio['reference']} (paired {ratio['paired_median']:.3f})"
                if ratio
                else ""
            )
            print(
                f"  {variant:19s} batch {bs:>4s}: median {stats['median_ms']:.3f} ms  IQR {stats['iqr_ms']:.3f} ms  "
                f"p90 {stats['p90_ms']:.3f} ms{extra}"
            )


def speed_runtime(args) -> int:
    """``--runtime onnxruntime|openvino``: the run's dense-shaped and deployable ONNX exports timed
    in that runtime on the CPU (bench/deploy/ort_speed.py)."""
    from bench.core.paths import RunPaths
    from bench.deploy.ort_speed import check_runtime, measure_runtime, write_result

    check_runtime(args.runtime)
    if args.device not in ("auto", "cpu"):
        raise ConfigError("--device", f"--runtime {args.runtime} measures the CPU; got {args.device!r}")
    sizes = _batch_sizes(args.batch_sizes)
    paths = RunPaths.from_env()
    result = measure_runtime(args.run_id, args.runtime, sizes, args.threads, args.warmup, args.repeats, paths)
    out = write_result(result, args.run_id, args.out, paths)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    fp, rt = result["fingerprint"], result["runtime"]
    print(
        f"run {args.run_id} | {rt['name']} {rt['version']} {rt['provider']} | opset {rt['opset']} | {fp['cpu']} | "
        f"intra-op threads {rt['intra_op_threads']} | load {fp['load_avg_1m']}"
    )
    print_latency(result)
    flops = result["flops"]
    print(
        f"  FLOPs per sample: ort_dense {flops['ort_dense']:,}, ort_pruned {flops['ort_pruned']:,} (x{flops['ratio']:.3f})"
    )
    print(f"written {out}")
    return 0


def cmd_export(args) -> int:
    from bench.core.paths import RunPaths

    if args.format not in ("torch", "onnx"):
        raise ConfigError("--format", f"'{args.format}' is not one of torch, onnx")
    if args.format == "torch":
        from bench.runs.export import export_run

        summary = export_run(args.run_id, args.out, paths=RunPaths.from_env())
        if args.json:
            print(json.dumps(summary, sort_keys=True))
            return 0
        print(
            f"exported run {summary['run_id']} -> {summary['out']}: {summary['params']:,} parameters "
            f"(dense {summary['dense_params']:,}), {summary['shrunk_groups']} shrunk channel groups; "
            f"load with bench.runs.export.load_exported(path)"
        )
        return 0
    from bench.deploy.onnx_export import export_onnx

    summary = export_onnx(
        args.run_id,
        Path(args.out),
        paths=RunPaths.from_env(),
        variant=args.variant,
        opset=args.opset,
        verify=not args.no_verify,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    shapes = ", ".join(f"{v['name']} {v['shape']}" for v in summary["inputs"])
    print(
        f"exported run {summary['run_id']} ({summary['pattern']}, {summary['variant']}) -> {summary['path']}: "
        f"ONNX opset {summary['opset']}, input {shapes}, {summary['params']:,} parameters "
        f"(dense {summary['dense_params']:,}), onnx.checker passed"
    )
    if summary["sidecar"]:
        print(f"  sparsity sidecar: {summary['sidecar']}")
    if "max_abs_error" in summary:
        print(
            f"  ONNX Runtime (CPU) vs PyTorch on the {summary['split']} split: max abs error "
            f"{summary['max_abs_error']:.3g}, {summary['metric_name']} {summary['metric_ort']} vs "
            f"{summary['metric_torch']} (diff {summary['metric_diff']:+g})"
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
    speed.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnxruntime", "openvino"),
        help="torch: eager/frozen PyTorch variants (default) | onnxruntime, openvino: the run's ONNX exports in "
        "that runtime (CPU), dense-shaped vs deployable (docs/deploy.md)",
    )
    speed.set_defaults(func=cmd_speed)

    export = subparsers.add_parser(
        "export", help="write a run's pruned model (shrunk for channel) with masks + metadata, or as ONNX"
    )
    export.add_argument("run_id")
    export.add_argument("--out", required=True)
    export.add_argument(
        "--format", default="torch", help="torch (a .pt for load_exported; default) | onnx (docs/deploy.md)"
    )
    export.add_argument("--opset", type=int, default=17, help="onnx: the ONNX opset (default 17)")
    export.add_argument(
        "--variant",
        default="pruned",
        choices=("pruned", "masked"),
        help="onnx: pruned (channel runs physically shrunk; default) | masked (dense shapes, masks baked in)",
    )
    export.add_argument(
        "--no-verify", action="store_true", help="onnx: skip the ONNX Runtime comparison on the test split"
    )
    export.add_argument("--threads", type=int, default=None, help="onnx: ONNX Runtime threads of the comparison")
    export.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    export.set_defaults(func=cmd_export)
