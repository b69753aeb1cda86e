"""The pruner interface, typed configs, and the registry (built-ins + entry points).

A pruner never owns a training loop. The stage driver (``bench.training.stages.StageDriver``, called by the
native loop and by the mmengine hook alike) calls, per run::

    pruner.attach(layers)                      # layers carry weights + calibration statistics
    for each step of the pruning stage:
        pruner.on_step(progress)               # schedules: tau, phases, ramps (bench.core.schedules)
        masker.set_masks(pruner.masks())       # soft or hard unit masks (None = dense)
        loss = task_loss + pruner.penalty(); backward; optimizer.step()
        pruner.after_optimizer_step(optimizer)
    hard = pruner.finalize()                   # exact boolean unit masks at the target
    fine-tune with `hard` frozen

Extra learnables (scores, gates) go into the optimiser as their own groups (``param_groups``).

Building blocks a pruner uses instead of writing plumbing:

* state: ``state_dict`` saves ``parameters()`` and every attribute named in a ``state_attrs``
  declaration; ``load_state_dict`` restores them (no hand-written code);
* selection: ``select`` (exact top-k at the target or at a ramp level; N:M per row),
  ``keep_above`` (each unit's own decision; N:M top-N per row), ``budget_fixed``;
* unit scores: ``unit_rms``, ``weight_norms``;
* ``bench.core.schedules`` (ramps, phase plans, temperatures) and ``bench.core.pruning_blocks``
  (``straight_through``, ``HardMaskPruner``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bench.core.errors import ConfigError
from bench.core.masks import PrunableLayer
from bench.core.select import Allocation, hard_topk, keep_above
from bench.core.sparsity import Pattern

ENTRY_POINT_GROUP = "smartbench.pruners"
ALL_PATTERNS = ("unstructured", "block", "channel", "nm")


@dataclass(frozen=True)
class PrunerConfig:
    """Fields every pruner has. Subclasses add their own, validated in ``__post_init__``."""

    scope: str = "global"  # budget: one top-k over all layers, or per layer
    # the key knobs `smartbench tune` searches (bench.suites.tune): field -> candidate values,
    # the default among them; the protocol adds the retraining lr multiplier to every pruner's space
    # the knobs `smartbench tune` searches, MOST IMPORTANT FIRST (a suite's `tune: {knobs: K}` keeps the first K)
    search_space: ClassVar[dict[str, tuple]] = {}

    def __post_init__(self):
        check_choice(self, "scope", ("global", "layer"))

    @classmethod
    def from_dict(cls, values: dict[str, Any], owner: str = "pruner") -> PrunerConfig:
        """Build from (string) overrides; unknown fields and bad types are ConfigErrors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, raw in values.items():
            if key not in fields:
                raise ConfigError(f"{owner}.{key}", f"unknown option; allowed: {', '.join(sorted(fields))}")
            kwargs[key] = _coerce(raw, hints[key], f"{owner}.{key}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(raw: Any, hint: Any, field: str) -> Any:
    """``raw`` as a value of the declared type ``hint``, whatever its spelling.

    CLI overrides arrive as strings (``--opt tau0=2``), suite YAML values as YAML scalars
    (``tau0: 2`` is an int): both become the same ``float`` here, so the canonical config, and
    with it the run id, does not depend on how a value was typed."""
    name = getattr(hint, "__name__", str(hint))
    try:
        if isinstance(raw, str):
            if hint is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return raw.lower() in ("true", "1")
            if hint is int:
                return int(raw)
            if hint is float:
                return float(raw)
            return raw
        if hint is bool:
            if not isinstance(raw, bool):
                raise ValueError
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != int(raw):
                raise ValueError
            return int(raw)
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError
            return float(raw)
        if hint is str:
            raise ValueError
    except (ValueError, OverflowError):
        raise ConfigError(field, f"expected {name}, got {raw!r}") from None
    return raw


def check_range(config, field: str, low: float, high: float, low_open=False, high_open=False) -> None:
    value = getattr(config, field)
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(field, f"{value} is outside {lo}{low}, {high}{hi}")


def check_choice(config, field: str, choices: tuple) -> None:
    if getattr(config, field) not in choices:
        raise ConfigError(field, f"{getattr(config, field)!r} is not one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class Progress:
    """Where training is. ``fraction`` runs over [0, 1) within the current stage."""

    stage: str  # "prune" or "finetune"
    step: int
    steps: int
    epoch: int = 0
    # sum of the weights' lr over the pruning stage's steps (its recipe: peak lr, schedule, length),
    # from the task's budget (bench.core.schedules.prune_lr_sum); None where the loop is the user's
    lr_sum: float | None = None

    @property
    def fraction(self) -> float:
        return self.step / max(1, self.steps)


class Pruner:
    """Base class: a pruner overrides a few of these hooks."""

    name: ClassVar[str] = "abstract"
    Config: ClassVar[type[PrunerConfig]] = PrunerConfig
    patterns: ClassVar[tuple[str, ...]] = ALL_PATTERNS
    straight_through: ClassVar[bool] = False  # gradients reach pruned weights (SR-STE)
    # True for learned gates (PaS, AWG, SMART): during the pruning stage a channel gate of a layer
    # feeding a BatchNorm scales only the BN affine output and the conv weights stay dense, so an
    # "off" gate (0) still sees its channel's real activation gamma * x_hat + beta in its gradient
    # (not beta alone) and can come back; the hard switch zeroes the weights as for every pruner
    gates_see_activation: ClassVar[bool] = False
    control: ClassVar[bool] = False  # a control (random...), not a method: tables may set it apart
    # what a table row of this pruner is, where its name alone would mislead (a control, or a reading
    # of a method whose source could not be identified): every table lists it under its label
    table_note: ClassVar[str | None] = None
    # the table note of rows made at an earlier method_version, where it differs ({version: note})
    earlier_table_notes: ClassVar[dict[int, str]] = {}
    # a control that keeps every unit (``nomask``: dense, trained on with the same recipe): its rows
    # are references -- tables give them no best/sparsity marks, the kit checks "everything kept"
    keeps_all: ClassVar[bool] = False
    # a control that never sees the dense checkpoint (``scratch``): the run pipeline re-initialises
    # the model, installs ``finalize()``'s masks and trains it with the task's dense recipe for the
    # dense + prune + finetune epochs (bench.runs.run); a user's own loop (bench.api) refuses it
    trains_from_scratch: ClassVar[bool] = False
    # True when the unit scores given to ``select`` were built to be comparable across layers
    # (learned under one global budget, LAMP's normalisation, random draws). Read only by
    # leaderboard v2's ``ranking: mixed`` rule, which z-scores the others per layer first; the
    # protocol's ``raw`` rule ranks every pruner's scores as they are (bench.core.select).
    comparable_scores: ClassVar[bool] = False
    # True for one-shot pruners whose final selection is ``select`` on their own scores (magnitude,
    # random): they can run as the transplant control, ``allocation: from:RUN_ID`` (another run's
    # per-layer counts, this pruner's choice of units within each layer)
    transplantable: ClassVar[bool] = False
    # Attributes that state_dict() saves and load_state_dict() restores, besides parameters().
    # Each class names its own; they add up along the class hierarchy. Values: tensors, numbers,
    # strings, None, lists/tuples/dicts of those, or objects with state_dict/load_state_dict.
    state_attrs: ClassVar[tuple[str, ...]] = ()
    # The version of the method's behaviour: bump it (2, 3, ...) whenever a change alters what the
    # pruner does (masks, metrics: its golden outputs, tests/golden). It enters the run id when it is
    # not 1 (bench.runs.run.run_identity), so rows of the old and the new behaviour never share an
    # id, and every row records it (docs/adding-a-pruner.md, "Versioning a method").
    method_version: ClassVar[int] = 1

    def method_version_for(self, budget) -> int:
        """The version a run of this pruner under the task's ``budget`` (None: unknown) runs: the
        class's, unless the pruner keeps an earlier recipe selectable by a budget field (scratch)."""
        return self.method_version

    def __init__(self, config: PrunerConfig, pattern: Pattern, sparsity: float):
        if pattern.kind not in self.patterns:
            raise ConfigError(
                "pattern", f"pruner '{self.name}' does not support {pattern}; it supports {', '.join(self.patterns)}"
            )
        self.config = config
        self.pattern = pattern
        self.sparsity = sparsity
        self.layers: list[PrunableLayer] = []
        # the protocol's allocation rule (bench.core.select.Allocation), set by bench.runs.registry.build_pruner;
        # None (v1): the pruner's own ``config.scope`` on raw scores, one unit per layer at least
        self.allocation: Allocation | None = None

    # -- hooks ------------------------------------------------------------------------
    def attach(self, layers: list[PrunableLayer]) -> None:
        self.layers = layers

    def parameters(self) -> list[nn.Parameter]:
        return []

    def param_groups(self) -> list[dict]:
        """Optimizer groups for ``parameters()``; override to give them their own lr/decay."""
        params = self.parameters()
        return [{"params": params, "weight_decay": 0.0}] if params else []

    def masks(self) -> dict[str, Tensor] | None:
        return None

    def penalty(self) -> Tensor | float:
        return 0.0

    def on_step(self, progress: Progress) -> None:
        pass

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def finalize(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging (temperature, phase...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """``parameters()`` (as a list) and every attribute of ``state_attrs``, as copies that
        ``torch.load(weights_only=True)`` reads back."""
        state = {"parameters": [p.detach().clone() for p in self.parameters()]}
        state.update({name: _snapshot(getattr(self, name)) for name in self._state_names()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; an attribute missing from ``state`` (a checkpoint
        written before it was declared) keeps its current value."""
        with torch.no_grad():
            for p, saved in zip(self.parameters(), state.get("parameters", [])):
                p.copy_(saved)
        layers = getattr(self, "layers", None)
        device = layers[0].weight.device if layers else torch.device("cpu")
        for name in self._state_names():
            if name not in state:
                continue
            current = getattr(self, name, None)
            if hasattr(current, "load_state_dict"):  # a schedule or module with state of its own
                current.load_state_dict(_snapshot(state[name]))
            else:  # checkpoints hold CPU tensors: each goes back where its current value lives
                setattr(self, name, _placed(_snapshot(state[name]), current, device))

    @classmethod
    def _state_names(cls) -> list[str]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in vars(klass).get("state_attrs", ()):
                if name not in names:
                    names.append(name)
        return names

    # -- helpers for subclasses -------------------------------------------------------
    _step_masks: dict[str, Tensor] | None = None  # what masks() returned this step, kept for penalty()

    def keep_step_masks(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keep what ``masks()`` returns this step (and return it) for ``take_step_masks``."""
        self._step_masks = masks
        return masks

    def take_step_masks(self) -> dict[str, Tensor] | None:
        """The masks kept this step, once, else None: a penalty on the masks the stage driver
        installed for the forward (the parameters have not moved since) shares their graph and
        gate decision instead of computing them again."""
        masks, self._step_masks = self._step_masks, None
        return masks

    def select(self, scores: dict[str, Tensor], sparsity: float | None = None) -> dict[str, Tensor]:
        """Exact hard top-k of per-layer unit scores (bench.core.select.hard_topk) at the target, or at
        ``sparsity`` on a ramp towards it. N:M keeps N per row of M at the target (on a ramp, the
        per-row count falls from M to N), so a pruner never handles N:M itself."""
        level = self.sparsity if sparsity is None else sparsity
        return hard_topk(
            scores,
            self.pattern,
            level,
            self.config.scope,
            target=self.sparsity,
            allocation=self.allocation,
            comparable=self.comparable_scores,
        )

    def keep_above(self, scores: dict[str, Tensor], threshold: float) -> dict[str, Tensor]:
        """Bool unit masks ``score > threshold`` (gates deciding alone, no budget); N:M: the top N
        of every row of M instead; every layer keeps at least the allocation's floor
        (bench.core.select.keep_above)."""
        return keep_above(scores, self.pattern, threshold, self.allocation)

    @property
    def scope(self) -> str:
        """``global`` or ``layer``: the allocation's when the protocol sets one, else ``config.scope``
        (for what a pruner does with its budget during training: soft top-k, budget penalties)."""
        return self.allocation.scope if self.allocation is not None else self.config.scope

    @property
    def budget_fixed(self) -> bool:
        """True when the pattern fixes how many units every row keeps (N:M): ``select`` and
        ``keep_above`` hold the count by themselves, and a budget penalty has nothing to steer."""
        return self.pattern.per_row_budget

    def weight_norms(self) -> dict[str, Tensor]:
        """L2 norm of every unit of the current dense weights (|w| for single weights)."""
        return {layer.name: self.pattern.unit_norms(layer.weight.detach()) for layer in self.layers}

    def unit_rms(self, masks: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """RMS of every unit of the current dense weights (L2 norm / sqrt(unit size): units of
        different sizes compare), times ``masks`` when given (pruned units score 0)."""
        scores = {}
        for layer in self.layers:
            score = self.pattern.units(layer.weight.detach()).pow(2).mean(dim=-1).sqrt()
            scores[layer.name] = score if masks is None else score * masks[layer.name].to(score.dtype)
        return scores


def _placed(saved: Any, current: Any, device: torch.device) -> Any:
    """``saved`` with every tensor on the device of the tensor it replaces in ``current`` (or on
    ``device``, the layers' device, where ``current`` has none: e.g. a mask not yet decided)."""
    if isinstance(saved, Tensor):
        return saved.to(current.device if isinstance(current, Tensor) else device)
    if isinstance(saved, dict):
        current = current if isinstance(current, dict) else {}
        return {key: _placed(item, current.get(key), device) for key, item in saved.items()}
    if isinstance(saved, (list, tuple)):
        current = current if isinstance(current, (list, tuple)) and len(current) == len(saved) else [None] * len(saved)
        return type(saved)(_placed(item, cur, device) for item, cur in zip(saved, current))
    return saved


def _snapshot(value: Any) -> Any:
    """A detached copy in plain containers (``torch.load(weights_only=True)``-safe)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "state_dict"):
        return _snapshot(value.state_dict())
    raise TypeError(
        f"cannot checkpoint a {type(value).__name__}: a state attribute holds tensors, numbers, "
        "strings, None, lists/tuples/dicts of those, or an object with state_dict/load_state_dict"
    )


PRUNERS: dict[str, type[Pruner]] = {}


def every_unit_kept(layers) -> dict[str, Tensor]:
    """The final masks of a control that keeps every unit (``keeps_all``: nomask, scratch-full)."""
    return {layer.name: torch.ones(layer.unit_shape, dtype=torch.bool, device=layer.weight.device) for layer in layers}


def register_pruner(name: str):
    """Class decorator: ``@register_pruner("mymethod")``."""

    def wrap(cls: type[Pruner]) -> type[Pruner]:
        if name in PRUNERS and PRUNERS[name] is not cls:
            raise ValueError(f"pruner name '{name}' registered twice ({PRUNERS[name].__module__}, {cls.__module__})")
        cls.name = name
        PRUNERS[name] = cls
        return cls

    return wrap


def __getattr__(name: str):
    """Deprecated homes of the registry functions, kept for one release: use bench.runs.registry."""
    if name in ("load_pruners", "get_pruner_class", "build_pruner"):
        import warnings

        from bench.runs import registry  # the only upward import of the core, for this shim

        warnings.warn(f"bench.pruner.{name} moved to bench.runs.registry.{name}", DeprecationWarning, stacklevel=2)
        return getattr(registry, name)
    raise AttributeError(f"module 'bench.core.pruner' has no attribute {name!r}")
