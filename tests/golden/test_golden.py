"""Behaviour unchanged, proven: every pruner's final mask and metrics match tests/golden/golden.json.

The numbers are recorded by ``python tests/golden/record.py``, one recording per platform (float
kernels differ between CPUs; see record.py): exact on a recorded platform, within a tolerance
elsewhere. A change that alters them is a behaviour change and must say so (and re-record)."""

from __future__ import annotations

import pytest

from .record import MM_CASES, TOLERANCE, case_key, check, load_golden, native_cases, platform, run_case

EXPECTED = load_golden()
HERE = platform()


def test_golden_covers_every_builtin_pruner_and_pattern():
    keys = {case_key(c) for c in native_cases()}
    assert EXPECTED and all(keys <= set(cases) for cases in EXPECTED.values())
    assert len(keys) >= 19  # 7 pruners x 3 patterns, minus srste's block/channel


@pytest.mark.slow
@pytest.mark.parametrize("case", native_cases(), ids=case_key)
def test_native_golden(case, shared_runs_dir, monkeypatch):
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir / "golden"))
    check(case_key(case), run_case(case, shared_runs_dir / "golden"), EXPECTED, HERE)


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
    check(case_key(case), run_case(case, shared_runs_dir / "golden"), EXPECTED, HERE)


def test_check_is_exact_on_a_recorded_platform_and_tolerant_elsewhere():
    numbers = {"achieved_sparsity": 0.5, "mask": "aa", "metric": 80.0, "val_metric": 78.0}
    golden = {"here": {"k": numbers}, "there": {"k": {**numbers, "mask": "bb", "metric": 80.6}}}
    assert check("k", dict(numbers), golden, "here") == "exact"
    with pytest.raises(AssertionError):  # one rounding step off is a failure where a recording exists
        check("k", {**numbers, "metric": 80.1}, golden, "here")
    assert check("k", {**numbers, "mask": "cc", "metric": 81.0}, golden, "elsewhere").startswith("within")
    with pytest.raises(AssertionError, match="metric"):
        check("k", {**numbers, "metric": 80.6 + TOLERANCE + 0.1}, golden, "elsewhere")
    with pytest.raises(AssertionError, match="sparsity"):
        check("k", {**numbers, "achieved_sparsity": 0.49}, golden, "elsewhere")
    with pytest.raises(AssertionError, match="no recording"):
        check("other", numbers, golden, "elsewhere")
