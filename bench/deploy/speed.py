"""Cost figures (parameters, FLOPs) and the latency protocol of pruned models.

**Cost figures** (:func:`cost_figures`). FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(one eval forward of the task's example input, reported *per sample* = divided by the batch size
of the input tensor, or of a dict input's first tensor; FLOPs = 2 x multiply-accumulates of conv/matmul ops, element-wise ops are not
counted). ``flops_masked`` counts only kept weights: each prunable layer's dense FLOPs are scaled
by its kept-weight fraction (kept weights / weights, from the hard mask), every other layer is
counted dense -- for the channel pattern the next layer's input side is *not* reduced, that is
what ``flops_shrunk`` (the physically shrunk model, bench/deploy/shrink.py) shows. ``params_masked`` =
weights the hard masks keep in prunable layers + every other parameter (biases, norms, excluded
layers) in full.

**Latency protocol** (:func:`latency`). Eval mode, ``torch.inference_mode``, a fixed thread count
(``torch.set_num_threads``), seeded random inputs per batch size. For every batch size: ``warmup``
untimed calls per variant, then ``repeats`` rounds; each round times one call of every variant,
*interleaved* (the order rotates each round) so load drift on a shared machine hits all variants
alike. Each call is timed alone (``perf_counter``; on CUDA, synchronised CUDA events). Reported:
median, 25th/75th/90th percentiles and IQR in ms, per-sample median, and for every variant its ratio
to the reference variant, both as a ratio of medians and as the median of per-round ratios
(paired). A device fingerprint (CPU model, torch version, threads, CUDA device) goes with it.

Variants (:func:`measure`): ``masked_dense`` (hard masks folded into dense tensors: what a masked
model costs on dense kernels), ``shrunk`` (channel pattern: pruned channels physically removed),
both with every eval-mode BatchNorm that follows a conv folded into it (:func:`fold_batchnorm`,
as deployment compilers do; both or neither, recorded as ``protocol.bn_folded``),
``masked_dense_fp16`` and ``sparse24`` (``nm:2:4`` on CUDA: the block Linears converted with
``bench.deploy.sparse24.to_semi_structured_``, fp16; its ratio is taken against ``masked_dense_fp16``),
and ``masked_dense_frozen`` / ``shrunk_frozen``: the two (folded) as frozen TorchScript graphs
(:class:`Frozen`, what an exported model costs without eager mode's per-module Python calls);
``shrunk_frozen``'s ratio is taken against ``masked_dense_frozen``, ``masked_dense_frozen``'s
against ``masked_dense`` (what freezing alone gives).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bench.core.costs import module_flops, per_sample
from bench.core.device import cpu_model
from bench.core.sparsity import Pattern, parse_pattern
from bench.deploy.shrink import count_params, folded_copy, random_like_input, shrink_channels

DEFAULT_BATCH_SIZES = (1, 32, 128)


# -- fingerprint --------------------------------------------------------------------------
def device_fingerprint(device: str = "cpu") -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device) if "cuda" in str(device) else 0)
        info["cuda"] = torch.version.cuda
    return info


# -- cost figures -------------------------------------------------------------------------
def cost_figures(
    model: nn.Module, masker, hard_masks: dict[str, Tensor], example_input, pattern: Pattern | str
) -> dict[str, Any]:
    """params/FLOPs of the dense model, of the kept weights, and (channel) of the shrunk model.

    ``model`` may carry the masker's parametrizations (``masker`` given) or be already folded
    (``masker=None``); it is not modified. See the module docstring for the definitions.
    """
    pattern = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    plain = folded_copy(model, masker, hard_masks)
    modules = dict(plain.named_modules())
    params_dense = count_params(plain)
    flops_dense, per_module = module_flops(plain, example_input)
    dropped_params, dropped_flops = 0, 0.0
    for name, unit_mask in hard_masks.items():
        weight = modules[name].weight
        kept = int(pattern.expand(unit_mask.float(), weight.shape).sum())
        if name not in per_module:
            raise KeyError(f"FlopCounterMode saw no call of prunable layer '{name}'")
        dropped_params += weight.numel() - kept
        dropped_flops += per_module[name] * (1.0 - kept / weight.numel())
    batch = per_sample(example_input)
    figures = {
        "params_dense": params_dense,
        "params_masked": params_dense - dropped_params,
        "flops_dense": round(flops_dense / batch),
        "flops_masked": round((flops_dense - dropped_flops) / batch),
    }
    if pattern.kind == "channel":
        try:
            shrink_channels(plain, hard_masks, example_input)
        except Exception as err:  # noqa: BLE001 -- physical removal is a figure, not the run: never lose the run
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            figures["shrink_error"] = f"{type(err).__name__}: {reason}"
        else:
            figures["params_shrunk"] = count_params(plain)
            figures["flops_shrunk"] = round(module_flops(plain, example_input)[0] / batch)
    return figures


# -- latency ------------------------------------------------------------------------------
def batch_input(example_input, batch_size: int, seed: int = 0):
    """Seeded random input of ``batch_size`` samples shaped like one sample of the example.

    A dict example (mm ``model(**x)`` keyword arguments) gets every batched tensor replaced so;
    its other entries (``mode="tensor"``) are kept."""
    if isinstance(example_input, dict):
        return {
            k: batch_input(v, batch_size, seed) if isinstance(v, Tensor) and v.dim() > 0 else v
            for k, v in example_input.items()
        }
    return random_like_input(example_input[:1].expand(batch_size, *example_input.shape[1:]).contiguous(), seed)


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    if "cuda" in str(device):

        def timed(call) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)

        return timed

    def timed(call) -> float:
        begin = time.perf_counter()
        call()
        return (time.perf_counter() - begin) * 1e3

    return timed


def summarize(times_ms: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 3
    p90 = statistics.quantiles(times_ms, n=10, method="inclusive")[8] if len(times_ms) > 1 else times_ms[0]
    return {
        "median_ms": round(median, 4),
        "p25_ms": round(q1, 4),
        "p75_ms": round(q3, 4),
        "p90_ms": round(p90, 4),
        "iqr_ms": round(q3 - q1, 4),
        "min_ms": round(min(times_ms), 4),
        "repeats": len(times_ms),
    }


def _to_device(x, device: str):
    if isinstance(x, dict):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in x.items()}
    return x.to(device)


def _forward(model: nn.Module, x):
    return model(**x) if isinstance(x, dict) else model(x)


def interleaved_times(calls: dict[str, Callable[[], Any]], warmup: int, repeats: int, timed) -> dict[str, list[float]]:
    """``warmup`` untimed calls each, then ``repeats`` rounds timing every call once, order rotating."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(calls[name]))
    return times


