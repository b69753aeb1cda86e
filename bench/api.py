"""Prune your own ``nn.Module`` inside your own training loop, with the stage driver the suites use.

::

    import bench

    pruning = bench.prune(model, pruner="smart", pattern="block:1x8", sparsity=0.9, steps=1000,
                          example_input=x[:2])
    optimizer = torch.optim.SGD([{"params": model.parameters()}, *pruning.param_groups()], lr=0.01)
    for x, y in batches:                      # the pruning stage: `steps` optimizer steps
        pruning.step()                        # schedules + this step's (soft) masks, before the forward
        loss = criterion(model(x), y) + pruning.penalty()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        pruning.after_optimizer_step(optimizer)
    hard = pruning.finalize()                 # exact masks at the target, installed; fine-tune on
    pruning.export("pruned.pt")               # folded weights + hard masks (bench.runs.export format)

The model keeps its dense shapes: masks act through ``torch.nn.utils.parametrize`` until
:meth:`Pruning.remove` folds them into the weights. Everything is validated (pruner, options,
pattern against every layer, sparsity) before the first step, with the errors of the CLI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from bench.core.costs import flops_audit, unit_costs
from bench.core.errors import ConfigError
from bench.core.masks import Masker, covered_layers, find_prunable
from bench.core.select import Allocation, protocol_allocation
from bench.core.sparsity import parse_pattern, resolve_sparsity
from bench.deploy.shrink import folded_copy
from bench.runs.export import save_pruned
from bench.runs.registry import build_pruner
from bench.training.stages import StageDriver


def _default_forward(model: nn.Module, batch):
    """``model(x)`` for a tensor or an ``(x, y)`` pair, ``model(**batch)`` for a keyword dict."""
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch[0] if isinstance(batch, (tuple, list)) else batch)


class Pruning:
    """A pruner attached to a model; the caller's loop calls it at four points (module docstring)."""

    def __init__(self, model: nn.Module, driver: StageDriver, steps: int):
        self.model, self.driver, self.steps = model, driver, steps
        self.dense_layers: dict[str, str] = {}  # left dense: the pattern cannot cover them (reason)
        self.steps_done = 0

    @property
    def pruner(self):
        return self.driver.pruner

    @property
    def masker(self) -> Masker:
        return self.driver.masker

    @property
    def pruning(self) -> bool:
        """True during the pruning stage, False once the hard masks are final."""
        return self.driver.pruning

    def param_groups(self) -> list[dict]:
        """The pruner's own learnables (scores, gates) as optimizer groups: add them to your optimizer."""
        return self.driver.param_groups()

    def step(self) -> None:
        """Before each forward pass. After ``steps`` calls the masks are finalized automatically."""
        if self.driver.hard is None and self.steps_done >= self.steps:
            self.finalize()
        if self.driver.pruning:
            self.driver.before_forward(self.steps_done, 0)
            self.steps_done += 1

    def penalty(self) -> Tensor | float:
        """The pruner's regulariser, to add to your loss (0 once the masks are final)."""
        return self.driver.penalty()

    def after_optimizer_step(self, optimizer) -> None:
        self.driver.after_optimizer_step(optimizer)

    def finalize(self) -> dict[str, Tensor]:
        """Exact hard unit masks at the target, installed in the model for fine-tuning."""
        if self.driver.hard is None:
            self.driver.start_epoch(1)  # the end of the (one-epoch) pruning stage
        return self.driver.hard

    def audit(self) -> dict[str, Any]:
        """Per-layer and global sparsity of the final masks, and the pattern check."""
        allocation = self.pruner.allocation
        audit = self.masker.audit(self.finalize(), allocation)
        if allocation is not None and allocation.costs:  # a FLOPs budget: what it removed
            audit.update(flops_audit(audit["layers"], allocation.costs), budget_kind=allocation.budget)
        if self.dense_layers:  # prunable layers the pattern cannot cover (bench.core.masks.covered_layers)
            audit["dense_layers"] = [{"layer": name, "reason": why} for name, why in self.dense_layers.items()]
        return audit

    def export(self, path, meta: dict[str, Any] | None = None) -> Path:
        """Save folded weights and hard masks to ``path`` (``*.pt``; the model is left as it is).

        The file is the saved-run format of bench.runs.export: ``load_saved(path)`` reads it."""
        if Path(path).suffix != ".pt":
            raise ConfigError("path", f"the export file name must end in .pt, got {str(path)!r}")
        hard = self.finalize()
        plain = folded_copy(self.model, self.masker, hard)
        info = {"pruner": self.pruner.name, "pattern": str(self.pruner.pattern), "sparsity": self.pruner.sparsity}
        return save_pruned(Path(path), plain, hard, {**info, **(meta or {})})

    def remove(self) -> nn.Module:
        """Fold the final masks into the model's weights and remove the parametrizations."""
        self.finalize()
        self.masker.remove(fold=True)
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Pruner state and masks, to checkpoint with your model and optimizer."""
        return {"steps_done": self.steps_done, **self.driver.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = state["steps_done"]
        self.driver.load_state_dict(state)


def prune(
    model: nn.Module,
    pruner: str,
    pattern: str,
    sparsity: float | None = None,
    steps: int = 1000,
    example_input=None,
    calibration: Iterable | None = None,
    forward: Callable[[nn.Module, Any], Any] = _default_forward,
    options: dict[str, Any] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    keep_first_last: bool = True,
    allocation: str | dict | None = "protocol",
    budget: str = "params",
    log: Callable[[str], None] = lambda _message: None,
) -> Pruning:
    """Attach ``pruner`` to ``model`` for a pruning stage of ``steps`` optimizer steps.

    ``example_input``: one input batch (a tensor, or the keyword dict of ``model(**x)``), used to
    trace which BatchNorm follows which conv (channel pattern); ``calibration``: batches for the
    input statistics some pruners use (default: ``[example_input]``), run through
    ``forward(model, batch)``. ``include``/``exclude``/``keep_first_last`` choose the layers as in
    a task (bench.core.masks.find_prunable). ``options``: the pruner's config overrides.
    ``allocation``: ``"protocol"`` (default: one global ranking with the keep floor min(10 %, half
    the kept fraction), bench.core.select.protocol_allocation), ``"uniform"``, ``"global"``,
    ``{"policy": ..., "floor": ...}``, or ``"v1"``/None (the pruner's own scope, no floor).
    ``budget``: ``"params"`` (the sparsity counts units) or ``"flops"`` (it counts the covered
    layers' forward FLOPs at ``example_input``'s size, kept to within one unit; without an
    ``allocation``, the protocol's: global with the floor min(10 %, half the kept fraction)).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError("steps", f"must be an integer >= 1, got {steps!r}")
    if example_input is None:
        raise ConfigError("example_input", "one input batch of the model is needed (masks trace the model once)")
    parsed = parse_pattern(pattern)
    target = resolve_sparsity(parsed, sparsity)
    if budget not in ("params", "flops"):
        raise ConfigError("budget", f"{budget!r} is not one of params, flops")
    rule = Allocation.from_value(protocol_allocation(allocation, target))
    if budget == "flops":
        rule = rule or Allocation.from_value(protocol_allocation("protocol", target))  # v1 has no budget
        rule = dataclasses.replace(rule, budget="flops")
    instance = build_pruner(pruner, parsed, target, options, rule)
    if instance.trains_from_scratch:
        raise ConfigError(
            "pruner",
            f"'{pruner}' is a control that trains a re-initialised model with a task's dense recipe "
            "(smartbench run / suites); it has no meaning on your model in your loop",
        )
    names = find_prunable(model, include, exclude, keep_first_last)
    if not names:
        raise ConfigError("include", "no prunable Conv2d/Linear layer selected")
    unit_counts, dense_layers = covered_layers(model, names, parsed)  # the rest stays dense (listed in the audit)
    if rule is not None and rule.budget == "flops":
        rule = rule.with_costs(unit_costs(model, unit_counts, example_input))
        instance.allocation = rule
    if rule is not None:
        rule.check(unit_counts, parsed, target)
    masker = Masker(model, list(unit_counts), parsed, example_input)
    driver = StageDriver(instance, masker, prune_epochs=1, finetune_epochs=0, log=log)
    driver.setup(list(calibration) if calibration is not None else [example_input], forward)
    driver.begin(steps)
    driver.start_epoch(0)
    pruning = Pruning(model, driver, steps)
    pruning.dense_layers = dense_layers
    return pruning
