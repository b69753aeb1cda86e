"""Kernel time of 2:4 semi-structured sparse matmuls against dense, on an NVIDIA GPU (issue 34 item 5).

    python scripts/bench_24.py                        # every shape below, fp16 and bf16, then the compiled ViT-B
    python scripts/bench_24.py --plan                 # the shapes, rows and flags only (no GPU needed)
    python scripts/bench_24.py --dtypes bf16 --skip-whole --out rows.json

What it times, and how (``bench.deploy.sparse24.kernel_timing``):

* **Linears** (``SHAPES`` x ``--dtypes``): one ``nn.Linear`` with random weights, masked to 2:4 by
  magnitude and converted with ``torch.sparse.to_sparse_semi_structured`` once, outside every
  timed region; cuSPARSELt's algorithm searched for that shape and those rows
  (``search_alg_``). Dense and sparse are each timed three ways:
  ``kernel_ms``, the device time of every kernel one call launches (``torch.profiler``, the
  subclass's transposes and copies included); ``graph_ms``, per replay of ``--replays`` replays
  of the call captured in a CUDA graph (no host work); ``eager_ms``, per call of ``--replays``
  back-to-back eager calls (the larger of dispatch and kernels). ``host_ms`` = eager - kernel is
  the dispatch the kernels do not hide. Ratios are sparse / dense (below 1: 2:4 is faster).
* **Whole ViT-B/16** at batch ``--whole-batch`` (256), 224x224: every block Linear 2:4, both
  models compiled with ``torch.compile(mode=--compile-mode)`` (max-autotune), timed per forward
  over ``--replays`` back-to-back calls, and checked against each other (max |d| / max |dense|).

Targets (H100): kernel ratio <= 0.85 on the ViT-B and ViT-L MLP Linears at >= 12k rows; whole
compiled ViT-B <= 0.97. A shape with fewer than ``SMALL_MACS`` multiply-adds per call is flagged
``small``: its kernels run for microseconds, so launch and setup costs decide (the Fashion-MNIST
ViT at batch <= 16 is one); it has no target.

Published anchors (speed-up over dense): PyTorch's semi-structured tutorial, A100, a 10240->3072
Linear at 3072 rows fp16, 1.38x (the ``tutorial`` row here); torchao, SAM ViT-h MLPs compiled
bf16, 1.10x; cuSPARSELt samples, H100, 8192^3, about 1.2x.

Without CUDA (and without ``--plan``) it says so, exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.core.errors import SmartbenchError  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SMALL_MACS = 2**30  # below about 1 GMAC a call, a kernel runs for microseconds: setup decides
LINEAR_TARGET = 0.85  # kernel-time ratio, ViT-B / ViT-L MLP Linears at >= 12k rows (H100)
WHOLE_TARGET = 0.97  # compiled ViT-B/16 at batch 256
TOLERANCE = 1e-2  # max |sparse - dense| / max |dense| (both in half precision)
TOKENS_VIT = 197  # 14 x 14 patches + the class token at 224x224


@dataclass(frozen=True)
class Shape:
    """One Linear: ``rows`` input rows (batch x tokens), ``in_features`` -> ``out_features``."""

    name: str
    out_features: int
    in_features: int
    rows: int
    target: float | None  # the kernel-ratio target, None where the issue sets none

    @property
    def macs(self) -> int:
        return self.rows * self.out_features * self.in_features

    @property
    def small(self) -> bool:
        return self.macs < SMALL_MACS


def shapes() -> list[Shape]:
    """ViT-B and ViT-L MLP Linears at batch 64 and 256 (12,608 and 50,432 rows), the tutorial's
    anchor, and the Fashion-MNIST ViT's MLP at batch 16 (too small to gain)."""
    out = []
    for batch in (64, 256):
        rows = batch * TOKENS_VIT
        for model, width in (("vit_b", 768), ("vit_l", 1024)):
            out.append(Shape(f"{model}.fc1 b{batch}", 4 * width, width, rows, LINEAR_TARGET))
            out.append(Shape(f"{model}.fc2 b{batch}", width, 4 * width, rows, LINEAR_TARGET))
    out.append(Shape("tutorial 10240->3072", 3072, 10240, 3072, None))
    out.append(Shape("fmnist-vit.fc1 b16", 384, 96, 16 * 17, None))
    out.append(Shape("fmnist-vit.fc2 b16", 96, 384, 16 * 17, None))
    return out


