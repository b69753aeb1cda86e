"""GPU check: does smartbench train on CUDA, and what does pruning cost there? -> one report.

    scripts/gpu_check.sh [OUT_DIR]          # wrapper: temp runs folder, W&B off, report in OUT_DIR
    python scripts/gpu_check.py --out-dir DIR [--skip-cpu] [--budget-min 8]

On a machine with CUDA (exits with status 2 and writes nothing without one), in order:

0. **Training steps at realistic sizes** (``train_steps``, ``scripts/gpu_steps.py``, issue 34): every
   pruner's step time / dense on ResNet-50 (224x224, batch 128, bf16, channels_last) and ViT-B/16,
   eager and compiled, with and without the allocation rule; host syncs, kernel launches and peak
   memory per step; the issue's targets marked. ``--steps-args`` passes its arguments (default
   ``--minutes 6``: no new configuration after 6 minutes).

1. **Cells.** The quick suite's classification and ViT blocks (``fmnist-tiny`` block:1x8 at 50% and
   90%, ``fmnist-vit-tiny`` nm:2:4; every pruner of the suite; seed 0) through the real suite
   runner, once with ``--device cuda`` and once with ``--device cpu``, each in its own runs folder
   (each trains its own dense models). Per cell: kept units == the exact target count (from the
   audit), pattern valid, and the CUDA - CPU test top-1 difference. The two devices do not give
   bit-identical numbers (different kernels, reduction orders and cuDNN algorithms); the check
   reports the differences and flags a cell whose |difference| exceeds ``--tolerance`` points.
2. **One det/seg cell** (the quick suite's ``scenes-seg-tiny`` channel 50%, SMART) on CUDA when the
   OpenMMLab stack imports on this machine; otherwise the report says it was skipped and why.
3. **Step time on CUDA** of every pruner against dense (``scripts/bench_overhead.step_times``:
   interleaved rounds, paired median ratio, CUDA-synchronised wall clock): fmnist-resnet at
   block:1x8 50%, channel 50%, unstructured 90%, and fmnist-vit at nm:2:4.
4. **2:4 semi-structured kernels** vs dense (``scripts/bench_24.py``: ViT-B/ViT-L MLP Linears at
   12k and 50k rows, fp16 and bf16, kernel time from the profiler, CUDA-graph replays, cuSPARSELt's
   algorithm searched per shape; the compiled whole ViT-B/16 at batch 256; not yet timed on a
   GPU, it compiles two ViT-Bs with max-autotune, so run it as its own call, ``scripts/gpu_check.sh docs --sections sparse24``.

Each section is timed; a failing section is recorded with its error and the others still run.
Writes ``gpu-check.md`` (the report) and ``gpu-check.json`` (every number) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # a checkout without installing; bench_overhead beside this file

NATIVE_TASKS = ("fmnist-tiny", "fmnist-vit-tiny")
SECTIONS = ("train_steps", "cells", "seg_cell", "step_times", "sparse24")
STEP_PATTERNS = [
    ("fmnist-resnet", "block:1x8", 0.5),
    ("fmnist-resnet", "channel", 0.5),
    ("fmnist-resnet", "unstructured", 0.9),
    ("fmnist-vit", "nm:2:4", None),
]


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def environment() -> dict:
    import timm

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "timm": timm.__version__,
        "gpu": torch.cuda.get_device_name(0) if cuda else "no GPU",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else 0,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }


# -- 1. cells on CUDA and on the CPU ------------------------------------------------------------
def native_quick_suite(device: str, pruners: list[str] | None = None):
    """The quick suite restricted to its native-loop blocks (and to ``pruners``), expanded for ``device``."""
    from bench.suites.suite import expand, load_suite

    suite = load_suite("quick")
    suite.blocks = [b for b in suite.blocks if set(b.tasks) <= set(NATIVE_TASKS)]
    suite = expand(suite, device=device)
    if pruners:
        suite.cells = [c for c in suite.cells if c.spec.pruner in pruners]
    return suite


def run_cells(device: str, runs: Path, workers: int, pruners: list[str] | None = None) -> tuple[list[dict], float]:
    from bench.core.paths import RunPaths
    from bench.runs.record import ResultStore
    from bench.suites.suite_run import run_suite

    suite = native_quick_suite(device, pruners)
    paths = RunPaths(runs)
    started = time.perf_counter()
    code = run_suite(suite, workers=workers, progress=False, paths=paths)
    wall = time.perf_counter() - started
    rows = {r["run_id"]: r for r in ResultStore(paths.store).rows()}
    log(f"{device}: {len(rows)}/{len(suite.cells)} cells in {wall:.0f} s (exit {code})")
    return [rows.get(c.run_id, {"run_id": c.run_id, "missing": True}) for c in suite.cells], wall


def exact_units(row: dict) -> bool:
    """Kept units over the audited layers == the exact count of bench.core.select for the target."""
    from bench.core.select import expected_kept
    from bench.core.sparsity import parse_pattern

    layers = row["audit"]["layers"]
    counts = {layer["layer"]: layer["units"] for layer in layers}
    kept = sum(layer["kept_units"] for layer in layers)
    scope = row["pruner_config"].get("scope", "global")
    return kept == expected_kept(counts, parse_pattern(row["pattern"]), row["target_sparsity"], scope)


def compare_cells(cuda_rows: list[dict], cpu_rows: list[dict], tolerance: float) -> list[dict]:
    cpu = {r["run_id"]: r for r in cpu_rows}
    out = []
    for row in cuda_rows:
        if row.get("missing"):
            out.append({"run_id": row["run_id"], "error": "no CUDA row (the cell failed; see its log)"})
            continue
        other = cpu.get(row["run_id"], {})
        item = {
            "run_id": row["run_id"],
            "task": row["task"],
            "pruner": row["pruner"],
            "pattern": row["pattern"],
            "sparsity": row["target_sparsity"],
            "device": row.get("device"),
            "achieved": row["achieved_sparsity"],
            "exact": exact_units(row),
            "pattern_valid": row["pattern_valid"],
            "cuda_metric": row["metric"],
            "cuda_dense": row["dense_metric"],
            "cuda_wall_s": row["wall_s"],
        }
        if other and not other.get("missing"):
            item.update(cpu_metric=other["metric"], cpu_dense=other["dense_metric"], cpu_wall_s=other["wall_s"])
            item["diff"] = round(row["metric"] - other["metric"], 2)
            item["close"] = abs(item["diff"]) <= tolerance
        out.append(item)
    return out


# -- 2. one det/seg cell ----------------------------------------------------------------------
def seg_cell(runs: Path, device: str) -> dict:
    try:
        import mmcv.ops  # noqa: F401
        import mmseg  # noqa: F401
    except Exception as err:  # noqa: BLE001 -- any import failure means: not runnable here
        return {"skipped": f"the OpenMMLab stack does not import here ({type(err).__name__}: {err})"}
    from bench.core.paths import RunPaths
    from bench.runs.run import RunSpec, execute, resolve

    spec = RunSpec(
        task="scenes-seg-tiny",
        pruner="smart",
        pattern="channel",
        sparsity=0.5,
        budget={"prune_epochs": 1, "finetune_epochs": 0},
        device=device,
    )
    started = time.perf_counter()
    row = execute(resolve(spec), log=log, paths=RunPaths(runs), wandb=False)
    keys = ("run_id", "device", "metric", "dense_metric", "achieved_sparsity", "pattern_valid", "wall_s")
    return {**{k: row[k] for k in keys}, "exact": exact_units(row), "total_s": round(time.perf_counter() - started, 1)}


# -- 3. step times ----------------------------------------------------------------------------
def step_ratios(rounds: int, steps: int, device: str, pruners: list[str] | None) -> list[dict]:
    import bench_overhead

    cfg = {"rounds": rounds, "steps": steps, "only": pruners}
    rows = []
    for task, pattern, sparsity in STEP_PATTERNS:
        for row in bench_overhead.step_times(task, pattern, sparsity, cfg, device=device):
            rows.append({"task": task, "pattern": pattern, "sparsity": sparsity, **row})
        log(f"step times {task} {pattern} done")
    return rows


# -- 0. realistic training steps (issue 34) ---------------------------------------------------
def train_steps(args: argparse.Namespace) -> dict:
    """``scripts/gpu_steps.py`` at realistic sizes (its own arguments: ``--steps-args``)."""
    import gpu_steps

    argv = ["--device", args.device, *args.steps_args.split()]
    argv += ["--pruners", ",".join(p for p in (args.pruners or "").split(",") if p)] if args.pruners else []
    return {"argv": argv, "rows": gpu_steps.run(argv)}


# -- 4. 2:4 latency ---------------------------------------------------------------------------
def last_error_line(text: str) -> str:
    """The exception line of a traceback (the last non-empty line)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def sparse24(runs: Path) -> dict:
    """bench_24.py: kernel time of 2:4 Linears and of the compiled ViT-B against dense (cuSPARSELt;
    torch's CUTLASS 2:4 kernels run on compute capability 8.x only)."""
    runs.mkdir(parents=True, exist_ok=True)
    target = runs / "sparse24.json"
    cmd = [sys.executable, str(HERE / "bench_24.py"), "--out", str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=540)
    if not target.is_file():
        raise RuntimeError(f"bench_24.py exited {done.returncode}: {last_error_line(done.stderr or done.stdout)}")
    report = json.loads(target.read_text())
    return {"report": report, "returncode": done.returncode}


