"""Machinery of the conformance kit: a tiny real model, an in-memory task with a micro budget,
runs through the real ``bench.training.train.PruneTrainer``, and one check function per invariant.

Every check takes plain objects (a pruner class, a :class:`KitCase`, a :class:`KitRun`) and
raises ``AssertionError`` with a precise message, so the kit can be pointed at any pruner class,
registered or not (tests/conformance/test_scaffold.py runs it on a freshly generated file).

The model (:class:`TinyNet`, 8x8 single-channel input) has a stem conv, a residual block with
BatchNorm and a 1x1 projection shortcut, and a two-layer head. With the default discovery the
stem and the classifier stay dense, which leaves four prunable layers of different shapes
(3x3 convs with 8 and 16 input channels, a 1x1 conv, a Linear) -- every concrete pattern below
tiles all of them. The task (:class:`KitTask`) draws 96 fixed random images; the budget is
2 pruning epochs + 1 fine-tuning epoch of 6 steps, SGD with momentum and weight decay.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bench.pruner
import bench.runs.registry
from bench.core.costs import flops_audit, unit_costs
from bench.core.errors import ConfigError
from bench.core.masks import Masker, calibrate, covered_layers, find_prunable
from bench.core.select import Allocation, expected_kept
from bench.core.sparsity import OutputChannel, parse_pattern, resolve_sparsity
from bench.pruner import ALL_PATTERNS, Pruner, PrunerConfig
from bench.tasks.base import Budget, Task, seeded
from bench.training.stages import StageDriver
from bench.training.train import PruneTrainer, seed_everything

# The concrete patterns the kit runs for each declared pattern kind, and the targets.
KIT_PATTERNS = {
    "unstructured": ("unstructured",),
    "block": ("block:1x8", "block:2x4"),
    "channel": ("channel",),
    "nm": ("nm:2:4",),
}
KIT_SPARSITIES = (0.5, 0.75)  # N:M fixes its own (1 - N/M)
KIT_SEED = 0
EXTRA_FINETUNE_STEPS = 4


# -- model and task ---------------------------------------------------------------------
class TinyNet(nn.Module):
    """stem conv -> residual block (conv-BN-ReLU-conv-BN + 1x1 shortcut) -> pool -> fc -> fc."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.shortcut = nn.Conv2d(8, 16, 1, bias=False)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.bn_a(self.conv_a(x)))
        y = F.relu(self.bn_b(self.conv_b(y)) + self.shortcut(x))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(y)))


class SimulatedKill(RuntimeError):
    """Raised by :class:`KitTask` at the start of ``kill_at_epoch`` (after the previous checkpoint)."""


class KitTask(Task):
    """In-memory random-image task with a micro budget; records every training loss."""

    name = "conformance-tiny"
    family = "classification"
    metric_name = "loss"
    budget = Budget(
        dense_epochs=0,
        prune_epochs=2,
        finetune_epochs=1,
        batch_size=16,
        lr=0.1,
        prune_lr=0.05,
        weight_decay=5e-4,
        momentum=0.9,
        calib_batches=2,
    )
    images = 96

    def __init__(self, kill_at_epoch: int | None = None):
        super().__init__("tinynet")
        self.kill_at_epoch = kill_at_epoch
        generator = seeded(1234)
        self.x = torch.randn(self.images, 1, 8, 8, generator=generator)
        projection = torch.randn(64, 10, generator=generator)
        self.y = (self.x.reshape(self.images, -1) @ projection).argmax(1)  # learnable labels
        self.losses: list[float] = []

    def build_model(self) -> nn.Module:
        return TinyNet()

    def example_input(self) -> Tensor:
        return self.x[:2]

    def dataset_hash(self) -> str:
        return "conformance-random-1234"

    def steps_per_epoch(self) -> int:
        return self.images // self.budget.batch_size

    def train_batches(self, epoch: int, seed: int):
        if epoch == self.kill_at_epoch:
            raise SimulatedKill(f"simulated kill at the start of epoch {epoch}")
        order = torch.randperm(self.images, generator=seeded(seed * 100_003 + epoch))
        bs = self.budget.batch_size
        for i in range(self.steps_per_epoch()):
            idx = order[i * bs : (i + 1) * bs]
            yield self.x[idx], self.y[idx]

    def calibration_batches(self) -> list:
        bs = self.budget.batch_size
        return [
            (self.x[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs]) for i in range(self.budget.calib_batches)
        ]

    def forward(self, model: nn.Module, batch) -> Tensor:
        return model(batch[0])

    def loss(self, model: nn.Module, batch) -> Tensor:
        loss = F.cross_entropy(model(batch[0]), batch[1])
        self.losses.append(loss.item())
        return loss


