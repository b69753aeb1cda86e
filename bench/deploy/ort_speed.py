"""Runtime latency in a deployment runtime: ``smartbench speed RUN_ID --runtime onnxruntime|openvino``.

A pruned model is only faster where the runtime that runs it turns its zeros or its missing
channels into less work. This measures that runtime, not eager PyTorch. Runtimes
(:data:`RUNTIMES`): ONNX Runtime's CPU execution provider, and OpenVINO's CPU plugin reading the
same ONNX files (``openvino.Core().compile_model``, ``INFERENCE_NUM_THREADS`` = threads, one
stream, the LATENCY hint, fp32 inference precision so it computes what the exported graph says):

* the run is exported twice (bench.deploy.onnx_export, opset and exporter as there, no
  verification pass): ``ort_dense`` = the dense-shaped model with the masks baked in (the shapes
  and kernels of the dense model, so its latency is the dense model's), and ``ort_pruned`` = the
  deployable model (channel: physically shrunk; block, N:M, unstructured: the same dense shapes,
  so its ratio shows what the runtime makes of the zeros: nothing, on dense kernels);
* each file gets an ONNX Runtime session on the CPU execution provider, ``threads`` intra-op
  threads, one inter-op thread, sequential execution, all graph optimisations (Conv+BN fusion,
  constant folding), or an OpenVINO compiled model as above -- the threads are pinned and
  reported;
* the latency protocol is :func:`bench.deploy.speed.latency`'s: seeded random inputs per batch
  size, ``warmup`` untimed calls per variant, then ``repeats`` rounds timing one call of every
  variant, interleaved (the order rotates each round); per variant median, p25/p75 and p90, per
  batch size; ``ort_pruned``'s ratio to ``ort_dense`` as a ratio of medians and as the median
  of per-round ratios (paired);
* ``latency_ratio_ort`` (``latency_ratio_ov`` for OpenVINO) = that ratio of medians per batch
  size, next to the FLOPs ratio of the two exported graphs (``torch.utils.flop_counter`` on the
  modules that were exported), so a reader sees how much of the FLOPs saving the runtime delivers.

The result (``runs/speed/<run_id>.<runtime>.json``) carries the machine fingerprint of the
PyTorch speed rows plus the runtime's version. The .onnx files are kept under
``runs/speed/<run_id>-onnx/``.

**Rows.** :func:`runtime_fields` turns a stored result into row fields: ``latency_ratio_ort`` /
``latency_ratio_ov`` (the ratio at batch 1, or the smallest batch measured) and
``runtime_latency`` ``{runtime: {ratio: {batch: r}, flops_ratio, version, threads, cpu}}``.
``smartbench table`` adds them to every row of the store that has a result (rows that already
carry them keep theirs), so a committed rows file (``--raw``) carries them too, and
``smartbench suite speed SUITE --runtime R`` measures every finished cell that has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.paths import RunPaths, paths_or_env
from bench.deploy.speed import batch_input, latency, module_flops

RUNTIMES = ("onnxruntime", "openvino")
RATIO_FIELD = {"onnxruntime": "latency_ratio_ort", "openvino": "latency_ratio_ov"}


class OpenVinoSession:
    """An OpenVINO compiled model behind the two calls :class:`bench.deploy.onnx_export.OrtModule`
    makes of an ONNX Runtime session (``get_inputs()[0].name``, ``run(None, feed)``)."""

    def __init__(self, path, threads: int = 1):
        import openvino

        from bench.core.errors import ConfigError

        if threads < 1:
            raise ConfigError("threads", f"need >= 1, got {threads}")
        self.config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = openvino.Core().compile_model(str(path), "CPU", self.config)
        self.request = self.compiled.create_infer_request()

    def get_inputs(self):
        return [_Named(self.compiled.inputs[0].get_any_name())]

    def run(self, _outputs, feed: dict):
        result = self.request.infer(feed)
        return [result[output].copy() for output in self.compiled.outputs]


@dataclass(frozen=True)
class _Named:
    name: str


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    import openvino

    return openvino.__version__


def check_runtime(runtime: str) -> None:
    """A clear error for an unknown runtime or one that is not installed, before anything runs."""
    from bench.core.errors import ConfigError

    if runtime not in RUNTIMES:
        raise ConfigError("--runtime", f"{runtime!r} is not one of torch, {', '.join(RUNTIMES)}")
    try:
        runtime_version(runtime)
    except ImportError:
        raise ConfigError(
            "--runtime", f"{runtime} is not installed (pip install -r requirements.txt installs it)"
        ) from None


def measure_runtime(
    run_id: str,
    runtime: str = "onnxruntime",
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    paths: RunPaths | None = None,
) -> dict[str, Any]:
    """Interleaved latency of the run's dense-shaped and deployable exports in ``runtime`` (module docstring)."""
    from bench.deploy.onnx_export import OrtModule, deploy_model, export_onnx, ort_session

    check_runtime(runtime)
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
    open_session = ort_session if runtime == "onnxruntime" else OpenVinoSession
    sessions = {name: OrtModule(open_session(summary["path"], threads)) for name, summary in exports.items()}
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
    version = runtime_version(runtime)
    result["runtime"] = {
        "name": runtime,
        "version": version,
        "provider": "CPUExecutionProvider" if runtime == "onnxruntime" else "CPU plugin",
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "opset": exports["ort_pruned"]["opset"],
        "files": {name: summary["path"] for name, summary in exports.items()},
    }
    if runtime == "openvino":
        result["runtime"]["config"] = sessions["ort_pruned"].session.config
    result["fingerprint"][runtime] = version
    ratio = result["ratios"]["ort_pruned"]
    result[RATIO_FIELD[runtime]] = {bs: r["ratio_of_medians"] for bs, r in ratio.items()}
    result["flops"] = {**flops, "ratio": round(flops["ort_pruned"] / flops["ort_dense"], 4)}
    return result


