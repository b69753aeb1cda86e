"""Runtime latency in ONNX Runtime: ``smartbench speed RUN_ID --runtime onnxruntime``.

A pruned model is only faster where the runtime that runs it turns its zeros or its missing
channels into less work. This measures that runtime, not eager PyTorch:

* the run is exported twice (bench.deploy.onnx_export, opset and exporter as there, no
  verification pass): ``ort_dense`` = the dense-shaped model with the masks baked in (the shapes
  and kernels of the dense model, so its latency is the dense model's), and ``ort_pruned`` = the
  deployable model (channel: physically shrunk; block, N:M, unstructured: the same dense shapes,
  so its ratio shows what the runtime makes of the zeros: nothing, on dense kernels);
* each file gets an ONNX Runtime session on the CPU execution provider, ``threads`` intra-op
  threads, one inter-op thread, sequential execution, all graph optimisations (Conv+BN fusion,
  constant folding) -- the threads are pinned and reported;
* the latency protocol is :func:`bench.deploy.speed.latency`'s: seeded random inputs per batch
  size, ``warmup`` untimed calls per variant, then ``repeats`` rounds timing one call of every
  variant, interleaved (the order rotates each round); per variant median, p25/p75 and p90, per
  batch size; ``ort_pruned``'s ratio to ``ort_dense`` as a ratio of medians and as the median
  of per-round ratios (paired);
* ``latency_ratio_ort`` = that ratio of medians per batch size, next to the FLOPs ratio of the two
  exported graphs (``torch.utils.flop_counter`` on the modules that were exported), so a reader
  sees how much of the FLOPs saving the runtime delivers.

The result (``runs/speed/<run_id>.onnxruntime.json``) carries the machine fingerprint of the
PyTorch speed rows plus the onnxruntime version. The .onnx files are kept under
``runs/speed/<run_id>-onnx/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.paths import RunPaths, paths_or_env
from bench.deploy.speed import batch_input, latency, module_flops


def measure_onnxruntime(
    run_id: str,
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    paths: RunPaths | None = None,
) -> dict[str, Any]:
    """Interleaved ONNX Runtime latency of the run's dense-shaped and deployable exports (module docstring)."""
    import onnxruntime

    from bench.deploy.onnx_export import OrtModule, deploy_model, export_onnx, ort_session

    paths = paths_or_env(paths)
    folder = paths.speed(run_id).with_name(f"{run_id}-onnx")
    deployables = {
        "ort_dense": deploy_model(run_id, paths, "masked"),
        "ort_pruned": deploy_model(run_id, paths, "pruned"),
    }
    exports = {
        name: export_onnx(
            run_id, folder / f"{name.removeprefix('ort_')}.onnx", paths, d.variant, verify=False, deployable=d
        )
        for name, d in deployables.items()
    }
    sessions = {name: OrtModule(ort_session(summary["path"], threads)) for name, summary in exports.items()}
    example = deployables["ort_pruned"].example
    flops = {name: module_flops(d.module, d.example[:1])[0] for name, d in deployables.items()}
    result = latency(
        sessions,
        lambda bs: batch_input(example, bs),
        batch_sizes=batch_sizes,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        device="cpu",
        reference="ort_dense",
    )
    result["runtime"] = {
        "name": "onnxruntime",
        "version": onnxruntime.__version__,
        "provider": "CPUExecutionProvider",
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "opset": exports["ort_pruned"]["opset"],
        "files": {name: summary["path"] for name, summary in exports.items()},
    }
    result["fingerprint"]["onnxruntime"] = onnxruntime.__version__
    ratio = result["ratios"]["ort_pruned"]
    result["latency_ratio_ort"] = {bs: r["ratio_of_medians"] for bs, r in ratio.items()}
    result["flops"] = {**flops, "ratio": round(flops["ort_pruned"] / flops["ort_dense"], 4)}
    return result


def write_result(result: dict[str, Any], run_id: str, out: str | None, paths: RunPaths | None = None) -> Path:
    import json

    path = Path(out) if out else paths_or_env(paths).speed(run_id).with_suffix(".onnxruntime.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True))
    return path