def latency(
    models: dict[str, nn.Module],
    make_input: Callable[[int], Any] | Tensor,
    batch_sizes=DEFAULT_BATCH_SIZES,
    warmup: int = 5,
    repeats: int = 30,
    threads: int = 1,
    device: str = "cpu",
    reference: str | dict[str, str] | None = None,
) -> dict[str, Any]:
    """Interleaved latency of several models (see module docstring).

    ``make_input(batch_size)`` builds an input; a Tensor example is expanded with
    :func:`batch_input`. Ratios are taken against ``reference`` (default: the first model), or
    per variant with a dict {variant: its reference} (others: the first model). The models
    are put in eval mode and moved to ``device``.
    """
    if isinstance(make_input, (Tensor, dict)):
        example = make_input
        make_input = lambda bs: batch_input(example, bs)  # noqa: E731
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    names = list(models)
    ref_of = {
        name: reference.get(name, names[0]) if isinstance(reference, dict) else (reference or names[0])
        for name in names
    }
    results: dict[str, Any] = {name: {} for name in names}
    ratios: dict[str, Any] = {name: {} for name in names if ref_of[name] != name}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for model in models.values():
            model.eval().to(device)
        with torch.inference_mode():
            for bs in batch_sizes:
                x = _to_device(make_input(bs), device)
                calls = {n: (lambda m=models[n], x=x: _forward(m, x)) for n in names}
                times = interleaved_times(calls, warmup, repeats, _timer(device))
                for name in names:
                    stats = summarize(times[name])
                    results[name][str(bs)] = {
                        **stats,
                        "batch_size": bs,
                        "per_sample_ms": round(stats["median_ms"] / bs, 5),
                    }
                for name, by_batch in ratios.items():
                    ref = ref_of[name]
                    paired = statistics.median(a / b for a, b in zip(times[name], times[ref]))
                    by_batch[str(bs)] = {
                        "reference": ref,
                        "paired_median": round(paired, 4),
                        "ratio_of_medians": round(
                            results[name][str(bs)]["median_ms"] / results[ref][str(bs)]["median_ms"], 4
                        ),
                    }
        fingerprint = device_fingerprint(device)
    finally:
        torch.set_num_threads(previous_threads)
    protocol = {
        "warmup": warmup,
        "repeats": repeats,
        "threads": threads,
        "batch_sizes": list(batch_sizes),
        "interleaved": True,
        "references": {n: r for n, r in ref_of.items() if r != n},
        "timer": "cuda_events" if "cuda" in str(device) else "perf_counter",
    }
    return {"fingerprint": fingerprint, "protocol": protocol, "latency": results, "ratios": ratios}