def result_path(run_id: str, runtime: str, paths: RunPaths | None = None) -> Path:
    return paths_or_env(paths).speed(run_id).with_suffix(f".{runtime}.json")


def write_result(result: dict[str, Any], run_id: str, out: str | None, paths: RunPaths | None = None) -> Path:
    path = Path(out) if out else result_path(run_id, result["runtime"]["name"], paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True))
    return path


def runtime_fields(run_id: str, paths: RunPaths | None = None) -> dict[str, Any]:
    """Row fields from the run's stored runtime results (module docstring, **Rows**); {} when none."""
    fields: dict[str, Any] = {}
    for runtime in RUNTIMES:
        path = result_path(run_id, runtime, paths)
        try:
            result = json.loads(path.read_text())
            by_batch = result[RATIO_FIELD[runtime]]
        except (OSError, ValueError, KeyError):
            continue
        if not by_batch:
            continue
        fields[RATIO_FIELD[runtime]] = by_batch[min(by_batch, key=int)]
        fields.setdefault("runtime_latency", {})[runtime] = {
            "ratio": by_batch,
            "flops_ratio": (result.get("flops") or {}).get("ratio"),
            "version": result["runtime"]["version"],
            "threads": result["runtime"]["intra_op_threads"],
            "cpu": (result.get("fingerprint") or {}).get("cpu"),
        }
    return fields


def with_runtime_fields(rows, paths: RunPaths | None = None):
    """``rows`` with :func:`runtime_fields` added where a row lacks them (a row's own values win)."""
    paths = paths_or_env(paths)
    folder = paths.root / "speed"
    measured = {p.name.split(".")[0] for p in folder.glob("*.json")} if folder.is_dir() else set()
    for row in rows:
        run_id = row.get("run_id")
        if run_id in measured:
            extra = runtime_fields(run_id, paths)
            merged = dict(row)
            for key, value in extra.items():
                if key == "runtime_latency":
                    merged[key] = {**value, **(row.get(key) or {})}
                else:
                    merged.setdefault(key, value)
            yield merged
        else:
            yield row
