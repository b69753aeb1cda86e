"""Keep a finished run's pruned weights, export them as a deployable model, load them back.

Two files, both plain ``torch.save`` of tensors / str / int / float / bool / lists / dicts, so
they load with ``torch.load(..., weights_only=True)``; no pickled ``nn.Module``:

* **saved run** ``runs/models/<run_id>.pt`` (:func:`save_pruned`, called at the end of a run):
  ``{"format": "smartbench-pruned", "version": 1, "meta": {...}, "state_dict": folded dense
  state (hard masks baked in), "hard_masks": {layer: bool unit mask}}``.
* **export** (:func:`export_run`, ``smartbench export RUN_ID --out FILE``): the same plus
  ``"task"``, ``"model"``, ``"pattern"``, ``"shrink_history"`` and, for the ``channel``
  pattern, the state dict of the *physically shrunk* model. ``shrink_history`` is Torch-Pruning's
  pruning history: a list of ``[root layer name, True, [removed output-channel indices]]``
  (indices in the dense model's numbering, applied in order; see bench/deploy/shrink.py for the rule of
  which channels are removed).

Load path (:func:`load_exported`): build the task's dense architecture
(``get_task(task, model).build_model()``), rebuild Torch-Pruning's dependency graph on the
task's example input and replay ``shrink_history`` (empty for non-channel patterns), then
``load_state_dict(strict=True)``. The result is a plain ``nn.Module`` in eval mode whose
``task.evaluate`` reproduces the run's metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from bench.core.artifacts import atomic_save, load_artifact
from bench.core.errors import ConfigError, DataError
from bench.core.paths import RunPaths, paths_or_env
from bench.runs.record import ResultStore
from bench.deploy.shrink import count_params, replay_shrink, shrink_channels
from bench.tasks.base import Task
from bench.tasks.registry import get_task

SAVED_FORMAT, EXPORT_FORMAT, VERSION = "smartbench-pruned", "smartbench-export", 1
ROW_FIELDS = (
    "run_id",
    "task",
    "model",
    "pruner",
    "pattern",
    "target_sparsity",
    "seed",
    "metric_name",
    "metric",
    "val_metric",
    "dense_metric",
    "achieved_sparsity",
    "weight_sparsity",
    "pruner_config",
    "budget",
    "data",
)


def saved_model_path(run_id: str, paths: RunPaths | None = None) -> Path:
    return paths_or_env(paths).model(run_id)


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(meta, default=str))


def save_pruned(run_dir_or_path, model: nn.Module, hard_masks: dict[str, Tensor], row_meta: dict[str, Any]) -> Path:
    """Store a run's folded weights and hard masks (atomic write); returns the file path.

    ``run_dir_or_path``: a runs folder (file goes to ``<dir>/models/<run_id>.pt``, run_id from
    ``row_meta["run_id"]``) or a path ending in ``.pt``. ``model`` must be folded
    (``masker.remove(fold=True)`` done). ``row_meta`` is JSON-like (run_id, task, model, pattern...).
    """
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("save_pruned needs the folded model: call masker.remove(fold=True) first")
    target = Path(run_dir_or_path)
    if target.suffix != ".pt":
        target = target / "models" / f"{row_meta['run_id']}.pt"
    payload = {
        "format": SAVED_FORMAT,
        "version": VERSION,
        "meta": _json_safe(row_meta),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "hard_masks": {k: v.detach().cpu().bool() for k, v in hard_masks.items()},
    }
    atomic_save(payload, target)
    return target


def load_saved(run_id_or_path, paths: RunPaths | None = None) -> dict[str, Any]:
    """The dict written by :func:`save_pruned` (by run id from the runs folder, or by path)."""
    path = Path(run_id_or_path)
    if path.suffix != ".pt":
        path = saved_model_path(str(run_id_or_path), paths)
    if not path.exists():
        raise DataError(f"no saved pruned model at {path} (the run predates save_pruned, or ran elsewhere)")
    payload = load_artifact(path, "saved pruned model")
    if payload.get("format") != SAVED_FORMAT:
        raise DataError(f"{path} is not a smartbench saved run (format {payload.get('format')!r})")
    return payload


def find_row(run_id: str, store: ResultStore | None = None) -> dict[str, Any]:
    row = (store or ResultStore()).get(run_id)
    if row is None:
        raise ConfigError("run_id", f"no run '{run_id}' in {(store or ResultStore()).path}")
    return row


def pruned_model(row: dict[str, Any], saved: dict[str, Any]) -> tuple[Task, nn.Module]:
    """The task and its dense architecture with the run's folded weights loaded (eval mode)."""
    task = get_task(row["task"], row["model"], row.get("data"))
    model = task.build_model()
    model.load_state_dict(saved["state_dict"])
    return task, model.eval()


def export_run(run_id: str, out, store: ResultStore | None = None, paths: RunPaths | None = None) -> dict[str, Any]:
    """Write the export file for a stored run; returns a short summary."""
    paths = paths_or_env(paths)
    row = find_row(run_id, store or ResultStore(paths.store))
    saved = load_saved(run_id, paths)
    task, model = pruned_model(row, saved)
    history, dense_params = [], count_params(model)
    if row["pattern"] == "channel":
        history = shrink_channels(model, saved["hard_masks"], task.example_input())
    payload = {
        "format": EXPORT_FORMAT,
        "version": VERSION,
        "task": row["task"],
        "model": row["model"],
        "pattern": row["pattern"],
        "meta": _json_safe({k: row.get(k) for k in ROW_FIELDS}),
        "shrink_history": history,
        "hard_masks": saved["hard_masks"],
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    out = Path(out)
    atomic_save(payload, out)
    return {
        "out": str(out),
        "run_id": run_id,
        "shrunk_groups": len(history),
        "dense_params": dense_params,
        "params": count_params(model),
    }


def load_exported(path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model (see module docstring); returns (model in eval mode, payload meta)."""
    payload = load_artifact(Path(path), "exported model")
    if payload.get("format") != EXPORT_FORMAT:
        raise DataError(f"{path} is not a smartbench export (format {payload.get('format')!r})")
    task = get_task(payload["task"], payload["model"], payload["meta"].get("data"))
    model = task.build_model()
    replay_shrink(model, payload["shrink_history"], task.example_input())
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval(), {**payload["meta"], "pattern": payload["pattern"], "hard_masks": payload["hard_masks"]}
