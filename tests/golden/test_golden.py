"""Behaviour unchanged, proven: every pruner's final mask and metrics match tests/golden/golden.json.

The numbers are recorded by ``python tests/golden/record.py``, one recording per platform (float
kernels differ between CPUs; see record.py): exact on a recorded platform, within a tolerance
elsewhere. A change that alters them is a behaviour change and must say so: bump the pruner's
``method_version`` and re-record (the file stores the version each pruner was recorded at, and the
recorder refuses changed numbers at an unchanged version)."""

from __future__ import annotations

import pytest

from .record import (
    MM_CASES,
    TOLERANCE,
    RecordingRefused,
    case_key,
    check,
    load_golden,
    load_versions,
    native_cases,
    platform,
    pruner_of,
    record_case,
    run_case,
    version_problem,
)

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


def test_golden_recorded_at_every_pruners_declared_method_version():
    """A pruner whose class declares another method_version than its golden cases were recorded at
    fails here, before any slow case runs: a bump goes with a re-record, and a re-record with a bump."""
    from bench.runs.registry import load_pruners

    pruners, versions = load_pruners(), load_versions()
    recorded = sorted({pruner_of(key) for cases in EXPECTED.values() for key in cases})
    assert recorded and set(recorded) <= set(pruners), f"golden cases of unregistered pruners: {recorded}"
    problems = [version_problem(name, versions.get(name), pruners[name].method_version) for name in recorded]
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)


def test_version_problem_messages():
    assert version_problem("smart", 1, 1) is None
    bumped = version_problem("smart", 1, 2)
    assert "pruner smart's golden outputs were recorded at method_version 1 but the class declares 2" in bumped
    assert "re-record and bump" in bumped and "record.py --pruner smart" in bumped
    assert "never goes down" in version_problem("smart", 3, 2)
    assert "records no method_version" in version_problem("smart", None, 1)


def test_failed_comparison_says_bump_and_rerecord():
    numbers = {"achieved_sparsity": 0.5, "mask": "aa", "metric": 80.0, "val_metric": 78.0}
    golden = {"here": {"fmnist-tiny/smart/channel": numbers}}
    with pytest.raises(AssertionError, match=r"bump method_version and re-record \(python tests/golden/record.py"):
        check("fmnist-tiny/smart/channel", {**numbers, "mask": "bb"}, golden, "here")
    with pytest.raises(AssertionError, match="outputs changed without a bump"):
        check("fmnist-tiny/smart/channel", {**numbers, "metric": 90.0}, golden, "elsewhere")


def test_recorder_refuses_changed_numbers_without_a_bump():
    """The recorder's rule on a synthetic file: same numbers or a new case at the recorded version are
    written; changed numbers need a bump (or --force); a bump drops the old recordings everywhere."""
    key, other = "fmnist-tiny/smart/channel", "fmnist-tiny/smart/nm:2:4"
    old = {"achieved_sparsity": 0.5, "mask": "aa", "metric": 80.0, "val_metric": 78.0}
    new = {**old, "mask": "bb", "metric": 80.1}

    def doc():
        return {
            "method_versions": {"smart": 1, "magnitude": 1},
            "platforms": {
                "here": {key: dict(old), other: dict(old), "fmnist-tiny/magnitude/channel": dict(old)},
                "there": {key: dict(old)},
            },
        }

    golden = doc()
    assert record_case(golden, "here", key, dict(old), declared=1) == "unchanged"
    assert record_case(golden, "elsewhere", key, dict(new), declared=1) == "new"  # a platform of its own
    with pytest.raises(RecordingRefused, match="outputs changed .* method_version is still 1"):
        record_case(golden, "here", key, dict(new), declared=1)
    assert golden["platforms"]["here"][key] == old  # nothing of the refused case written
    assert record_case(golden, "here", key, dict(new), declared=1, force=True).startswith("overwritten")
    assert golden["platforms"]["here"][key] == new and golden["method_versions"]["smart"] == 1

    golden = doc()  # a bump: recorded at the new version, the old behaviour's recordings dropped
    assert "was 1" in record_case(golden, "here", key, dict(new), declared=2)
    assert golden["method_versions"] == {"smart": 2, "magnitude": 1}
    assert golden["platforms"]["here"] == {key: new, "fmnist-tiny/magnitude/channel": old}
    assert golden["platforms"]["there"] == {}
    assert record_case(golden, "here", other, dict(new), declared=2) == "new"
    with pytest.raises(RecordingRefused, match="never goes down"):
        record_case(golden, "here", key, dict(old), declared=1, force=True)
    legacy = {"platforms": {"here": {key: dict(old)}}}  # a file from before versions: version 1
    with pytest.raises(RecordingRefused):
        record_case(legacy, "here", key, dict(new), declared=1)
