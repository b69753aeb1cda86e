"""ONNX export of a finished run, verified in ONNX Runtime, with a sparsity sidecar (docs/deploy.md).

**What is exported** (:func:`deploy_model`). The run's saved model (``runs/models/<run_id>.pt``:
folded weights, hard masks baked in) rebuilt on the task's architecture, in eval mode, as
``variant``:

* ``"pruned"`` -- the deployable model: for the ``channel`` pattern the physically shrunk model
  (bench/deploy/shrink.py, the same Torch-Pruning shrink as ``smartbench export``); for block,
  N:M and unstructured runs the dense shapes with the zeros baked in.
* ``"masked"`` -- the dense-shaped model with the masks baked in (for channel runs: the
  dense-shaped twin of the shrunk model, the latency baseline; for the other patterns the same
  graph as ``"pruned"``).

Classification and ViT models are exported as they are: input ``input`` ``(batch, C, H, W)``,
output ``logits`` ``(batch, classes)``. mm models (mmdet single-stage detectors, mmseg
encoder-decoders) are exported through their *tensor forward* ``model(inputs, mode="tensor")``
(backbone, neck, head): input ``inputs``, the preprocessed (normalised, padded) batch, outputs
``out0, out1, ...`` = the head's output tensors flattened in order (RetinaNet: the per-level
classification scores, then the per-level box deltas; FCN: the segmentation logits at the
decoder's stride). What stays in Python for mm models: the data preprocessor (normalisation,
padding), anchor decoding, score thresholding and NMS (detection), resizing the logits to the
image and the argmax (segmentation).

**Exporter.** The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), opset
:data:`DEFAULT_OPSET`, batch axis dynamic (``dynamic_axes``; H and W fixed at the task's image
size). Constant folding is off, so every initializer keeps its PyTorch parameter name and value
(``layer.weight``, exactly the tensor of the state dict, BatchNorm not fused): that is what makes
the sidecar's per-initializer masks readable. ONNX Runtime folds constants and fuses Conv+BN
itself when it builds a session. The file passes ``onnx.checker.check_model(full_check=True)``.

**Verification** (:func:`verify_onnx`). The task's own ``evaluate`` runs twice on the test split:
on the PyTorch model, and on the same model whose forward is ONNX Runtime (CPU execution
provider): for classification an :class:`OrtModule` in place of the model; for mm models the
real mm model whose backbone/neck/head forward is replaced by the session (``extract_feat``
passes the preprocessed batch through, the head's ``forward`` runs the session), so the
preprocessor and the head's post-processing (NMS, resizing) are the ones of the task. On every
test batch the session's outputs are compared with the PyTorch tensor forward's:
``max_abs_error`` is the largest absolute difference over all outputs and batches.

**Sidecar** (:func:`sparsity_sidecar`, block and N:M runs): JSON ``<file>.onnx.sparsity.json``,
also stored in the ONNX model's ``metadata_props`` under ``smartbench.sparsity``. Per pruned
layer: its initializer, the pattern (``block`` with ``block: [R, C]`` or ``nm`` with
``nm: [N, M]``), the layout (the weight as the matrix ``(out, kh*kw*in)``, input channels
contiguous: a Conv weight ``(O, I, kh, kw)`` permuted to ``(O, kh, kw, I)`` then flattened, a
Gemm weight ``(O, I)`` as is -- bench/core/sparsity.py) and the kept-unit bitmap: for
``block:RxC`` a grid ``(O/R, kh*kw*I/C)`` (bit ``(i, j)``: rows ``i*R..i*R+R-1``, columns
``j*C..j*C+C-1`` of the matrix), for ``nm:N:M`` the kept-weight grid ``(O, kh*kw*I)`` (every
M consecutive bits of a row hold at most N ones); ``numpy.packbits`` of the row-major grid
(big-endian bit order), base64. :func:`read_sidecar_masks` decodes it; :func:`masks_from_zeros`
derives the same grids from an exported weight's zeros.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from bench.core.errors import ConfigError, DataError
from bench.core.paths import RunPaths, paths_or_env
from bench.core.sparsity import NM, Block, parse_pattern
from bench.deploy.shrink import count_params, shrink_channels

DEFAULT_OPSET = 17
VARIANTS = ("pruned", "masked")
SIDECAR_FORMAT, SIDECAR_VERSION = "smartbench-sparsity", 1
SIDECAR_SUFFIX = ".sparsity.json"
LAYOUT = (
    "(out, kh*kw*in), input channels contiguous: a Conv weight (O, I, kh, kw) is permuted to "
    "(O, kh, kw, I) and flattened to (O, kh*kw*I); a Gemm/MatMul weight (O, I) is used as is"
)
BITMAP_ENCODING = "base64 of numpy.packbits(grid, bitorder='big') of the row-major bool grid of shape 'grid'"


# -- the model to export ----------------------------------------------------------------------
class TensorForward(nn.Module):
    """An mm model's tensor forward ``model(inputs, mode="tensor")`` with its outputs flattened to a
    tuple (``spec``: the pytree structure of the last call, to regroup them)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.spec = None

    def forward(self, inputs: Tensor) -> tuple[Tensor, ...]:
        flat, self.spec = tree_flatten(self.model(inputs, mode="tensor"))
        return tuple(flat)