# -- report -----------------------------------------------------------------------------------
def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(report: dict) -> str:
    env = report["environment"]
    dev = "CUDA" if report["device"].startswith("cuda") else report["device"].upper()  # CPU: a dry run
    lines = [
        "# GPU check",
        "",
        f"Written by `scripts/gpu_check.sh` ({report['finished_at']}).",
        f"{env['gpu']} ({env['gpu_memory_gib']} GiB), torch {env['torch']} (CUDA {env['cuda']}, cuDNN "
        f"{env['cudnn']}), timm {env['timm']}, Python {env['python']}, {env['cpu_count']} CPU cores. "
        f"Total wall time {report['wall_s']:.0f} s. Sections: "
        + ", ".join(
            f"{name} {section['wall_s']:.0f} s (commit {section.get('commit', report['commit'])})"
            for name, section in report["sections"].items()
        )
        + ".",
        "",
    ]
    for name, section in report["sections"].items():
        if "error" in section:
            lines += [
                f"**{name}: failed** after {section.get('wall_s', 0):.0f} s:",
                "",
                "```",
                section["error"],
                "```",
                "",
            ]
    cells = report["sections"].get("cells", {})
    if "rows" in cells:
        rows = cells["rows"]
        ok = [r for r in rows if "error" not in r]
        diffs = [abs(r["diff"]) for r in ok if "diff" in r]
        lines += [
            f"## 1. Quick-suite cells on {dev} vs CPU",
            "",
            f"{len(ok)}/{len(rows)} cells ran on {dev} ({cells['cuda_wall_s']:.0f} s, {cells['cuda_workers']} worker(s)); "
            f"CPU: {cells.get('cpu_wall_s', 0):.0f} s ({cells.get('cpu_workers', '-')} workers). "
            f"Exact sparsity on {sum(r['exact'] for r in ok)}/{len(ok)}, pattern valid on "
            f"{sum(r['pattern_valid'] for r in ok)}/{len(ok)}."
            + (
                f" |{dev} - CPU| test top-1: median {statistics.median(diffs):.2f}, max {max(diffs):.2f} points; "
                f"{sum(r['close'] for r in ok if 'close' in r)}/{len(diffs)} within {report['tolerance']:g}."
                if diffs
                else " No CPU rows to compare."
            ),
            "",
            f"| task | pruner | pattern | target | achieved | exact | {dev} top-1 | CPU top-1 | diff | {dev} dense | "
            f"CPU dense | {dev} s | CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['run_id']} | {r['error']} |" + " |" * 11)
                continue
            lines.append(
                f"| {r['task']} | {r['pruner']} | {r['pattern']} | {r['sparsity']:g} | {r['achieved']:.4f} | "
                f"{fmt(r['exact'])} | {fmt(r['cuda_metric'])} | {fmt(r.get('cpu_metric'))} | {fmt(r.get('diff'))} | "
                f"{fmt(r['cuda_dense'])} | {fmt(r.get('cpu_dense'))} | {fmt(r['cuda_wall_s'], 1)} | "
                f"{fmt(r.get('cpu_wall_s'), 1)} |"
            )
        lines.append("")
    seg = report["sections"].get("seg_cell", {})
    lines += [f"## 2. One segmentation cell on {dev}", ""]
    if "skipped" in seg:
        lines += [f"Skipped: {seg['skipped']}", ""]
    elif "metric" in seg:
        lines += [
            f"scenes-seg-tiny, SMART, channel 50%, 1 pruning epoch: mIoU {seg['metric']:.2f} (dense "
            f"{seg['dense_metric']:.2f}), achieved sparsity {seg['achieved_sparsity']:.4f}, exact "
            f"{fmt(seg['exact'])}, pattern valid {fmt(seg['pattern_valid'])}; {seg['total_s']:.0f} s with the "
            f"dense model ({seg['device']}).",
            "",
        ]
    train = report["sections"].get("train_steps", {})
    if "rows" in train:
        import gpu_steps

        lines += [
            f"## 0. Training steps at realistic sizes on {dev} (`scripts/gpu_steps.py {' '.join(train['argv'])}`)",
            "",
            "A user's loop through `bench.prune`, synthetic data on the device, SGD, bf16 autocast and "
            "channels_last on CUDA. Per entry: step time / dense of the same interleaved round (median, p90), "
            "the issue-34 target, the steps of a per-step-synchronised pass slower than 1.5x its median "
            "(mask updates) with their time / dense, host syncs per step (`torch.cuda.set_sync_debug_mode`), "
            "CUDA kernels per step (profiler; on the CPU: operators) and peak memory.",
            "",
            *gpu_steps.render(train["rows"]),
        ]
    steps = report["sections"].get("step_times", {})
    if "rows" in steps:
        lines += [
            f"## 3. Training-step time on {dev}, pruner / dense",
            "",
            f"Paired median over {steps['rounds']} interleaved rounds of {steps['steps']} steps (batch 128 "
            "synthetic; CUDA-synchronised wall clock). `masked` = a fixed hard mask through the "
            "parametrization, no pruner: the floor of any masked training.",
            "",
        ]
        by = {}
        for r in steps["rows"]:
            by.setdefault(r["entry"], {})[f"{r['task']} {r['pattern']}"] = r
        columns = [f"{t} {p}" for t, p, _ in STEP_PATTERNS]
        lines += ["| entry | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for entry, cells_ in by.items():
            values = []
            for c in columns:
                r = cells_.get(c)
                if r is None:
                    values.append("-")
                elif "error" in r:
                    values.append("error: " + r["error"][:40])
                else:
                    values.append(f"{r['ratio_paired']:.2f} ({r['median_ms']:.1f} ms)")
            lines.append(f"| {entry} | " + " | ".join(values) + " |")
        lines.append("")
    s24 = report["sections"].get("sparse24", {})
    if "report" in s24:
        spec = importlib.util.spec_from_file_location("bench_24", HERE / "bench_24.py")
        bench_24 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench_24)
        lines += ["## 4. 2:4 semi-structured kernels vs dense (`scripts/bench_24.py`)", ""]
        lines += [bench_24.render(s24["report"]).rstrip(), ""]
    elif "printed" in s24:  # a report from before the kernel-time protocol (issue 34 item 5)
        lines += [
            "## 4. 2:4 semi-structured latency vs dense fp16 (old protocol: one eager call at a time, "
            "host dispatch included; superseded by the kernel-time protocol of `scripts/bench_24.py`)",
            "",
            "```",
        ]
        lines += [s24["printed"].rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def timed(report: dict, name: str, fn, *args) -> None:
    started = time.perf_counter()
    log(f"section {name} ...")
    try:
        section = fn(*args)
    except Exception:  # noqa: BLE001 -- one failing section must not hide the others
        section = {"error": traceback.format_exc()[-3000:]}
    section["wall_s"] = round(time.perf_counter() - started, 1)
    section["commit"] = report["commit"]
    report["sections"][name] = section
    log(f"section {name}: {section['wall_s']} s{' (failed)' if 'error' in section else ''}")


def rerender(out_dir: Path) -> None:
    """Write gpu-check.md again from gpu-check.json (after a change of this file's report layout)."""
    report = json.loads((out_dir / "gpu-check.json").read_text())
    (out_dir / "gpu-check.md").write_text(render(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=None, help="runs folder (default: a temporary one, deleted)")
    parser.add_argument("--skip-cpu", action="store_true", help="no CPU reference runs")
    parser.add_argument("--tolerance", type=float, default=3.0, help="|CUDA - CPU| top-1 points called close")
    parser.add_argument("--cuda-workers", type=int, default=4)
    parser.add_argument("--cpu-workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--commit", default=os.environ.get("SMARTBENCH_COMMIT", "unknown"))
    parser.add_argument("--pruners", default=None, help="comma-separated subset of pruners (default: all)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)}; sections already in OUT_DIR/gpu-check.json are kept",
    )
    parser.add_argument(
        "--device", default="cuda", help="cuda (the check); cpu only to try this script on a machine without a GPU"
    )
    parser.add_argument(
        "--steps-args",
        default="--minutes 6",
        help="arguments of the train_steps section (scripts/gpu_steps.py), e.g. '--small --models resnet50'",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device visible; the GPU check needs one", file=sys.stderr)
        return 2
    pruners = args.pruners.split(",") if args.pruners else None
    sections = [name.strip() for name in args.sections.split(",")]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    os.environ["WANDB_MODE"] = "disabled"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_runs_") as scratch:
        return check(args, sections, pruners, args.runs or Path(scratch))


def check(args: argparse.Namespace, sections: list[str], pruners: list[str] | None, runs: Path) -> int:
    started = time.perf_counter()
    previous = args.out_dir / "gpu-check.json"
    report = json.loads(previous.read_text()) if previous.is_file() else {"sections": {}, "wall_s": 0.0}
    report.update(environment=environment(), commit=args.commit, tolerance=args.tolerance, device=args.device)
    log(json.dumps(report["environment"]))

    def cells() -> dict:
        cuda_rows, cuda_wall = run_cells(args.device, runs / "cuda", args.cuda_workers, pruners)
        section = {"cuda_wall_s": round(cuda_wall, 1), "cuda_workers": args.cuda_workers}
        cpu_rows = []
        if not args.skip_cpu:
            cpu_rows, cpu_wall = run_cells("cpu", runs / "cpu", args.cpu_workers, pruners)
            section.update(cpu_wall_s=round(cpu_wall, 1), cpu_workers=args.cpu_workers)
        section["rows"] = compare_cells(cuda_rows, cpu_rows, args.tolerance)
        return section

    def steps() -> dict:
        return {
            "rounds": args.rounds,
            "steps": args.steps,
            "rows": step_ratios(args.rounds, args.steps, args.device, pruners),
        }

    if "train_steps" in sections:
        timed(report, "train_steps", train_steps, args)
    if "cells" in sections:
        timed(report, "cells", cells)
    if "seg_cell" in sections:
        timed(report, "seg_cell", seg_cell, runs / "seg", args.device)
    if "step_times" in sections:
        timed(report, "step_times", steps)
    if "sparse24" in sections:
        timed(report, "sparse24", sparse24, runs)
    report["wall_s"] = round(report["wall_s"] + time.perf_counter() - started, 1)
    report["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (args.out_dir / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out_dir / "gpu-check.md").write_text(render(report))
    log(f"report: {args.out_dir / 'gpu-check.md'} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
