"""What a pruner costs per training step at realistic sizes (issue 34 item 4) -> rows for the GPU check.

    python scripts/gpu_steps.py [--small] [--device cuda] [--models resnet50,vit_base_patch16_224]
                                [--pruners smart,magnitude] [--patterns channel] [--modes eager,compiled] [--compiled-pruners dense,magnitude,smart]
                                [--allocations global,v1] [--warmup 20] [--rounds 5] [--steps 10] [--minutes M] [--json FILE]

Every entry is a user's training loop through ``bench.prune`` (the public API): timm's model from
its random initialisation, synthetic data already on the device, SGD with momentum, bf16 autocast
and channels_last on CUDA; each step is ``pruning.step()``, forward, loss + ``pruning.penalty()``,
backward, ``optimizer.step()``, ``pruning.after_optimizer_step()``, with nothing read on the host.
The pruning stage is planned 4x longer than the steps run, so the timed steps sit in its first
part, past the warm-up (schedules where a training step finds them; AC/DC's phases, GMP's updates
and PDP's ramp start fall inside).

Configurations (``MODELS``): ResNet-50 at 224x224, batch 128, block:1x8 and channel at 50 % and
unstructured at 90 %; ViT-B/16 at 224x224, batch 128, 2:4. ``--small`` is the same code at toy
sizes (resnet10t at 32x32, a 2-block ViT at 32x32, batch 4, fp32), for the CPU test of this script.

Entries: ``dense`` (the same loop without a pruner), ``fixed-mask`` (magnitude's hard masks installed
at once: the cost of training under a fixed mask), every pruner under the protocol's allocation
rule (``global``) and without one (``v1``), N:M under v1 only. Per entry, against ``dense``:

* step time: ``--warmup`` untimed steps, then ``--rounds`` rounds of ``--steps`` steps, entries
  interleaved with the order rotating each round, the device synchronised around each entry's
  round only; median and p90 over rounds of (entry / dense of the same round);
* per-step times of one more pass with a synchronise after every step: the steps slower than
  1.5x that pass's median are the mask-update steps (GMP's updates, AC/DC's phase switches),
  reported apart (count and their median time / dense median);
* host syncs per step: ``torch.cuda.set_sync_debug_mode("warn")`` on CUDA (every warning is one
  sync); on the CPU ``bench.core.syncs.HostSyncCounter`` on the accelerator paths (``sync_free``);
* kernel launches per step (CUDA kernels in ``torch.profiler``; on the CPU the operators it
  records, a proxy) and peak memory (``torch.cuda.max_memory_allocated``; CPU: not measured).

``--modes compiled`` wraps the model in ``torch.compile`` after ``bench.prune`` attached its
parametrizations (the pruner's own calls stay eager); compiled entries are only
``--compiled-pruners`` (each compiles for a minute on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
from bench.core.errors import ConfigError  # noqa: E402
from bench.core.syncs import HostSyncCounter, sync_free  # noqa: E402
from bench.runs.registry import load_pruners  # noqa: E402

# (timm name, timm kwargs, input shape, batch, [(pattern, sparsity)])
MODELS = {
    "resnet50": ("resnet50", {}, (3, 224, 224), 128, [("block:1x8", 0.5), ("channel", 0.5), ("unstructured", 0.9)]),
    "vit_base_patch16_224": ("vit_base_patch16_224", {}, (3, 224, 224), 128, [("nm:2:4", None)]),
}
SMALL = {
    "resnet50": ("resnet10t", {}, (3, 32, 32), 4, [("block:1x8", 0.5), ("channel", 0.5), ("unstructured", 0.9)]),
    "vit_base_patch16_224": (
        "vit_tiny_patch16_224",
        {"img_size": 32, "depth": 2},
        (3, 32, 32),
        4,
        [("nm:2:4", None)],
    ),
}
FIXED = "fixed-mask"  # magnitude's hard masks installed at once: the cost of training under a fixed mask
# issue 34's step-time targets (entry / dense): (block and channel, unstructured and N:M)
TARGETS = {
    FIXED: (1.03, 1.03),
    "magnitude": (1.03, 1.03),
    "lamp": (1.03, 1.03),
    "random": (1.03, 1.03),
    "gmp": (1.03, 1.03),
    "acdc": (1.04, 1.04),
    "pas": (1.05, 1.05),
    "srste": (1.05, 1.05),
    "smart": (1.05, 1.10),
    "pdp": (1.05, 1.10),
    "awg": (1.10, 1.10),
}
# with the protocol's allocation rule (global, keep floor) and without it (v1: each pruner's own scope)
ALLOCATIONS = {"global": "protocol", "uniform": "uniform", "v1": "v1"}


def log(message: str) -> None:
    print(f"[gpu_steps {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Entry:
    """One model + optimizer (+ pruning) stepping like a user's loop on synthetic device data."""

    def __init__(
        self, base, batch, pruner: str | None, pattern: str, sparsity, allocation: str, compiled: bool, plan: int
    ):
        self.device = batch[0].device
        self.model = copy.deepcopy(base)
        self.x, self.y = batch
        self.pruning = None
        if pruner is not None:
            self.pruning = bench.prune(
                self.model,
                pruner="magnitude" if pruner == FIXED else pruner,
                pattern=pattern,
                sparsity=sparsity,
                steps=plan,
                example_input=self.x[:2],
                allocation=ALLOCATIONS[allocation],
            )
            if pruner == FIXED:
                self.pruning.finalize()
        groups = [{"params": self.model.parameters()}]
        groups += self.pruning.param_groups() if self.pruning is not None else []
        self.optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.cuda = self.device.type == "cuda"

    def step(self) -> None:
        if self.pruning is not None:
            self.pruning.step()
        autocast = torch.autocast("cuda", torch.bfloat16) if self.cuda else contextlib.nullcontext()
        with autocast:
            loss = torch.nn.functional.cross_entropy(self.forward(self.x), self.y)
        if self.pruning is not None:
            loss = loss + self.pruning.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.pruning is not None:
            self.pruning.after_optimizer_step(self.optimizer)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def syncs_per_step(entry: Entry, steps: int) -> float:
    """Host syncs per step (module docstring)."""
    if entry.cuda:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    entry.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught) / steps
    with sync_free(), HostSyncCounter() as counter:
        for _ in range(steps):
            entry.step()
    return counter.count / steps


