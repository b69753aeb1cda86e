"""Architecture compatibility sweep: timm families x patterns -> docs/compatibility.md.

    PYTHONPATH=. python scripts/compat_sweep.py [--out docs/compatibility.md] [--models a,b] [--quick]

Every cell is one model of a timm family built by the ``fmnist-tiny`` task (``--model timm:NAME``:
1x28x28 input, 10 classes, random init; ViT/DeiT/Swin by ``fmnist-vit-tiny``, which builds them at
28x28 with 7x7 patches and prunes the Linears of their blocks) under one pattern at 50% (N:M: its own):

1. ``bench.runs.run.resolve`` -- the checks a real run does before training (the model takes the
   task's input, the pattern covers at least one layer, the allocation floor fits). A refusal is
   a cell outcome ("refused"), with its one-line reason;
2. otherwise the pruner is attached through ``bench.prune`` (the same stage driver as the suites)
   and trained for ``--steps`` SGD steps on random batches, then finalized: the cell checks that
   the kept units equal ``bench.core.select.expected_kept`` over the covered layers (exact
   sparsity), that every mask obeys the pattern, and, for ``channel``, that the physically shrunk
   model (Torch-Pruning) gives the masked model's outputs.

Outcomes: ``ok`` (exact, valid, shrink agrees where measured), ``ok, no shrink`` (the run is
fine, but physical channel removal does not support this architecture: a run records
``shrink_error`` instead of the shrunk figures), ``refused`` (before training, with the reason),
``FAIL`` (anything else: a crash, a broken invariant, a shrunk model that differs).
A test marked slow runs a subset (tests/test_compat.py).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (family, timm model): plain and bottleneck ResNets, grouped (ResNeXt, RegNet), depthwise + SE
# (MobileNetV2/V3, EfficientNet), LayerNorm + large stride (ConvNeXt), RepVGG, GhostNet,
# EfficientViT, DenseNet-style concat, ViT/DeiT and Swin (fixed 224 input)
MODELS = [
    ("ResNet (basic)", "resnet18"),
    ("ResNet (bottleneck)", "resnet50"),
    ("ResNet-D tiered stem", "resnet10t"),
    ("ResNeXt (grouped)", "resnext26ts"),
    ("RegNetY (grouped + SE)", "regnety_002"),
    ("MobileNetV2 (depthwise)", "mobilenetv2_050"),
    ("MobileNetV3 (depthwise + SE)", "mobilenetv3_small_050"),
    ("EfficientNet (depthwise + SE)", "efficientnet_b0"),
    ("ConvNeXt (LayerNorm, /32)", "convnext_atto"),
    ("RepVGG", "repvgg_a0"),
    ("GhostNet", "ghostnet_050"),
    ("EfficientViT (MIT)", "efficientvit_b0"),
    ("DenseNet (concat)", "densenet121"),
    ("ViT", "vit_tiny_patch16_224"),
    ("DeiT", "deit_tiny_patch16_224"),
    ("Swin", "swin_tiny_patch4_window7_224"),
]
PATTERNS = [("unstructured", 0.5), ("block:1x8", 0.5), ("channel", 0.5), ("nm:2:4", None)]
SMART_SUBSET = {"resnet18", "mobilenetv2_050", "regnety_002", "efficientvit_b0", "deit_tiny_patch16_224"}
VIT_MODELS = {"vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"}


def cell(model_name: str, pruner: str, pattern: str, sparsity, steps: int) -> dict:
    import bench
    from bench.core.errors import ConfigError
    from bench.core.select import expected_kept
    from bench.deploy.shrink import folded_copy, shrink_channels
    from bench.runs.run import RunSpec, resolve

    started = time.perf_counter()
    out = {"model": model_name, "pruner": pruner, "pattern": pattern}
    try:
        task_name = "fmnist-vit-tiny" if model_name.removeprefix("timm:") in VIT_MODELS else "fmnist-tiny"
        run = resolve(RunSpec(task=task_name, pruner=pruner, pattern=pattern, sparsity=sparsity, model=model_name))
    except ConfigError as err:
        return {**out, "outcome": "refused", "detail": str(err), "s": round(time.perf_counter() - started, 1)}
    try:
        torch.manual_seed(0)
        task = run.task
        model = task.build_model()
        gen = torch.Generator().manual_seed(0)
        batches = [
            (torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)
        ]
        pruning = bench.prune(
            model,
            pruner=pruner,
            pattern=pattern,
            sparsity=sparsity,
            steps=steps,
            example_input=batches[0][0],
            calibration=batches,
            include=task.include,
            keep_first_last=task.keep_first_last,
        )
        optimizer = torch.optim.SGD([{"params": model.parameters()}, *pruning.param_groups()], lr=0.01, momentum=0.9)
        for i in range(steps):
            x, y = batches[i % 2]
            pruning.step()
            loss = torch.nn.functional.cross_entropy(model(x), y) + pruning.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruning.after_optimizer_step(optimizer)
        audit = pruning.audit()
        counts = {row["layer"]: row["units"] for row in audit["layers"]}
        want = expected_kept(counts, pruning.pruner.pattern, pruning.pruner.sparsity, pruning.pruner.scope)
        problems = []
        if audit["kept_units"] != want:
            problems.append(f"kept {audit['kept_units']} units, expected {want}")
        if not audit["pattern_valid"]:
            problems.append("a mask breaks the pattern")
        out.update(
            covered=len(audit["layers"]),
            dense=len(audit.get("dense_layers", [])),
            dense_reasons=sorted({row["reason"].split(":")[0] for row in audit.get("dense_layers", [])}),
            achieved=round(audit["achieved_sparsity"], 4),
        )
        if pattern == "channel":
            hard = pruning.finalize()
            plain = folded_copy(model, pruning.masker, hard).eval()
            x = batches[0][0]
            try:
                with torch.no_grad():
                    reference = plain(x)
                shrink_channels(plain, hard, x, verify=False)  # in place
                with torch.no_grad():
                    diff = float((plain.eval()(x) - reference).abs().max())
                out["shrink"] = "agrees" if diff < 1e-3 else f"differs by {diff:.2g}"
                if diff >= 1e-3:
                    problems.append(f"shrunk model differs by {diff:.2g}")
            except Exception as err:  # noqa: BLE001 -- runs record it as shrink_error and go on
                out["shrink"] = f"unsupported: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:80]}"
        out.update(outcome="FAIL" if problems else "ok", detail="; ".join(problems))
    except Exception as err:  # noqa: BLE001 -- a crash is the finding
        line = (str(err).strip().splitlines() or [""])[0][:160]
        out.update(outcome="FAIL", detail=f"{type(err).__name__}: {line}", trace=traceback.format_exc()[-1500:])
    out["s"] = round(time.perf_counter() - started, 1)
    return out


def render(rows: list[dict], command: str) -> str:
    lines = [
        "# Architecture compatibility",
        "",
        f"Generated by `{command}` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}) -- do not edit by hand.",
        "",
        "Each cell: a timm model built by the `fmnist-tiny` task (1x28x28, 10 classes, random init; ViT, DeiT and",
        "Swin by `fmnist-vit-tiny`: 28x28 with 7x7 patches, the Linears of their blocks; its default",
        "`vit_tiny_patch16_224` is the task's own 2-block, width-64 ViT), the pattern at 50%, magnitude (and",
        "SMART on a subset), `bench.prune` for a few SGD steps, then finalize.",
        "`ok` = exact sparsity over the covered layers, every mask valid, and for `channel` the physically",
        "shrunk model equals the masked one; `refused` = stopped before training with the reason shown;",
        "`FAIL` = a crash or a broken invariant; `no shrink` = the run is fine but physical channel removal",
        "does not support the architecture (listed below). `dense n` = layers the pattern cannot cover,",
        "left dense (docs/your-data.md).",
        "",
    ]
    patterns = [p for p, _ in PATTERNS]
    for pruner in ("magnitude", "smart"):
        subset = [r for r in rows if r["pruner"] == pruner]
        if not subset:
            continue
        lines += [
            f"## {pruner}",
            "",
            "| family | model | " + " | ".join(patterns) + " |",
            "|---|---|" + "---|" * len(patterns),
        ]
        families = dict((m, f) for f, m in MODELS)
        for model in dict.fromkeys(r["model"] for r in subset):
            cells = []
            for pattern in patterns:
                r = next((r for r in subset if r["model"] == model and r["pattern"] == pattern), None)
                if r is None:
                    cells.append("-")
                elif r["outcome"] == "ok":
                    extra = f", dense {r['dense']}" if r.get("dense") else ""
                    no_shrink = str(r.get("shrink", "")).startswith("unsupported")
                    cells.append(f"ok{', no shrink' if no_shrink else ''} ({r['covered']} layers{extra})")
                else:
                    cells.append(f"{r['outcome']}: {r['detail'][:90]}".replace("|", "/"))
            lines.append(
                f"| {families.get(model.removeprefix('timm:'), '')} | {model.removeprefix('timm:')} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    unsupported = [r for r in rows if str(r.get("shrink", "")).startswith("unsupported")]
    if unsupported:
        lines += [
            "Physical channel removal (Torch-Pruning) not supported -- the runs are fine, rows record",
            "`shrink_error`:",
            "",
        ]
        lines += [
            f"- {r['model'].removeprefix('timm:')} ({r['pruner']}): {r['shrink'].removeprefix('unsupported: ')}"
            for r in unsupported
        ]
        lines.append("")
    counts = {o: sum(r["outcome"] == o for r in rows) for o in ("ok", "refused", "FAIL")}
    lines += [f"Cells: {len(rows)}; ok {counts['ok']}, refused {counts['refused']}, FAIL {counts['FAIL']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="markdown table (default: print)")
    parser.add_argument("--models", default=None, help="comma-separated timm names (default: all families)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-smart", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    models = args.models.split(",") if args.models else [m for _, m in MODELS]
    rows = []
    for model in models:
        pruners = ["magnitude"] + (["smart"] if model in SMART_SUBSET and not args.no_smart else [])
        for pruner in pruners:
            for pattern, sparsity in PATTERNS:
                row = cell(f"timm:{model}", pruner, pattern, sparsity, args.steps)
                rows.append(row)
                print(
                    f"{model:30s} {pruner:9s} {pattern:12s} {row['outcome']:8s} {row['s']:6.1f}s {row.get('detail', '')[:100]}",
                    flush=True,
                )
    command = "PYTHONPATH=. python scripts/compat_sweep.py" + (f" --out {args.out}" if args.out else "")
    text = render(rows, command)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 1 if any(r["outcome"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