# -- variants of a pruned model -----------------------------------------------------------
def fold_batchnorm(model: nn.Module) -> nn.Module | None:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a Conv folded into
    that conv (torch.fx conv-bn fusion, ``torch.fx.experimental.optimization.fuse``); the outputs
    agree up to float rounding. None when the model has no BatchNorm or does not trace with
    torch.fx (mmdet/mmseg models, data-dependent control flow): the caller keeps it unfolded."""
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    try:
        return fuse(model.eval(), inplace=False)
    except Exception:  # torch.fx raises many kinds (TraceError, TypeError, RuntimeError...) on untraceable code
        return None


FOLDED_VARIANTS = ("masked_dense", "shrunk")


def fold_variants(variants: dict[str, nn.Module], names=FOLDED_VARIANTS) -> list[str]:
    """Fold BatchNorm (:func:`fold_batchnorm`) into the fp32 variants ``names`` of one comparison,
    in place: all of them or none, so that no variant is compared against a differently compiled
    one. Returns the names folded."""
    names = [name for name in names if name in variants]
    folded = {name: fold_batchnorm(variants[name]) for name in names}
    if not names or any(model is None for model in folded.values()):
        return []
    variants.update(folded)
    return names


class Frozen(nn.Module):
    """A frozen TorchScript graph of ``model`` per input shape (``torch.jit.trace`` + ``torch.jit.freeze``,
    made at the first call with each shape: a warm-up call, untimed), run without the Python
    module calls of eager mode -- what an exported graph costs, where a batch-1 forward of a small
    network is mostly per-layer dispatch. Eval mode; the outputs are the traced model's.
    TorchScript is deprecated in torch 2.x (its FutureWarning is silenced here); ``torch.export``
    with AOTInductor is its successor but compiles C++ for minutes per model, so it is not used:
    where tracing no longer works, :func:`freeze_variants` reports the variants as skipped."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.graphs: dict[tuple, Any] = {}

    def forward(self, x: Tensor):
        key = (tuple(x.shape), x.dtype, str(x.device))
        if key not in self.graphs:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.graphs[key] = torch.jit.freeze(torch.jit.trace(self.model, x, check_trace=False))
        return self.graphs[key](x)


FROZEN_VARIANTS = ("masked_dense", "shrunk")