def launches_per_step(entry: Entry, steps: int) -> float:
    """CUDA kernels per step (CPU: operators recorded, a proxy)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if entry.cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            entry.step()
        synchronize(entry.device)
    if entry.cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return len(kernels) / steps
    return len([e for e in prof.events() if e.name.startswith("aten::")]) / steps


def step_profile(entry: Entry, steps: int) -> list[float]:
    """Per-step wall times (ms) with a synchronise after every step."""
    times = []
    for _ in range(steps):
        synchronize(entry.device)
        begin = time.perf_counter()
        entry.step()
        synchronize(entry.device)
        times.append((time.perf_counter() - begin) * 1e3)
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(model_key: str, args) -> list[dict]:
    """Every entry of one model's configurations (module docstring); one row per entry."""
    import timm

    name, kwargs, shape, batch_size, patterns = (SMALL if args.small else MODELS)[model_key]
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False, num_classes=1000 if not args.small else 10, **kwargs)
    base = base.to(device)
    if device.type == "cuda" and "vit" not in name:
        base = base.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, *shape, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and "vit" not in name else x
    batch = (x, torch.randint(0, 1000 if not args.small else 10, (batch_size,), device=device))
    plan = 4 * (args.warmup + args.rounds * args.steps + 3 * args.steps)
    rows = []
    for pattern, sparsity in patterns:
        if args.patterns and pattern not in args.patterns:
            continue
        if time.monotonic() > args.deadline:
            rows.append(_row(model_key, pattern, ("-", "-", "-"), skipped=f"time budget ({args.minutes:g} min) spent"))
            log(f"{model_key} {pattern}: not run, the time budget is spent")
            continue
        nm = pattern.startswith("nm:")
        specs = [("dense", "eager", "-"), (FIXED, "eager", "v1" if nm else "global")]
        for pruner in args.pruners:
            for allocation in ("v1",) if nm else args.allocations:
                specs.append((pruner, "eager", allocation))
        if "compiled" in args.modes:
            specs += [(p, "compiled", "-" if p == "dense" else "v1" if nm else "global") for p in args.compiled_pruners]
        entries = {}
        for pruner, mode, allocation in specs:
            key = (pruner, mode, allocation)
            if time.monotonic() > args.deadline and pruner != "dense":
                rows.append(_row(model_key, pattern, key, skipped=f"time budget ({args.minutes:g} min) spent"))
                continue
            try:
                entries[key] = Entry(
                    base,
                    batch,
                    None if pruner == "dense" else pruner,
                    pattern,
                    sparsity,
                    "v1" if allocation == "-" else allocation,
                    mode == "compiled",
                    plan,
                )
                for _ in range(args.warmup):
                    entries[key].step()
            except ConfigError as err:  # a pattern the pruner does not support
                rows.append(_row(model_key, pattern, key, skipped=str(err)[:160]))
                entries.pop(key, None)
            except Exception as err:  # e.g. a compile failure: recorded, the other entries go on
                if key == ("dense", "eager", "-"):
                    raise
                rows.append(_row(model_key, pattern, key, error=f"{type(err).__name__}: {err}"[:200]))
                entries.pop(key, None)
                log(f"{model_key} {pattern} {' '.join(key)}: {rows[-1]['error']}")
        synchronize(device)
        times: dict = {key: [] for key in entries}
        keys = list(entries)
        for r in range(args.rounds):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                synchronize(device)
                begin = time.perf_counter()
                for _ in range(args.steps):
                    entries[key].step()
                synchronize(device)
                times[key].append((time.perf_counter() - begin) * 1e3 / args.steps)
        dense_eager = times[("dense", "eager", "-")]
        dense_steps = step_profile(entries[("dense", "eager", "-")], args.steps)
        for key, entry in entries.items():
            reference = dense_eager if key[1] == "eager" else times.get(("dense", "compiled", "-"), dense_eager)
            ratios = [a / b for a, b in zip(times[key], reference)]
            per_step = step_profile(entry, args.steps)
            usual = statistics.median(per_step)
            updates = [t for t in per_step if t > 1.5 * usual]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            syncs = syncs_per_step(entry, args.steps)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            rows.append(
                _row(
                    model_key,
                    pattern,
                    key,
                    median_ms=statistics.median(times[key]),
                    ratio_median=statistics.median(ratios),
                    ratio_p90=quantile(ratios, 0.9),
                    update_steps=len(updates),
                    update_ratio=statistics.median(updates) / statistics.median(dense_steps) if updates else None,
                    syncs_per_step=syncs,
                    launches_per_step=launches_per_step(entry, args.steps),
                    peak_gib=peak,
                    target=_target(key[0], pattern),
                )
            )
            log(f"{model_key} {pattern} {' '.join(key)}: x{rows[-1]['ratio_median']:.3f}, syncs {syncs:g}/step")
        del entries
    return rows