@dataclass
class Deployable:
    """A run's model ready to export: ``module`` takes one tensor (``example``) and returns the
    exported outputs; ``model`` is the task's model (the mm model for mm tasks)."""

    row: dict[str, Any]
    task: Any
    model: nn.Module
    module: nn.Module
    example: Tensor
    hard_masks: dict[str, Tensor]
    variant: str
    dense_params: int

    @property
    def is_mm(self) -> bool:
        return isinstance(self.module, TensorForward)

    @property
    def input_name(self) -> str:
        return "inputs" if self.is_mm else "input"

    def output_names(self) -> list[str]:
        if not self.is_mm:
            return ["logits"]
        with torch.no_grad():
            count = len(self.module(self.example))
        return [f"out{i}" for i in range(count)]


def deploy_model(run_id: str, paths: RunPaths | None = None, variant: str = "pruned") -> Deployable:
    """The run's saved model rebuilt as ``variant`` (see the module docstring), eval mode."""
    from bench.runs.export import find_row, load_saved, pruned_model
    from bench.runs.record import ResultStore

    if variant not in VARIANTS:
        raise ConfigError("variant", f"'{variant}' is not one of {', '.join(VARIANTS)}")
    paths = paths_or_env(paths)
    row = find_row(run_id, ResultStore(paths.store))
    saved = load_saved(run_id, paths)
    task = _task_of(row)
    with task.quiet():
        _, model = pruned_model(row, saved)
    dense_params = count_params(model)
    example = task.example_input()
    if row["pattern"] == "channel" and variant == "pruned":
        shrink_channels(model, saved["hard_masks"], example)
    model.eval()
    if isinstance(example, dict):
        if not (hasattr(model, "bbox_head") or hasattr(model, "decode_head")):
            raise ConfigError(
                "task", f"ONNX export of '{row['task']}' needs a single-stage detector or an encoder-decoder segmentor"
            )
        module, example = TensorForward(model).eval(), example["inputs"]
    else:
        module = model
    return Deployable(row, task, model, module, example, saved["hard_masks"], variant, dense_params)


def _task_of(row: dict[str, Any]):
    from bench.tasks.registry import get_task

    return get_task(row["task"], row["model"], row.get("data"))


