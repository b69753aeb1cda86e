"""Latency of real 2:4 sparse inference vs dense for ViTs (trains nothing; needs a CUDA GPU).

For each model: build it (random init), mask every Linear in the transformer blocks to 2:4 by
magnitude, convert those weights with torch.sparse.to_sparse_semi_structured (fp16), check the
sparse output against the masked dense fp16 output, and time both (median of --repeats after
--warmup, CUDA events) for several batch sizes; then the same for each distinct Linear shape
alone (rows = batch x tokens). Prints tables; --out writes the rows as JSON.

    python scripts/bench_24.py                                  # fmnist-vit, deit_small, vit_base
    python scripts/bench_24.py --models fmnist-vit --batch-sizes 64 256

Models: a registered task name (fmnist-vit, fmnist-vit-tiny) or a timm ViT/DeiT name (224x224).
Without CUDA it says so, exits with status 2 and records nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.core.errors import SmartbenchError
from bench.deploy.sparse24 import (
    PATTERN_24,
    compare,
    compare_linear,
    covered_linears,
    linear_shapes,
    make_pair,
    require_cuda,
)

DEFAULT_MODELS = ["fmnist-vit", "deit_small_patch16_224", "vit_base_patch16_224"]
FP16_TOLERANCE = 1e-2  # max |sparse - dense| / max |dense|


def build(name: str):
    """(model, input shape without batch, tokens per image) for a task name or a timm name."""
    from bench.tasks.registry import load_tasks

    tasks = load_tasks()
    if name in tasks:
        task = tasks[name]()
        model = task.build_model()
        shape = tuple(task.example_input().shape[1:])
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        shape = (3, 224, 224)
    tokens = model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 0)
    return model, shape, tokens


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64, 256])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--no-linear", action="store_true", help="skip the per-Linear-shape table")
    parser.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    parser.add_argument(
        "--backend",
        choices=("auto", "cusparselt", "cutlass"),
        default="auto",
        help="torch's 2:4 kernels: auto (cuSPARSELt when present, else CUTLASS) or one of them",
    )
    args = parser.parse_args(argv)
    try:
        device = require_cuda()
    except SmartbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    from torch.sparse import SparseSemiStructuredTensor

    if args.backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        print("error: --backend cusparselt: this torch build has no cuSPARSELt", file=sys.stderr)
        return 2
    SparseSemiStructuredTensor._FORCE_CUTLASS = args.backend == "cutlass"
    cusparselt = args.backend == "cusparselt" or (args.backend == "auto" and torch.backends.cusparselt.is_available())
    backend = "cuSPARSELt" if cusparselt else "CUTLASS"
    header = (
        f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}, {backend}, fp16, "
        f"pattern {PATTERN_24}, median of {args.repeats} after {args.warmup} warm-up"
    )
    print(header)
    model_rows, linear_rows, failed = [], [], False
    for name in args.models:
        model, shape, tokens = build(name)
        names = covered_linears(model)
        pair = make_pair(model, names, device)
        for layer, reason in pair.skipped.items():
            print(f"{name}: {layer} kept dense ({reason})")
        for batch in args.batch_sizes:
            x = torch.randn(batch, *shape, device=device, dtype=torch.float16)
            row = {
                "model": name,
                "converted": f"{len(names) - len(pair.skipped)}/{len(names)}",
                **compare(pair, x, args.warmup, args.repeats),
            }
            row["agrees"] = row["rel_err"] <= FP16_TOLERANCE
            failed |= not row["agrees"]
            model_rows.append(row)
        if not args.no_linear:
            for out_features, in_features in linear_shapes(pair.dense, names):
                for batch in args.batch_sizes:
                    row = compare_linear(out_features, in_features, batch * tokens, device, args.warmup, args.repeats)
                    linear_rows.append({"model": name, **row})
        del pair, model
        torch.cuda.empty_cache()
    print("\nwhole model (sparse/dense < 1 means 2:4 is faster)")
    print(table(model_rows, ["model", "converted", "batch", "dense_ms", "sparse_ms", "ratio", "rel_err", "agrees"]))
    if linear_rows:
        print("\nsingle Linear (rows = batch x tokens)")
        print(table(linear_rows, ["model", "shape", "rows", "dense_ms", "sparse_ms", "ratio", "rel_err", "skipped"]))
    if args.out:
        args.out.write_text(json.dumps({"header": header, "models": model_rows, "linears": linear_rows}, indent=1))
    if failed:
        print(
            f"error: sparse output differs from masked dense by more than {FP16_TOLERANCE} (relative)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
