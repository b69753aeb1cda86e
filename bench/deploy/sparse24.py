"""Real 2:4 (semi-structured) sparse inference on CUDA and its latency against dense.

A 2:4-masked ``nn.Linear`` weight is converted with ``torch.sparse.to_sparse_semi_structured``
(fp16; cuSPARSELt, or CUTLASS when cuSPARSELt is missing) and the layer's forward then runs the
sparse tensor-core kernel. Protocol (:func:`median_latency_ms`): eval mode, no grad, fp16,
``warmup`` untimed calls, then the median of ``repeats`` calls each timed with CUDA events.
The converted model is checked against the masked dense fp16 model on the same input
(:func:`relative_error`): the kernels only reorder the fp16 accumulation, so outputs agree
to fp16 tolerance.

2:4 kernels pay off only for large matrices (hidden sizes of several hundred and many
tokens); small layers are often *slower* than dense (pytorch issue 111339). Measure; never
assume. Nothing here runs without CUDA: :func:`require_cuda` raises a clear error instead.

Two protocols. :func:`median_latency_ms` times one eager call at a time with the GPU idle in
between: what ``smartbench speed`` reports for a deployed model, host dispatch included (the
tensor subclass, padding, cuSPARSELt's per-call setup). :func:`kernel_timing` separates the two:
the device time of the kernels themselves, from the profiler, and the time per replay of a
captured CUDA graph (no host work at all), next to the eager time per call of back-to-back calls
(``scripts/bench_24.py``; issue 34 item 5).
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.core.errors import SmartbenchError
from bench.core.masks import find_prunable
from bench.core.select import nm_topk
from bench.core.sparsity import NM

PATTERN_24 = NM(2, 4)


def require_cuda() -> torch.device:
    """The CUDA device, or a SmartbenchError saying 2:4 kernels need one (nothing is measured)."""
    if not torch.cuda.is_available():
        raise SmartbenchError(
            "2:4 sparse inference needs a CUDA GPU (sm_80 or newer: A100/H100/RTX 30xx+); "
            "no CUDA device is visible, so nothing was measured or recorded"
        )
    return torch.device("cuda")


def mask_24_(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Zero the 2 smallest-magnitude weights of every group of 4 inputs, in place; returns the masks."""
    modules = dict(model.named_modules())
    masks = {}
    with torch.no_grad():
        for name in names:
            weight = modules[name].weight
            PATTERN_24.check(weight.shape, name)
            keep = nm_topk(PATTERN_24.unit_norms(weight.float()), PATTERN_24.n)
            mask = PATTERN_24.expand(keep.float(), weight.shape)
            weight.mul_(mask.to(weight.dtype))
            masks[name] = mask.bool()
    return masks