# -- ONNX Runtime -------------------------------------------------------------------------------
def ort_session(path, threads: int = 1):
    """An ONNX Runtime session on the CPU execution provider with ``threads`` intra-op threads
    (one inter-op thread, sequential execution, all graph optimisations)."""
    import onnxruntime as ort

    if threads < 1:
        raise ConfigError("threads", f"need >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _max_abs(got: list[Tensor], ref: list[Tensor]) -> float:
    if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
        raise DataError("the ONNX model's outputs do not have the PyTorch model's shapes")
    return max((float((g.float() - r.float()).abs().max()) if g.numel() else 0.0) for g, r in zip(got, ref))


class OrtModule(nn.Module):
    """An ONNX Runtime session behind an ``nn.Module`` interface (no parameters, so ``device_of``
    is the CPU): ``forward(x)`` returns the session's outputs as torch tensors (one tensor when the
    graph has one output). With ``reference`` (the PyTorch module that was exported) every call
    also runs it on the same input and keeps the largest absolute difference in ``max_abs_error``."""

    def __init__(self, session, reference: nn.Module | None = None):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.reference = [reference] if reference is not None else []  # a list: not a submodule
        self.max_abs_error = 0.0
        self.calls = 0

    def run(self, x: Tensor) -> list[Tensor]:
        feed = {self.input_name: x.detach().cpu().float().contiguous().numpy()}
        return [torch.from_numpy(out) for out in self.session.run(None, feed)]

    def forward(self, x: Tensor):
        outputs = self.run(x)
        if self.reference:
            with torch.no_grad():
                ref = self.reference[0](x)
            ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
            self.max_abs_error = max(self.max_abs_error, _max_abs(outputs, ref))
        self.calls += 1
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def ort_mm_model(deployable: Deployable, session) -> tuple[nn.Module, OrtModule]:
    """A copy of the mm model whose tensor forward runs in ONNX Runtime: ``extract_feat`` passes the
    preprocessed batch through and the head's ``forward`` runs the session and regroups its outputs
    as the head's own (``TensorForward.spec``). Returns (model, the OrtModule comparing against the
    PyTorch tensor forward)."""
    if deployable.module.spec is None:
        with torch.no_grad():
            deployable.module(deployable.example)
    spec = deployable.module.spec
    runner = OrtModule(session, reference=deployable.module)
    model = copy.deepcopy(deployable.model).eval()
    head = model.bbox_head if hasattr(model, "bbox_head") else model.decode_head

    def head_forward(inputs):
        out = runner(inputs)
        return tree_unflatten(list(out) if isinstance(out, tuple) else [out], spec)

    model.extract_feat = lambda inputs: inputs
    head.forward = head_forward
    return model, runner


def verify_onnx(
    path,
    run_id: str,
    paths: RunPaths | None = None,
    variant: str = "pruned",
    split: str = "test",
    threads: int | None = None,
    deployable: Deployable | None = None,
) -> dict[str, Any]:
    """Compare the ONNX file with the run's PyTorch model on the task's ``split`` (module docstring):
    ``max_abs_error`` (fp32 outputs, every batch of the split), ``metric_torch``, ``metric_ort`` and
    ``metric_diff`` (= ort - torch, in the task's metric points)."""
    deployable = deployable or deploy_model(run_id, paths, variant)
    session = ort_session(path, threads or torch.get_num_threads())
    task = deployable.task
    with torch.no_grad():
        metric_torch = float(task.evaluate(deployable.model, split))
        if deployable.is_mm:
            model, runner = ort_mm_model(deployable, session)
            metric_ort = float(task.evaluate(model, split))
        else:
            runner = OrtModule(session, reference=deployable.module)
            metric_ort = float(task.evaluate(runner, split))
    if runner.calls == 0:
        raise DataError(f"the {split} split of '{task.name}' never reached the ONNX model")
    return {
        "split": split,
        "metric_name": task.metric_name,
        "metric_torch": metric_torch,
        "metric_ort": metric_ort,
        "metric_diff": round(metric_ort - metric_torch, 6),
        "max_abs_error": runner.max_abs_error,
        "batches": runner.calls,
    }


# -- sparsity sidecar ---------------------------------------------------------------------------
def _pack(grid: np.ndarray) -> str:
    return base64.b64encode(np.packbits(grid.astype(bool).reshape(-1), bitorder="big").tobytes()).decode("ascii")


def _unpack(text: str, shape: list[int]) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), bitorder="big")
    return bits[: math.prod(shape)].reshape(shape).astype(bool)