def _target(pruner: str, pattern: str) -> float | None:
    if pruner not in TARGETS:
        return None
    structured, fine = TARGETS[pruner]
    return structured if pattern.split(":")[0] in ("block", "channel") else fine


def _row(model: str, pattern: str, key: tuple, **values) -> dict:
    pruner, mode, allocation = key
    return {"model": model, "pattern": pattern, "pruner": pruner, "mode": mode, "allocation": allocation, **values}


def render(rows: list[dict]) -> list[str]:
    """Markdown lines: one table per (model, pattern)."""
    lines = []
    fmt = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for model, pattern in dict.fromkeys((r["model"], r["pattern"]) for r in rows):
        lines += [
            f"**{model} {pattern}**",
            "",
            "| entry | mode | allocation | median ms | ÷ dense (median) | p90 | target | update steps (÷ dense) "
            "| syncs/step | launches/step | peak GiB |",
            "|---|---|---|---:|---:|---:|---|---|---:|---:|---:|",
        ]
        for r in rows:
            if (r["model"], r["pattern"]) != (model, pattern) or "skipped" in r:
                continue
            if "error" in r:
                lines.append(f"| {r['pruner']} | {r['mode']} | {r['allocation']} | error: {r['error']} |||||||||")
                continue
            verdict = (
                "–"
                if r["target"] is None
                else f"{r['target']:g} {'met' if r['ratio_median'] <= r['target'] else 'MISSED'}"
            )
            updates = f"{r['update_steps']} ({fmt(r['update_ratio'], 2)})" if r["update_steps"] else "0"
            lines.append(
                f"| {r['pruner']} | {r['mode']} | {r['allocation']} | {r['median_ms']:.1f} | {r['ratio_median']:.3f} "
                f"| {r['ratio_p90']:.3f} | {verdict} | {updates} | {r['syncs_per_step']:g} "
                f"| {r['launches_per_step']:.0f} | {fmt(r['peak_gib'], 1)} |"
            )
        lines.append("")
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="toy sizes (the CPU test of this script)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--pruners", default=None, help="default: every registered pruner a user loop can run")
    parser.add_argument("--patterns", default=None, help="a subset of the models' patterns (default: all)")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--compiled-pruners", default="dense,magnitude,smart")
    parser.add_argument("--allocations", default="global,v1", help="global (the protocol's rule), uniform, v1 (none)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--minutes", type=float, default=float("inf"), help="no new configuration after this long")
    args = parser.parse_args(argv)
    args.deadline = time.monotonic() + args.minutes * 60
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; allowed: {', '.join(MODELS)}")
    registered = sorted(name for name, cls in load_pruners().items() if not cls.trains_from_scratch)
    args.pruners = args.pruners.split(",") if args.pruners else [p for p in registered if p != "nomask"]
    if set(args.pruners) - set(registered):
        parser.error(f"--pruners: unknown {', '.join(sorted(set(args.pruners) - set(registered)))}")
    args.patterns = args.patterns.split(",") if args.patterns else None
    args.modes = args.modes.split(",")
    args.compiled_pruners = args.compiled_pruners.split(",")
    args.allocations = args.allocations.split(",")
    if set(args.allocations) - set(ALLOCATIONS) or set(args.modes) - {"eager", "compiled"}:
        parser.error(f"--allocations: {', '.join(ALLOCATIONS)}; --modes: eager, compiled")
    args.models = args.models.split(",")
    return args


def run(argv: list[str] | None = None) -> list[dict]:
    """Parse ``argv`` and measure every configuration (the GPU check's ``train_steps`` section)."""
    args = parse(argv)
    return [row for model in args.models for row in measure(model, args)]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device visible (--device cpu --small tries this script here)", file=sys.stderr)
        return 2
    rows = [row for model in args.models for row in measure(model, args)]
    print("\n".join(render(rows)))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