def to_semi_structured_(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Replace each named Linear weight by its 2:4 compressed tensor; returns {name: reason} of skipped layers."""
    from torch.sparse import to_sparse_semi_structured

    modules = dict(model.named_modules())
    skipped = {}
    for name in names:
        module = modules[name]
        try:
            sparse = to_sparse_semi_structured(module.weight.detach().contiguous())
        except RuntimeError as err:  # shape/dtype/arch the kernels do not support
            skipped[name] = str(err).splitlines()[0]
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
    return skipped


def median_latency_ms(fn, warmup: int = 10, repeats: int = 50) -> float:
    """Median wall time of ``fn()`` in milliseconds, timed on the GPU with CUDA events."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def profiled_kernel_ms(fn, calls: int = 20) -> float:
    """Device time per call of every CUDA kernel ``fn()`` launches (transposes, padding and copies
    included), summed from ``torch.profiler`` over ``calls`` back-to-back calls; no host time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1000.0 / calls  # us -> ms


def graph_replay_ms(fn, replays: int = 100, warmup: int = 3) -> float:
    """Milliseconds per replay of ``fn()`` captured once in a CUDA graph (``replays`` replays
    between two CUDA events): the GPU runs the kernels back to back and the host does nothing."""
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def eager_ms(fn, calls: int = 100, warmup: int = 10) -> float:
    """Milliseconds per call of ``calls`` back-to-back eager calls (one sync at the end): the
    larger of the host's dispatch time and the device's kernel time per call."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def kernel_timing(fn, replays: int = 100, profiled_calls: int = 20) -> dict:
    """``kernel_ms`` (profiler), ``graph_ms`` (CUDA-graph replay; None with ``graph_error`` when
    the capture fails) and ``eager_ms`` (back-to-back calls) of ``fn``."""
    out = {"kernel_ms": profiled_kernel_ms(fn, profiled_calls), "eager_ms": eager_ms(fn, replays)}
    try:
        out["graph_ms"] = graph_replay_ms(fn, replays)
    except RuntimeError as err:  # a kernel that cannot be captured: say so, keep the other two
        out["graph_ms"], out["graph_error"] = None, str(err).splitlines()[0][:200]
    return out


def search_alg_(module: nn.Module, example: Tensor) -> dict | None:
    """Pick the fastest cuSPARSELt algorithm for ``module``'s 2:4 weight at ``example``'s rows
    (cuSPARSELt's search on the very operands its forward passes) and keep its id on the weight.
    Returns ``{"alg_id", "split_k"}`` (torch's subclass passes the id only, so a split-K the search
    preferred is reported, not used), or None (nothing changed) for a dense weight or CUTLASS."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT

    weight = getattr(module, "weight", None)
    if not isinstance(weight, SparseSemiStructuredTensorCUSPARSELT):
        return None
    dense = example.reshape(-1, example.shape[-1])
    constraints = weight._DTYPE_SHAPE_CONSTRAINTS[dense.dtype]
    pad_rows, pad_cols = (-dense.shape[0]) % constraints.dense_min_rows, (-dense.shape[1]) % constraints.dense_min_cols
    if pad_rows or pad_cols:
        dense = torch.nn.functional.pad(dense, (0, pad_cols, 0, pad_rows))
    operands = (weight.packed, dense.t(), None, None, None, weight.fuse_transpose_cusparselt)
    with torch.no_grad():
        search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
        found = search(*operands) if search is not None else torch._cslt_sparse_mm_search(*operands)
    alg_id, split_k = (found[0], found[1]) if isinstance(found, tuple) else (found, 1)
    weight.alg_id_cusparselt = int(alg_id)
    return {"alg_id": int(alg_id), "split_k": int(split_k)}


def relative_error(sparse_out: Tensor, dense_out: Tensor) -> float:
    """max |sparse - dense| / max |dense| (0 when both are zero)."""
    scale = dense_out.float().abs().max().clamp_min(1e-12)
    return float((sparse_out.float() - dense_out.float()).abs().max() / scale)


@dataclass
class Pair:
    """A 2:4-masked dense fp16 model and its converted sparse twin, on the GPU."""

    dense: nn.Module
    sparse: nn.Module
    names: list[str]
    skipped: dict[str, str]


def covered_linears(model: nn.Module, include: list[str] | None = None) -> list[str]:
    """Names of the Linears matching ``include`` (default: every Linear in the transformer blocks)."""
    modules = dict(model.named_modules())
    names = find_prunable(model, include or ["blocks.*"], None, keep_first_last=False)
    return [name for name in names if isinstance(modules[name], nn.Linear)]


def make_pair(model: nn.Module, names: list[str], device: torch.device, dtype: torch.dtype = torch.float16) -> Pair:
    """Cast ``model`` to ``dtype`` (fp16 or bf16) on ``device`` (in place), mask ``names`` to 2:4 by
    magnitude, build the sparse twin."""
    dense = model.eval().to(device=device, dtype=dtype)
    mask_24_(dense, names)
    sparse = copy.deepcopy(dense)
    skipped = to_semi_structured_(sparse, names)
    return Pair(dense, sparse, names, skipped)


def compare(pair: Pair, example: Tensor, warmup: int = 10, repeats: int = 50) -> dict:
    """Latency of dense vs sparse on one input batch, and their output agreement."""
    with torch.no_grad():
        dense_out, sparse_out = pair.dense(example), pair.sparse(example)
    dense_ms = median_latency_ms(lambda: pair.dense(example), warmup, repeats)
    sparse_ms = median_latency_ms(lambda: pair.sparse(example), warmup, repeats)
    return dict(
        batch=example.shape[0],
        dense_ms=dense_ms,
        sparse_ms=sparse_ms,
        ratio=sparse_ms / dense_ms,
        rel_err=relative_error(sparse_out, dense_out),
    )


def linear_shapes(model: nn.Module, names: list[str]) -> list[tuple[int, int]]:
    """Distinct (out, in) shapes of the named Linears, in first-seen order."""
    modules, shapes = dict(model.named_modules()), []
    for name in names:
        shape = tuple(modules[name].weight.shape)
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def compare_linear(
    out_features: int,
    in_features: int,
    rows: int,
    device: torch.device,
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
) -> dict:
    """One 2:4 Linear alone: ``rows`` input rows (batch x tokens), random weights, fp16."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * in_features**-0.5)
    pair = make_pair(nn.Sequential(layer), ["0"], device)
    if pair.skipped:
        return dict(shape=f"{out_features}x{in_features}", rows=rows, skipped=pair.skipped["0"])
    x = torch.randn(rows, in_features, generator=generator).half().to(device)
    row = compare(pair, x, warmup, repeats)
    row.pop("batch")
    return dict(shape=f"{out_features}x{in_features}", rows=rows, **row)
