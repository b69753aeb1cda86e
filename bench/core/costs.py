"""Forward FLOPs per module and per pruning unit (``torch.utils.flop_counter``).

* :func:`module_flops`: total forward FLOPs of one eval forward and the FLOPs per module name
  (children included), as ``FlopCounterMode`` counts them (matmuls and convolutions; elementwise
  ops count 0).
* :func:`unit_costs`: the cost of one pruning unit of every covered layer, the layer's forward
  FLOPs per sample at the task's input size divided by its number of units. Every unit of a
  pattern holds equally many weights of its layer, and each weight of a conv or linear layer
  takes part in equally many multiply-adds, so within a layer every unit costs the same. This is
  what a ``flops`` budget counts (bench.core.select.Allocation) and what the audit reports
  (``achieved_flops_sparsity``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def module_flops(model: nn.Module, example_input) -> tuple[int, dict[str, int]]:
    """Total forward FLOPs and FLOPs per module name (children included), one eval forward."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            model(**example_input) if isinstance(example_input, dict) else model(example_input)
    finally:
        model.train(was_training)
    per_module = {}
    for key, ops in counter.get_flop_counts().items():
        if "." in key:  # keys are "<RootClass>.<module path>"
            per_module[key.split(".", 1)[1]] = int(sum(ops.values()))
    return int(counter.get_total_flops()), per_module


def per_sample(example_input) -> int:
    """Batch size of the example: the tensor's first dim, or that of a dict's first tensor (mm ``inputs``)."""
    tensors = list(example_input.values()) if isinstance(example_input, dict) else [example_input]
    first = next((t for t in tensors if isinstance(t, Tensor) and t.dim() > 0), None)
    return int(first.shape[0]) if first is not None else 1


def unit_costs(model: nn.Module, unit_counts: dict[str, int], example_input) -> dict[str, float]:
    """{layer: forward FLOPs per sample of one of its ``unit_counts[layer]`` units} (module docstring)."""
    _, per_module = module_flops(model, example_input)
    missing = [name for name in unit_counts if not per_module.get(name)]
    if missing:
        raise KeyError(f"FlopCounterMode saw no FLOPs in prunable layer(s) {missing[:3]}")
    batch = per_sample(example_input)
    return {name: per_module[name] / batch / units for name, units in unit_counts.items()}


def flops_audit(layers: list[dict], costs: dict[str, float]) -> dict:
    """The audit's FLOPs figures over the covered layers: each layer row gains ``flops_per_unit``;
    returns ``{flops_covered, flops_kept, achieved_flops_sparsity}`` (FLOPs per sample)."""
    total = kept = 0.0
    for row in layers:
        cost = costs[row["layer"]]
        row["flops_per_unit"] = cost
        total += cost * row["units"]
        kept += cost * row["kept_units"]
    return {
        "flops_covered": round(total),
        "flops_kept": round(kept),
        "achieved_flops_sparsity": 1.0 - kept / total if total else 0.0,
    }