def freeze_variants(variants: dict[str, nn.Module], example_input, names=FROZEN_VARIANTS) -> tuple[list[str], str]:
    """Add a ``NAME_frozen`` twin (:class:`Frozen`) of every variant in ``names``, all or none (a
    frozen variant is compared against frozen ones only). Returns the names frozen and, when
    none, why: a dict input (mm models) or a model that does not trace."""
    names = [name for name in names if name in variants]
    if not names:
        return [], "no variant to freeze"
    if not isinstance(example_input, Tensor):
        return [], "dict inputs (mm models) are not traced"
    frozen = {f"{name}_frozen": Frozen(copy.deepcopy(variants[name])) for name in names}
    try:  # a model that cannot be traced is left out here, not in the middle of the timing
        for model in frozen.values():
            model(example_input.to(next(model.parameters()).device))  # kept: reused at the same shape
    except Exception as err:  # noqa: BLE001 - tracing raises many kinds on untraceable code
        return [], f"torch.jit.trace failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    variants.update(frozen)
    return names, ""


class HalfInput(nn.Module):
    """Feeds a float16 model: casts floating inputs to half (the cast is part of the timed call)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.half() if isinstance(x, Tensor) and x.is_floating_point() else x)


def sparse24_variants(model: nn.Module, hard_masks: dict[str, Tensor] | None, device: str) -> tuple[dict, str]:
    """fp16 masked-dense and fp16 2:4 semi-structured twins (bench/deploy/sparse24.py) of an nm:2:4 model."""
    if "cuda" not in str(device):
        return {}, "2:4 semi-structured kernels need CUDA"
    try:
        from bench.deploy import sparse24
    except ImportError as err:
        return {}, f"bench.deploy.sparse24 unavailable ({err})"
    modules = dict(model.named_modules())
    names = [n for n in (hard_masks or sparse24.covered_linears(model)) if isinstance(modules[n], nn.Linear)]
    dense16 = copy.deepcopy(model).eval().half().to(device)
    sparse = copy.deepcopy(dense16)
    skipped = sparse24.to_semi_structured_(sparse, names)
    why = f"{len(skipped)} of {len(names)} Linears left dense by the 2:4 kernels" if skipped else ""
    return {"masked_dense_fp16": HalfInput(dense16), "sparse24": HalfInput(sparse)}, why


def build_variants(
    model: nn.Module, pattern: str, hard_masks: dict[str, Tensor] | None, example_input, device: str = "cpu"
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """masked_dense (+ shrunk for channel, + fp16 masked_dense / sparse24 for nm:2:4 on CUDA); skipped ones with why."""
    variants, notes = {"masked_dense": model}, {}
    if pattern == "channel":
        if hard_masks is None:
            notes["shrunk"] = "no hard masks"
        else:
            shrunk = copy.deepcopy(model)
            shrink_channels(shrunk, hard_masks, example_input)
            variants["shrunk"] = shrunk
    if pattern == "nm:2:4":
        extra, why = sparse24_variants(model, hard_masks, device)
        variants.update(extra)
        if why:
            notes["sparse24"] = why
    return variants, notes


def measure(
    row: dict[str, Any],
    model: nn.Module,
    example_input,
    hard_masks: dict[str, Tensor] | None = None,
    make_input: Callable[[int], Any] | None = None,
    batch_sizes=DEFAULT_BATCH_SIZES,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    device: str = "cpu",
) -> dict[str, Any]:
    """Latency of a finished run's pruned model (folded, plain) and its faster variants.

    ``row``: the run's result row (uses ``run_id`` and ``pattern``). Returns :func:`latency`'s
    dict plus ``run_id``, ``pattern`` and ``skipped`` (variant -> reason).
    """
    variants, skipped = build_variants(model, row["pattern"], hard_masks, example_input, device)
    folded = fold_variants(variants)
    frozen, why = [], "needs warmup >= 1 (each frozen graph is traced at its first call)"
    if warmup >= 1:
        frozen, why = freeze_variants(variants, example_input)
    if why:
        skipped["frozen"] = why
    references = {"sparse24": "masked_dense_fp16"} if "sparse24" in variants else {}
    if "shrunk_frozen" in variants:
        references["shrunk_frozen"] = "masked_dense_frozen"
    result = latency(
        variants, make_input or example_input, batch_sizes, warmup, repeats, threads, device, reference=references
    )
    result["protocol"]["bn_folded"] = folded
    result["protocol"]["frozen"] = frozen
    return {"run_id": row.get("run_id"), "pattern": row["pattern"], **result, "skipped": skipped}
