"""Behaviour unchanged, proven: every pruner's final mask and metrics match tests/golden/golden.json.

The numbers were recorded by ``python tests/golden/record.py`` before the pipeline refactor; a
change that alters any of them is a behaviour change and must say so (and re-record)."""

from __future__ import annotations

import json

import pytest

from .record import GOLDEN, MM_CASES, case_key, native_cases, run_case

EXPECTED = json.loads(GOLDEN.read_text())


def test_golden_covers_every_builtin_pruner_and_pattern():
    keys = {case_key(c) for c in native_cases()}
    assert keys <= set(EXPECTED)
    assert len(keys) >= 19  # 7 pruners x 3 patterns, minus srste's block/channel


@pytest.mark.slow
@pytest.mark.parametrize("case", native_cases(), ids=case_key)
def test_native_golden(case, shared_runs_dir, monkeypatch):
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir / "golden"))
    assert run_case(case, shared_runs_dir / "golden") == EXPECTED[case_key(case)]


@pytest.mark.slow
@pytest.mark.mm
@pytest.mark.parametrize("case", MM_CASES, ids=case_key)
def test_mm_golden(case, shared_runs_dir, monkeypatch, tmp_path_factory):
    pytest.importorskip("mmseg")
    monkeypatch.setenv("SMARTBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir / "golden"))
    from mm_micro import MicroSeg

    from bench.tasks import base, registry

    registry.load_tasks()
    monkeypatch.setitem(base.TASKS, MicroSeg.name, MicroSeg)
    assert run_case(case, shared_runs_dir / "golden") == EXPECTED[case_key(case)]