def unit_grid(pattern, unit_mask: Tensor, weight_shape) -> np.ndarray:
    """The kept-unit bitmap of one layer as a bool grid (module docstring) from its hard unit mask."""
    out_c = int(weight_shape[0])
    cols = math.prod(int(s) for s in weight_shape) // out_c
    mask = unit_mask.detach().cpu().bool()
    if isinstance(pattern, Block):
        return mask.reshape(out_c // pattern.rows, cols // pattern.cols).numpy()
    if isinstance(pattern, NM):
        return mask.reshape(out_c, cols).numpy()
    raise ConfigError("pattern", f"the sparsity sidecar covers block and N:M patterns, not {pattern}")


def masks_from_zeros(weight: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    """The kept-unit grid of a sidecar ``entry`` derived from the exported weight's zeros, through the
    pattern's own unit layout (``Pattern.units``): a block is kept when any of its weights is
    non-zero; for N:M every non-zero weight is kept."""
    if entry["pattern"] == "block":
        pattern = parse_pattern("block:{}x{}".format(*entry["block"]))
    elif entry["pattern"] == "nm":
        pattern = parse_pattern("nm:{}:{}".format(*entry["nm"]))
    else:
        raise DataError(f"unknown sidecar pattern {entry['pattern']!r}")
    units = pattern.units(torch.from_numpy(np.array(weight, copy=True)))
    return (units != 0).any(-1).reshape(entry["grid"]).numpy()


def sparsity_sidecar(deployable: Deployable, initializers: set[str]) -> dict[str, Any] | None:
    """The sidecar dict of a block / N:M run (None for other patterns)."""
    pattern = parse_pattern(deployable.row["pattern"])
    if not isinstance(pattern, (Block, NM)):
        return None
    modules = dict(deployable.model.named_modules())
    layers = []
    for layer, unit_mask in sorted(deployable.hard_masks.items()):
        weight = modules[layer].weight
        name = f"{'model.' if deployable.is_mm else ''}{layer}.weight"
        if name not in initializers:
            raise DataError(f"pruned weight '{layer}.weight' is not an initializer of the ONNX graph (as '{name}')")
        grid = unit_grid(pattern, unit_mask, weight.shape)
        entry = {
            "layer": layer,
            "initializer": name,
            "weight_shape": list(weight.shape),
            "pattern": pattern.kind,
            "grid": list(grid.shape),
            "kept_units": int(grid.sum()),
            "units": int(grid.size),
            "bitmap": _pack(grid),
        }
        entry.update(
            {"block": [pattern.rows, pattern.cols]} if isinstance(pattern, Block) else {"nm": [pattern.n, pattern.m]}
        )
        layers.append(entry)
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "run_id": deployable.row["run_id"],
        "pattern": str(pattern),
        "layout": LAYOUT,
        "bitmap_encoding": BITMAP_ENCODING,
        "layers": layers,
    }


def read_sidecar_masks(sidecar: dict[str, Any] | str | Path) -> dict[str, np.ndarray]:
    """initializer name -> kept-unit bool grid, from a sidecar dict or its JSON file."""
    if not isinstance(sidecar, dict):
        sidecar = json.loads(Path(sidecar).read_text())
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise DataError(f"not a smartbench sparsity sidecar (format {sidecar.get('format')!r})")
    return {entry["initializer"]: _unpack(entry["bitmap"], entry["grid"]) for entry in sidecar["layers"]}


# -- export ---------------------------------------------------------------------------------
def _shape(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def export_onnx(
    run_id: str,
    out: Path,
    paths: RunPaths | None = None,
    variant: str = "pruned",
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    split: str = "test",
    threads: int | None = None,
    deployable: Deployable | None = None,
) -> dict[str, Any]:
    """Write ``out`` (.onnx) for a stored run, and ``out`` + ``.sparsity.json`` for block / N:M runs;
    check it with ``onnx.checker``; with ``verify`` compare it in ONNX Runtime (:func:`verify_onnx`).

    Returns a summary: ``path``, ``sidecar`` (or None), ``run_id``, ``task``, ``pattern``,
    ``variant``, ``opset``, ``exporter``, ``inputs`` / ``outputs`` (name and shape, ``"batch"`` for
    the dynamic axis), ``dynamic_axes``, ``params``, ``dense_params`` and, with ``verify``,
    ``split``, ``metric_name``, ``metric_torch``, ``metric_ort``, ``metric_diff``,
    ``max_abs_error``, ``batches``. ``deployable``: the model of :func:`deploy_model` when the caller
    already built it (it must be the run's ``variant``)."""
    import onnx

    if not 7 <= int(opset) <= 20:
        raise ConfigError("--opset", f"the TorchScript ONNX exporter takes opsets 7..20, got {opset}")
    deployable = deployable or deploy_model(run_id, paths, variant)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    input_name, output_names = deployable.input_name, deployable.output_names()
    dynamic_axes = {name: {0: "batch"} for name in [input_name, *output_names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            deployable.module,
            (deployable.example,),
            str(out),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=int(opset),
            do_constant_folding=False,  # initializers keep their parameter names and values (sidecar)
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    sidecar = sparsity_sidecar(deployable, {init.name for init in proto.graph.initializer})
    metadata = {
        "smartbench.run_id": run_id,
        "smartbench.task": deployable.row["task"],
        "smartbench.pattern": deployable.row["pattern"],
        "smartbench.variant": variant,
    }
    sidecar_path = None
    if sidecar is not None:
        metadata["smartbench.sparsity"] = json.dumps(sidecar, separators=(",", ":"))
        sidecar_path = out.with_name(out.name + SIDECAR_SUFFIX)
        sidecar_path.write_text(json.dumps(sidecar, indent=1))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    onnx.checker.check_model(str(out), full_check=True)
    summary = {
        "path": str(out),
        "sidecar": str(sidecar_path) if sidecar_path else None,
        "run_id": run_id,
        "task": deployable.row["task"],
        "pattern": deployable.row["pattern"],
        "variant": variant,
        "exporter": "torchscript",
        "opset": int(opset),
        "inputs": [{"name": v.name, "shape": _shape(v)} for v in proto.graph.input],
        "outputs": [{"name": v.name, "shape": _shape(v)} for v in proto.graph.output],
        "dynamic_axes": dynamic_axes,
        "params": count_params(deployable.model),
        "dense_params": deployable.dense_params,
        "checker": "passed",
    }
    if verify:
        summary.update(verify_onnx(out, run_id, paths, variant, split, threads, deployable))
    return summary