@functools.cache
def dense_state() -> dict[str, Tensor]:
    """The shared starting point of every kit run (a seeded fresh TinyNet)."""
    torch.manual_seed(KIT_SEED)
    return {k: v.clone() for k, v in TinyNet().state_dict().items()}


# -- registry and cases -----------------------------------------------------------------
def registered_pruners() -> dict[str, type[Pruner]]:
    """Every pruner the project knows: smart, baselines/*, and ``smartbench.pruners`` entry points."""
    return dict(bench.runs.registry.load_pruners())


@dataclass(frozen=True)
class KitCase:
    pruner: type[Pruner]
    pattern: str
    sparsity: float

    @property
    def id(self) -> str:
        return f"{self.pruner.name}-{self.pattern}-{self.sparsity:g}"


def cases_for(cls: type[Pruner]) -> list[KitCase]:
    out = []
    for kind in cls.patterns:
        for text in KIT_PATTERNS.get(kind, ()):
            pattern = parse_pattern(text)
            targets = (None,) if pattern.fixed_sparsity is not None else KIT_SPARSITIES
            out += [KitCase(cls, text, resolve_sparsity(pattern, s)) for s in targets]
    return out


def kit_options(cls: type[Pruner]) -> dict:
    """Config overrides the kit uses: defaults, with ``projection=True`` where a config has it."""
    names = {f.name for f in dataclasses.fields(cls.Config)}
    return {"projection": True} if "projection" in names else {}


def build(case: KitCase, allocation: Allocation | None = None) -> Pruner:
    config = case.pruner.Config.from_dict(kit_options(case.pruner), owner=case.pruner.name)
    pruner = case.pruner(config, parse_pattern(case.pattern), case.sparsity)
    pruner.allocation = allocation
    return pruner


# -- runs -------------------------------------------------------------------------------
@dataclass
class KitRun:
    case: KitCase
    task: KitTask
    model: nn.Module
    masker: Masker
    pruner: Pruner
    hard: dict[str, Tensor]
    log: list[str] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return self.task.losses


def fresh_setup(case: KitCase, kill_at_epoch: int | None = None, allocation: Allocation | None = None):
    """Seeded fresh task, model (dense start), masker and pruner, as bench.runs.run does it."""
    seed_everything(KIT_SEED)
    task = KitTask(kill_at_epoch)
    model = task.build_model()
    model.load_state_dict(dense_state())
    names = find_prunable(model, task.include, task.exclude, task.keep_first_last)
    if allocation is not None and allocation.budget == "flops":  # as bench.runs.run.resolve measures them
        counts, _ = covered_layers(model, names, parse_pattern(case.pattern))
        allocation = allocation.with_costs(unit_costs(model, counts, task.example_input()))
    masker = Masker(model, names, parse_pattern(case.pattern), task.example_input())
    return task, model, masker, build(case, allocation)


def run_case(
    case: KitCase,
    checkpoint: Path | None = None,
    kill_at_epoch: int | None = None,
    allocation: Allocation | None = None,
    watch: Callable[[Pruner], None] | None = None,
) -> KitRun:
    """One full run through the real stage driver and native loop (raises SimulatedKill when asked to).
    ``watch``: called with the pruner before training (e.g. to record its training-time masks)."""
    task, model, masker, pruner = fresh_setup(case, kill_at_epoch, allocation)
    if watch is not None:
        watch(pruner)
    log: list[str] = []
    b = task.budget
    driver = StageDriver(pruner, masker, b.prune_epochs, b.finetune_epochs, log.append, budget=b)
    driver.setup(task.calibration_batches(), task.forward)
    hard = PruneTrainer(task, model, driver, KIT_SEED, checkpoint, log.append).run()
    return KitRun(case, task, model, masker, pruner, hard, log)


@functools.cache
def reference_run(case: KitCase) -> KitRun:
    """The uninterrupted run of a case, shared by the checks (never mutated by them)."""
    return run_case(case)