def linear_row(shape: Shape, dtype: torch.dtype, replays: int, seed: int = 0) -> dict:
    """Dense and 2:4 timings of one Linear (module docstring)."""
    from torch import nn

    from bench.deploy.sparse24 import kernel_timing, make_pair, relative_error, search_alg_

    generator = torch.Generator(device="cpu").manual_seed(seed)
    layer = nn.Linear(shape.in_features, shape.out_features)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * shape.in_features**-0.5)
    device = torch.device("cuda")
    pair = make_pair(nn.Sequential(layer), ["0"], device, dtype)
    if pair.skipped:
        return {"skipped": pair.skipped["0"]}
    x = torch.randn(shape.rows, shape.in_features, generator=generator).to(device=device, dtype=dtype)
    alg = search_alg_(pair.sparse[0], x)
    with torch.no_grad():
        err = relative_error(pair.sparse(x), pair.dense(x))
    dense = kernel_timing(lambda: pair.dense(x), replays)
    sparse = kernel_timing(lambda: pair.sparse(x), replays)
    return {"alg": alg, "rel_err": err, "dense": dense, "sparse": sparse, **ratios(dense, sparse)}


def ratios(dense: dict, sparse: dict) -> dict:
    """sparse / dense per timing, and the host time the kernels do not hide (eager - kernel)."""
    out = {}
    for key in ("kernel_ms", "graph_ms", "eager_ms"):
        if dense.get(key) and sparse.get(key) is not None:
            out[key.replace("_ms", "_ratio")] = sparse[key] / dense[key]
    out["host_ms"] = {
        name: max(0.0, timing["eager_ms"] - timing["kernel_ms"])
        for name, timing in (("dense", dense), ("sparse", sparse))
    }
    return out


def whole_row(dtype: torch.dtype, batch: int, mode: str, replays: int) -> dict:
    """The compiled ViT-B/16 at ``batch``, dense against its 2:4 twin (module docstring)."""
    import timm

    from bench.deploy.sparse24 import (
        covered_linears,
        eager_ms,
        make_pair,
        profiled_kernel_ms,
        relative_error,
        search_alg_,
    )

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False)
    names = covered_linears(model)
    device = torch.device("cuda")
    pair = make_pair(model, names, device, dtype)
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    modules = dict(pair.sparse.named_modules())
    algs = {}
    for name in names:
        if name not in pair.skipped:
            rows = torch.empty(batch * TOKENS_VIT, modules[name].in_features, device=device, dtype=dtype).normal_()
            algs[name] = search_alg_(modules[name], rows)
    dense, sparse = torch.compile(pair.dense, mode=mode), torch.compile(pair.sparse, mode=mode)
    with torch.no_grad():
        err = relative_error(sparse(x), dense(x))
    row = {"converted": f"{len(names) - len(pair.skipped)}/{len(names)}", "rel_err": err, "algs": algs}
    row["dense"] = {"eager_ms": eager_ms(lambda: dense(x), replays), "kernel_ms": profiled_kernel_ms(lambda: dense(x))}
    row["sparse"] = {
        "eager_ms": eager_ms(lambda: sparse(x), replays),
        "kernel_ms": profiled_kernel_ms(lambda: sparse(x)),
    }
    row["ratio"] = row["sparse"]["eager_ms"] / row["dense"]["eager_ms"]
    row["kernel_ratio"] = row["sparse"]["kernel_ms"] / row["dense"]["kernel_ms"]
    return row


def verdict(ratio: float | None, target: float | None, small: bool = False) -> str:
    if small:
        return "small"
    if target is None or ratio is None:
        return "-"
    return "met" if ratio <= target else "MISSED"


