"""The conformance kit: one parametrised suite every registered pruner must pass.

Parametrised at collection time from ``bench.runs.registry.load_pruners()`` (smart, every module in
baselines/, every ``smartbench.pruners`` entry point), one case per (pruner, concrete pattern
of each declared kind, target sparsity): see harness.KIT_PATTERNS / KIT_SPARSITIES. Case ids
read ``<pruner>-<pattern>-<sparsity>``, so ``pytest tests/conformance -k mymethod`` runs one
pruner. The checks live in harness.py; each test below calls one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

import bench.core.pruner
import bench.runs.registry
from bench.pruner import ALL_PATTERNS, Pruner, PrunerConfig, check_range

from . import harness
from .harness import KitCase

PRUNERS = harness.registered_pruners()
CASES = [case for cls in PRUNERS.values() for case in harness.cases_for(cls)]
UNSUPPORTED = [(cls, kind) for cls in PRUNERS.values() for kind in ALL_PATTERNS if kind not in cls.patterns]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The kit's runs are tiny: one thread is fastest and keeps results bit-identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def by_case(cases: list[KitCase]):
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


def by_pruner():
    return pytest.mark.parametrize("cls", list(PRUNERS.values()), ids=list(PRUNERS))


# -- per pruner ---------------------------------------------------------------------------
@by_pruner()
def test_declares_patterns_and_config(cls):
    harness.check_declaration(cls)


@by_pruner()
def test_bad_config_rejected_before_training(cls):
    harness.check_bad_config_rejected(cls)


@pytest.mark.parametrize("cls,kind", UNSUPPORTED, ids=[f"{c.name}-{k}" for c, k in UNSUPPORTED])
def test_undeclared_pattern_rejected(cls, kind):
    harness.check_unsupported_pattern_rejected(cls, kind)


# -- per (pruner, pattern, sparsity) ------------------------------------------------------
@by_case([case for case in CASES if case.sparsity == 0.5])
def test_allocation_floor_and_exact_count(case):
    harness.check_allocation_floor(case)


@by_case([case for case in CASES if case.sparsity == 0.5])
def test_exact_flops_cost(case):
    harness.check_exact_cost(case)


@by_case(CASES)
def test_pruner_tensors_follow_the_layers_device(case):
    harness.check_tensors_follow_device(case)


@by_case(CASES)
def test_exact_sparsity_after_finalize(case):
    harness.check_exact_sparsity(harness.reference_run(case))


@by_case(CASES)
def test_pattern_valid(case):
    harness.check_pattern_valid(harness.reference_run(case))


@by_case(CASES)
def test_masks_survive_finetuning(case):
    harness.check_masks_survive_training(harness.reference_run(case))


@by_case(CASES)
def test_state_dict_round_trip(case):
    harness.check_state_round_trip(harness.reference_run(case))


@by_case(CASES)
def test_resume_mid_pruning_is_identical(case, tmp_path):
    harness.check_resume_identical(case, harness.reference_run(case), tmp_path)


@by_case(CASES)
def test_same_seed_is_identical(case):
    harness.check_same_seed_identical(case, harness.reference_run(case))


# -- the kit itself -------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyConfig(PrunerConfig):
    beta: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "beta", 0.0, 1.0, high_open=True)


class ToyPruner(Pruner):
    """Unit RMS, running average (state in state_dict), exact top-k: a correct minimal pruner."""

    name = "toy"
    Config = ToyConfig
    patterns = ("unstructured", "channel")

    def __init__(self, config, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.scores: dict[str, Tensor] = {}

    def on_step(self, progress):
        for layer in self.layers:
            rms = self.pattern.units(layer.weight.detach()).pow(2).mean(-1).sqrt()
            old = self.scores.get(layer.name, rms)
            self.scores[layer.name] = self.config.beta * old + (1 - self.config.beta) * rms

    def masks(self):
        return {n: m.float() for n, m in self.select(self.scores).items()}

    def finalize(self):
        return self.select(self.scores)

    def state_dict(self):
        return {"scores": dict(self.scores)}

    def load_state_dict(self, state):
        self.scores = dict(state["scores"])


class KeepsOneTooMany(ToyPruner):
    name = "keeps-one-too-many"

    def finalize(self):
        masks = super().finalize()
        first = next(iter(masks))
        flat = masks[first].reshape(-1).clone()
        flat[torch.nonzero(~flat)[0]] = True
        masks[first] = flat.reshape(masks[first].shape)
        return masks


class ForgetsItsState(ToyPruner):
    name = "forgets-its-state"

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class FakeEntryPoint:
    def __init__(self, name: str, cls: type[Pruner]):
        self.name, self.cls = name, cls

    def load(self):
        return self.cls


def test_entry_point_pruner_is_picked_up_by_the_kit(monkeypatch):
    monkeypatch.setattr(bench.core.pruner, "PRUNERS", dict(bench.core.pruner.PRUNERS))
    monkeypatch.setattr(bench.runs.registry, "_LOADED", False)
    monkeypatch.setattr(
        bench.runs.registry,
        "entry_points",
        lambda group: [FakeEntryPoint("toyplugin", ToyPruner)] if group == "smartbench.pruners" else [],
    )
    pruners = harness.registered_pruners()
    assert pruners["toyplugin"] is ToyPruner and "smart" in pruners
    ids = [case.id for case in harness.cases_for(pruners["toyplugin"])]
    assert ids == [
        "toyplugin-unstructured-0.5",
        "toyplugin-unstructured-0.75",
        "toyplugin-channel-0.5",
        "toyplugin-channel-0.75",
    ]
    run = harness.run_case(KitCase(ToyPruner, "channel", 0.75))
    harness.check_exact_sparsity(run)


def test_kit_passes_a_correct_toy_pruner(tmp_path):
    harness.check_all(ToyPruner, tmp_path, sparsities=(0.75,))


def test_kit_catches_a_wrong_kept_count():
    run = harness.run_case(KitCase(KeepsOneTooMany, "unstructured", 0.75))
    with pytest.raises(AssertionError, match="needs exactly"):
        harness.check_exact_sparsity(run)


def test_kit_catches_state_missing_from_state_dict(tmp_path):
    case = KitCase(ForgetsItsState, "unstructured", 0.5)
    with pytest.raises(AssertionError, match="after resume"):
        harness.check_resume_identical(case, harness.run_case(case), tmp_path)


def test_kit_catches_an_accepted_bad_config():
    class Unvalidated(ToyPruner):
        name = "unvalidated"

        @dataclass(frozen=True)
        class Config(PrunerConfig):
            beta: float = 0.5  # no __post_init__ check: NaN slips through

    with pytest.raises(AssertionError, match="was accepted"):
        harness.check_bad_config_rejected(Unvalidated)