def restore(run: KitRun) -> tuple[KitTask, nn.Module, Masker, Pruner]:
    """Round-trip model + pruner state + hard masks through torch.save / torch.load(weights_only=True)
    into a fresh model, masker and pruner, in the trainer's resume order (calibrate, attach, load)."""
    blob = io.BytesIO()
    torch.save({"model": run.model.state_dict(), "pruner": run.pruner.state_dict(), "hard": run.hard}, blob)
    blob.seek(0)
    try:
        state = torch.load(blob, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- report what is not weights_only-safe
        raise AssertionError(f"{run.case.id}: state_dict() is not torch.load(weights_only=True)-safe: {err}") from err
    task, model, masker, pruner = fresh_setup(run.case)
    calibrate(model, masker.layers, task.calibration_batches(), task.forward)
    pruner.attach(masker.layers)
    model.load_state_dict(state["model"])
    pruner.load_state_dict(state["pruner"])
    masker.set_masks({n: m.float() for n, m in state["hard"].items()})
    return task, model, masker, pruner


# -- checks -----------------------------------------------------------------------------
def check_exact_sparsity(run: KitRun) -> None:
    """Kept units == bench.core.select.expected_kept exactly; audit sparsity == 1 - kept/total."""
    masker, case = run.masker, run.case
    assert set(run.hard) == {layer.name for layer in masker.layers}, (
        f"{case.id}: finalize() returned masks for {sorted(run.hard)}, expected every prunable layer"
    )
    for layer in masker.layers:
        mask = run.hard[layer.name]
        assert tuple(mask.shape) == tuple(layer.unit_shape), (
            f"{case.id}: mask of {layer.name} has shape {tuple(mask.shape)}, expected unit shape {layer.unit_shape}"
        )
    audit = masker.audit(run.hard)
    counts = {layer.name: layer.num_units for layer in masker.layers}
    total = sum(counts.values())
    if run.pruner.keeps_all:  # a reference control (nomask): everything kept
        kept = total
    else:
        kept = expected_kept(counts, masker.pattern, case.sparsity, run.pruner.config.scope)
    assert audit["kept_units"] == kept, (
        f"{case.id}: kept {audit['kept_units']} of {total} units, target {case.sparsity} needs exactly {kept}"
    )
    assert audit["achieved_sparsity"] == 1 - kept / total, (
        f"{case.id}: achieved sparsity {audit['achieved_sparsity']} != {1 - kept / total}"
    )


def check_pattern_valid(run: KitRun) -> None:
    if run.pruner.keeps_all:  # nothing is pruned, so there is no pattern to obey
        assert all(bool(m.all()) for m in run.hard.values()), f"{run.case.id}: a keeps_all control pruned units"
        return
    audit = run.masker.audit(run.hard)
    pattern = run.masker.pattern
    for layer in run.masker.layers:
        weight_mask = pattern.expand(run.hard[layer.name].float(), layer.weight.shape)
        assert pattern.is_valid(weight_mask), f"{run.case.id}: mask of {layer.name} violates {pattern}"
    assert audit["pattern_valid"], f"{run.case.id}: audit says the masks violate {pattern}"


def assert_masked_outputs_zero(case: KitCase, masker: Masker, hard: dict[str, Tensor], where: str) -> None:
    """Effective weights are zero wherever masked; for channels also bias and BN affine terms."""
    for layer in masker.layers:
        unit_mask = hard[layer.name].bool()
        weight_mask = masker.pattern.expand(unit_mask.float(), layer.weight.shape)
        effective = layer.module.weight.detach()
        assert bool((effective[weight_mask == 0] == 0).all()), (
            f"{case.id}: {where}: {layer.name} has non-zero effective weights under its mask"
        )
        if isinstance(masker.pattern, OutputChannel):
            owners = [(layer.module, "bias")] + (
                [(layer.batchnorm, "weight"), (layer.batchnorm, "bias")] if layer.batchnorm is not None else []
            )
            for owner, attr in owners:
                value = getattr(owner, attr, None)
                if value is not None:
                    assert bool((value.detach()[~unit_mask] == 0).all()), (
                        f"{case.id}: {where}: {layer.name} pruned channels keep a non-zero {attr}"
                    )


def check_masks_survive_training(run: KitRun) -> None:
    """After the trainer's fine-tuning and after extra SGD (momentum + weight decay) steps on a
    restored copy, masked weights (and a pruned channel's bias/BN affine) are exactly zero."""
    assert_masked_outputs_zero(run.case, run.masker, run.hard, "after fine-tuning")
    task, model, masker, _ = restore(run)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    model.train()
    for step, batch in zip(range(EXTRA_FINETUNE_STEPS), task.train_batches(0, KIT_SEED)):
        optimizer.zero_grad(set_to_none=True)
        task.loss(model, batch).backward()
        optimizer.step()
        assert_masked_outputs_zero(run.case, masker, run.hard, f"extra SGD step {step + 1}")


def _assert_same_masks(case: KitCase, got: dict[str, Tensor], want: dict[str, Tensor], what: str) -> None:
    assert set(got) == set(want), f"{case.id}: {what}: layers {sorted(got)} != {sorted(want)}"
    for name in want:
        assert torch.equal(got[name].bool(), want[name].bool()), (
            f"{case.id}: {what}: masks of {name} differ in {int((got[name].bool() != want[name].bool()).sum())} units"
        )


def _assert_same_weights(case: KitCase, got: nn.Module, want: nn.Module, what: str) -> None:
    want_state = want.state_dict()
    for key, value in got.state_dict().items():
        assert torch.equal(value, want_state[key]), f"{case.id}: {what}: {key} differs"


def check_state_round_trip(run: KitRun) -> None:
    """model + pruner state through torch.save/torch.load(weights_only=True): same weights, same
    masked outputs, and the restored pruner finalizes to the same masks as the original."""
    task, model, masker, pruner = restore(run)
    _assert_same_weights(run.case, model, run.model, "after state_dict round trip")
    model.eval()
    run.model.eval()
    with torch.no_grad():
        same = torch.equal(model(task.x), run.model(task.x))
    model.train()
    run.model.train()
    assert same, f"{run.case.id}: restored model gives different outputs"
    _assert_same_masks(run.case, pruner.finalize(), run.pruner.finalize(), "finalize() after state_dict round trip")


def check_resume_identical(case: KitCase, reference: KitRun, workdir: Path) -> None:
    """Kill after pruning epoch 1 of 2 (the trainer has checkpointed), resume with a fresh model,
    masker, pruner and trainer: the remaining losses, final masks and final weights are identical."""
    checkpoint = workdir / f"{case.pruner.name}-resume.pt"
    checkpoint.unlink(missing_ok=True)
    try:
        run_case(case, checkpoint, kill_at_epoch=1)
    except SimulatedKill:
        pass
    else:
        raise AssertionError(f"{case.id}: the simulated kill did not happen")
    assert torch.load(checkpoint, weights_only=True)["epochs_done"] == 1, f"{case.id}: no checkpoint after epoch 1"
    resumed = run_case(case, checkpoint)
    assert any("resumed after epoch 1" in line for line in resumed.log), (
        f"{case.id}: trainer did not resume: {resumed.log}"
    )
    done = reference.task.steps_per_epoch()
    assert resumed.losses == reference.losses[done:], (
        f"{case.id}: losses after resume {resumed.losses} != uninterrupted {reference.losses[done:]}"
    )
    _assert_same_masks(case, resumed.hard, reference.hard, "final masks after resume")
    _assert_same_weights(case, resumed.model, reference.model, "final weights after resume")


def check_same_seed_identical(case: KitCase, reference: KitRun) -> None:
    again = run_case(case)
    assert again.losses == reference.losses, (
        f"{case.id}: same seed, different losses {again.losses} != {reference.losses}"
    )
    _assert_same_masks(case, again.hard, reference.hard, "same seed")
    _assert_same_weights(case, again.model, reference.model, "same seed")


def first_float_field(config_cls: type[PrunerConfig]) -> str | None:
    hints = typing.get_type_hints(config_cls)
    return next((f.name for f in dataclasses.fields(config_cls) if hints[f.name] is float), None)


def _expect_config_error(cls: type[Pruner], values: dict, field_name: str) -> None:
    try:
        cls.Config.from_dict(values, owner=cls.name)
    except ConfigError as err:
        assert field_name in err.field and field_name in str(err), (
            f"{cls.name}: ConfigError for {values} does not name '{field_name}': {err}"
        )
        return
    raise AssertionError(
        f"{cls.name}: Config.from_dict({values}) was accepted; expected a ConfigError naming '{field_name}'"
    )


def check_bad_config_rejected(cls: type[Pruner]) -> None:
    """Unknown field, bad scope, and NaN (outside every range) in the first float field -> ConfigError."""
    _expect_config_error(cls, {"no_such_field": 1}, "no_such_field")
    _expect_config_error(cls, {"scope": "nowhere"}, "scope")
    name = first_float_field(cls.Config)
    if name is not None:
        _expect_config_error(cls, {name: float("nan")}, name)


def check_declaration(cls: type[Pruner]) -> None:
    assert cls.patterns and set(cls.patterns) <= set(ALL_PATTERNS), (
        f"{cls.name}: patterns {cls.patterns} must be a non-empty subset of {ALL_PATTERNS}"
    )
    assert issubclass(cls.Config, PrunerConfig), f"{cls.name}: Config must subclass bench.pruner.PrunerConfig"
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen, (
        f"{cls.name}: Config must be a frozen dataclass"
    )


def check_unsupported_pattern_rejected(cls: type[Pruner], kind: str) -> None:
    pattern = parse_pattern(KIT_PATTERNS[kind][0])
    try:
        cls(cls.Config(), pattern, resolve_sparsity(pattern, pattern.fixed_sparsity or 0.5))
    except ConfigError as err:
        assert err.field == "pattern", f"{cls.name}: ConfigError for {pattern} names '{err.field}', not 'pattern'"
        return
    raise AssertionError(f"{cls.name}: accepted {pattern} although it declares patterns {cls.patterns}")


def _tensors(value, where: str):
    """(path, tensor) of every tensor in nested dicts/lists/tuples and modules."""
    if isinstance(value, Tensor):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{where}[{i}]")
    elif isinstance(value, nn.Module):
        for name, tensor in value.state_dict().items():
            yield f"{where}.{name}", tensor


def check_tensors_follow_device(case: KitCase) -> None:
    """Every tensor the pruner creates at ``attach`` lives on its layers' device: the model, its
    calibration batches and the tracing input are put on the ``meta`` device (shapes without data),
    so a tensor made on the CPU by default shows up as a ``cpu`` tensor -- the bug that breaks
    a CUDA run -- without a GPU. Construction only: selecting masks needs real values."""
    task = KitTask()
    with torch.device("meta"):
        model = task.build_model()
    meta = torch.device("meta")
    names = find_prunable(model, task.include, task.exclude, task.keep_first_last)
    masker = Masker(model, names, parse_pattern(case.pattern), task.example_input().to(meta))
    batches = [(x.to(meta), y.to(meta)) for x, y in task.calibration_batches()]
    calibrate(model, masker.layers, batches, task.forward)
    pruner = build(case)
    pruner.attach(masker.layers)
    found = list(_tensors(pruner.state_dict(), "state_dict()"))
    found += [(f"parameters()[{i}]", p) for i, p in enumerate(pruner.parameters())]
    found += [
        (f"param_groups()[{g}]['params'][{i}]", p)
        for g, group in enumerate(pruner.param_groups())
        for i, p in enumerate(group["params"])
    ]
    for attr, value in vars(pruner).items():
        if attr != "layers":
            found += list(_tensors(value, attr))
    stray = sorted({where for where, tensor in found if tensor.device != meta})
    assert not stray, f"{case.id}: tensors not created on the layers' device (meta here): {', '.join(stray[:8])}"


KIT_ALLOCATION = Allocation("global", 0.3)


def check_allocation_floor(case: KitCase, allocation: Allocation = KIT_ALLOCATION) -> None:
    """Under the protocol's allocation rule the final masks keep exactly the expected count and
    every layer at least its floor, and so does every training-time mask the pruner installs
    (soft masks by their mass, the sum of their values: a search that empties a layer the hard
    switch then refills changes the function at the switch); the audit flags the layers held at
    their floor."""
    below: list[tuple[int, str, float, int]] = []

    def watch(pruner: Pruner) -> None:
        masks = pruner.masks

        def recorded():
            out = masks()
            if out is not None and not pruner.pattern.per_row_budget:
                for name, mask in out.items():
                    mass, need = float(mask.detach().double().sum()), allocation.minimum(mask.numel())
                    if mass < need - 1e-5 * need:
                        below.append((len(below), name, round(mass, 4), need))
            return out

        pruner.masks = recorded

    run = run_case(case, allocation=allocation, watch=watch)
    assert not below, (
        f"{case.id}: training-time masks below the floor {allocation.floor} "
        f"(#, layer, mass, floor), {len(below)} in all: {below[:4]}"
    )
    counts = {layer.name: layer.num_units for layer in run.masker.layers}
    kept = {name: int(run.hard[name].sum()) for name in counts}
    if run.pruner.keeps_all:  # a reference control keeps everything whatever the rule
        assert kept == counts, f"{case.id}: a keeps_all control dropped units under {allocation}"
        return
    want = expected_kept(counts, run.pruner.pattern, case.sparsity, allocation=allocation)
    assert sum(kept.values()) == want, f"{case.id}: kept {sum(kept.values())} units under {allocation}, expected {want}"
    if parse_pattern(case.pattern).per_row_budget:
        return
    low = {n: (k, allocation.minimum(counts[n])) for n, k in kept.items() if k < allocation.minimum(counts[n])}
    assert not low, f"{case.id}: layers below the floor {allocation.floor} (kept, floor): {low}"
    audit = run.masker.audit(run.hard, allocation)
    flagged = {row["layer"] for row in audit["layers"] if row["at_floor"]}
    assert flagged == {n for n, k in kept.items() if k <= allocation.minimum(counts[n])}
    assert audit["layers_at_floor"] == len(flagged)


KIT_FLOPS = Allocation("global", 0.1, budget="flops")


def check_exact_cost(case: KitCase, allocation: Allocation = KIT_FLOPS) -> None:
    """Under a FLOPs budget the final masks keep the target fraction of the covered layers' FLOPs to
    within half of one unit's cost (bench.core.select.global_topk), every layer at least its floor;
    N:M keeps N of every M whatever the budget counts, so its FLOPs fraction is exact as well."""
    run = run_case(case, allocation=allocation)
    rule = run.pruner.allocation
    counts = {layer.name: layer.num_units for layer in run.masker.layers}
    kept = {name: int(run.hard[name].sum()) for name in counts}
    if run.pruner.keeps_all:
        assert kept == counts, f"{case.id}: a keeps_all control dropped units under a FLOPs budget"
        return
    costs = dict(zip(counts, rule.layer_costs(counts)))
    total = sum(costs[n] * counts[n] for n in counts)
    kept_cost = sum(costs[n] * kept[n] for n in counts)
    audit = flops_audit(run.masker.audit(run.hard, rule)["layers"], costs)
    assert audit["achieved_flops_sparsity"] == pytest.approx(1 - kept_cost / total)
    if parse_pattern(case.pattern).per_row_budget:
        assert kept_cost == pytest.approx(total * (1 - case.sparsity)), f"{case.id}: N:M kept {kept_cost} of {total}"
        return
    slack = max(costs.values()) / 2 + 1e-9 * total
    target = (1 - case.sparsity) * total
    assert abs(kept_cost - target) <= slack, (
        f"{case.id}: kept {kept_cost:.0f} FLOPs, target {target:.0f} (+- {slack:.0f}, half the dearest unit)"
    )
    low = {n: k for n, k in kept.items() if k < rule.minimum(counts[n])}
    assert not low, f"{case.id}: layers below the floor {rule.floor} under a FLOPs budget: {low}"


def check_all(cls: type[Pruner], workdir: Path, sparsities: tuple[float, ...] = KIT_SPARSITIES) -> None:
    """Every check on one pruner class (used for generated and external pruners)."""
    check_declaration(cls)
    check_bad_config_rejected(cls)
    for kind in set(ALL_PATTERNS) - set(cls.patterns):
        check_unsupported_pattern_rejected(cls, kind)
    for case in cases_for(cls):
        if case.sparsity not in sparsities and not parse_pattern(case.pattern).per_row_budget:
            continue
        check_tensors_follow_device(case)
        check_allocation_floor(case)
        check_exact_cost(case)
        run = run_case(case)
        check_exact_sparsity(run)
        check_pattern_valid(run)
        check_masks_survive_training(run)
        check_state_round_trip(run)
        check_resume_identical(case, run, workdir)
        check_same_seed_identical(case, run)