def render(report: dict) -> str:
    """Markdown tables of a report (``main``'s JSON)."""

    def f(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [report["header"], "", "### Single Linears (ratio = sparse / dense; below 1: 2:4 is faster)", ""]
    lines += [
        "| shape | rows | GMAC | dtype | alg | dense kernel ms | 2:4 kernel ms | kernel ratio | graph ratio "
        "| eager ratio | 2:4 host ms | rel err | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["linears"]:
        shape = f"{row['name']} ({row['out_features']}x{row['in_features']})"
        lead = f"| {shape} | {row['rows']} | {row['macs'] / 1e9:.2f} | {row['dtype']} "
        if "error" in row or "skipped" in row:
            lines.append(lead + f"| failed: {row.get('error') or row.get('skipped')} |" + " |" * 8)
            continue
        alg = row.get("alg") or {}
        lines.append(
            lead + f"| {alg.get('alg_id', '-')} | {f(row['dense']['kernel_ms'])} | {f(row['sparse']['kernel_ms'])} "
            f"| {f(row.get('kernel_ratio'))} | {f(row.get('graph_ratio'))} | {f(row.get('eager_ratio'))} "
            f"| {f(row['host_ms']['sparse'])} | {row['rel_err']:.1e} "
            f"| {verdict(row.get('kernel_ratio'), row['target'], row['small'])} |"
        )
    if report.get("whole"):
        lines += ["", "### Whole ViT-B/16, compiled", ""]
        lines += [
            "| dtype | batch | converted | dense ms | 2:4 ms | ratio | kernel ratio | rel err | target |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in report["whole"]:
            if "error" in row:
                lines.append(f"| {row['dtype']} | {row['batch']} | failed: {row['error']} |" + " |" * 6)
                continue
            lines.append(
                f"| {row['dtype']} | {row['batch']} | {row['converted']} | {f(row['dense']['eager_ms'])} "
                f"| {f(row['sparse']['eager_ms'])} | {f(row['ratio'])} | {f(row['kernel_ratio'])} "
                f"| {row['rel_err']:.1e} | {verdict(row['ratio'], WHOLE_TARGET)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="fp16,bf16", help="comma-separated subset of fp16,bf16")
    parser.add_argument("--shapes", default=None, help="comma-separated substrings of shape names (default: all)")
    parser.add_argument("--replays", type=int, default=100, help="CUDA-graph replays and eager calls per timing")
    parser.add_argument("--skip-whole", action="store_true", help="no compiled whole ViT-B")
    parser.add_argument("--whole-batch", type=int, default=256)
    parser.add_argument("--whole-dtypes", default="bf16", help="dtypes of the compiled whole ViT-B")
    parser.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode of the whole ViT-B")
    parser.add_argument("--plan", action="store_true", help="print the shapes, rows and flags; time nothing")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    dtypes, whole_dtypes = args.dtypes.split(","), args.whole_dtypes.split(",")
    for field, given in (("--dtypes", dtypes), ("--whole-dtypes", whole_dtypes)):
        unknown = sorted(set(given) - set(DTYPES))
        if unknown:
            parser.error(f"{field}: unknown {', '.join(unknown)}; allowed: {', '.join(DTYPES)}")
    if args.replays < 100:
        parser.error(f"--replays: {args.replays}; at least 100 (the protocol's minimum)")
    plan = [s for s in shapes() if not args.shapes or any(p in s.name for p in args.shapes.split(","))]
    if args.plan:
        for shape in plan:
            flag = "small: no gain expected" if shape.small else f"target {shape.target}" if shape.target else ""
            print(
                f"{shape.name:24s} {shape.out_features:>6d}x{shape.in_features:<6d} rows {shape.rows:>6d} "
                f"{shape.macs / 1e9:8.2f} GMAC  {flag}"
            )
        return 0
    try:
        from bench.deploy.sparse24 import require_cuda

        device = require_cuda()
    except SmartbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not torch.backends.cusparselt.is_available():
        print("error: this torch build has no cuSPARSELt; nothing was measured", file=sys.stderr)
        return 2
    header = (
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, cuSPARSELt "
        f"{torch.backends.cusparselt.version()}; {args.replays} CUDA-graph replays and eager calls per timing, "
        "kernel time from torch.profiler; weights converted and algorithms searched before timing"
    )
    print(header, flush=True)
    report = {"header": header, "linears": [], "whole": []}
    for dtype_name in dtypes:
        for shape in plan:
            row = {**asdict(shape), "macs": shape.macs, "small": shape.small, "dtype": dtype_name}
            try:
                row.update(linear_row(shape, DTYPES[dtype_name], args.replays))
            except Exception:  # noqa: BLE001 -- one failing shape must not hide the others
                row["error"] = traceback.format_exc().strip().splitlines()[-1][:300]
            report["linears"].append(row)
            print(f"  {shape.name} {dtype_name}: kernel ratio {row.get('kernel_ratio', row.get('error'))}", flush=True)
            torch.cuda.empty_cache()
    if not args.skip_whole:
        for dtype_name in whole_dtypes:
            row = {"dtype": dtype_name, "batch": args.whole_batch}
            try:
                row.update(whole_row(DTYPES[dtype_name], args.whole_batch, args.compile_mode, args.replays))
            except Exception:  # noqa: BLE001
                row["error"] = traceback.format_exc().strip().splitlines()[-1][:300]
            report["whole"].append(row)
            print(
                f"  ViT-B/16 b{args.whole_batch} {dtype_name}: ratio {row.get('ratio', row.get('error'))}", flush=True
            )
            torch.cuda.empty_cache()
    print()
    print(render(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    bad = [r for r in report["linears"] + report["whole"] if r.get("rel_err", 0.0) > TOLERANCE]
    if bad:
        print(f"error: 2:4 output differs from masked dense by more than {TOLERANCE} (relative)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
