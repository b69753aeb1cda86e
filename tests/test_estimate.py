"""`smartbench suite plan NAME --estimate`: the cost model, stored step times, finished cells, Slurm advice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli.main import main
from bench.core.errors import ConfigError
from bench.core.paths import RunPaths
from bench.core.select import Allocation
from bench.core.sparsity import parse_pattern
from bench.runs.record import ResultStore
from bench.runs.registry import build_pruner
from bench.runs.run import configured_task
from bench.suites import estimate as est
from bench.suites.suite import load_and_expand

TINY = {
    "tasks": ["fmnist-tiny"],
    "pruners": ["magnitude", "gmp"],
    "patterns": ["block:1x8"],
    "sparsities": [0.5, 0.9],
    "seeds": [0],
    "budget": {"prune_epochs": 1, "finetune_epochs": 1},
}
CPU = torch.device("cpu")
# fmnist-tiny: 2000 training images at batch 64, val 1000, test 1000 images, 4 calibration batches
STEPS_PER_EPOCH, BATCH, VAL, TEST, CALIB = 2000 // 64, 64, 1000, 1000, 4


def write_suite(tmp_path: Path, spec: dict, name: str = "t") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


def store_step_times(paths: RunPaths, suite, seconds: dict[str, float], batch: int = BATCH) -> None:
    """Write stored measurements (seconds per step at ``batch``) for 'dense' and each pruner name."""
    cell = suite.cells[0]
    task = configured_task(cell.spec, CPU)
    store = est.CalibrationStore(paths.root / est.CALIBRATION_FILE)
    machine = est.machine_key(CPU)
    for name, value in seconds.items():
        pruner = None
        if name != "dense":
            rule = Allocation.from_value(cell.spec.allocation)  # the suite's (the protocol's by default)
            pruner = build_pruner(name, parse_pattern(cell.spec.pattern), cell.spec.sparsity, allocation=rule)
        entry = {"seconds": value, "batch": batch, "steps": 5, "measured": "2026-12-01T00:00:00"}
        store.put(est.config_key(task, batch, pruner), machine, entry)


def no_measuring(*args, **kwargs):
    raise AssertionError("a stored measurement should have been used")


@pytest.fixture
def tiny(tmp_path, runs_dir):
    return load_and_expand(write_suite(tmp_path, TINY)), RunPaths(runs_dir)


def test_cell_cost_is_steps_times_the_stored_step_time(tiny, monkeypatch):
    suite, paths = tiny
    store_step_times(paths, suite, {"dense": 0.010, "magnitude": 0.013, "gmp": 0.011})
    monkeypatch.setattr(est, "time_steps", no_measuring)
    estimate = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None)
    dense_step = 0.010  # a whole fmnist-tiny batch is the calibration batch on the CPU
    forward_per_image = dense_step / BATCH / 3
    # evaluation: calibration batches, final val + test, test after the hard switch, dense val + test
    images = CALIB * BATCH + VAL + TEST + TEST + VAL + TEST
    cells = {(r.label, r.sparsity): r for r in estimate.cells()}
    assert len(cells) == 4
    for (label, _), row in cells.items():
        extra = {"magnitude": 0.003, "gmp": 0.001}[label]  # the pruner's extra time over a dense step
        assert row.steps == 2 * STEPS_PER_EPOCH == 62
        assert row.eval_images == images == 5256
        assert row.step_s == pytest.approx(dense_step + extra)
        assert row.hours == pytest.approx((62 * (dense_step + extra) + images * forward_per_image) / 3600)
    (dense,) = [r for r in estimate.rows if r.kind == "dense"]
    assert dense.state == "to train" and dense.steps == 3 * STEPS_PER_EPOCH  # 3 dense epochs, once for 4 cells
    assert dense.hours == pytest.approx(93 * dense_step / 3600)
    assert estimate.total == pytest.approx(dense.hours + sum(r.hours for r in cells.values()))
    assert estimate.unit == "CPU-hours"
    assert all("stored 2026-12-01" in line for line in estimate.sources)


def test_a_smaller_calibration_batch_is_scaled_to_the_task_batch(tiny, monkeypatch):
    suite, paths = tiny
    store_step_times(paths, suite, {"dense": 0.010, "magnitude": 0.013, "gmp": 0.011}, batch=16)
    monkeypatch.setattr(est, "time_steps", no_measuring)
    estimate = est.estimate_suite(suite, "cpu", batch=16, paths=paths, log=lambda _m: None)
    dense_step = 0.010 * BATCH / 16  # linear in the batch
    (dense,) = [r for r in estimate.rows if r.kind == "dense"]
    assert dense.step_s == pytest.approx(0.040)
    assert dense.hours == pytest.approx(93 * dense_step / 3600)
    for row in estimate.cells():  # + the pruner's extra time at batch 16, not scaled
        assert row.step_s == pytest.approx(dense_step + {"magnitude": 0.003, "gmp": 0.001}[row.label])
    assert any("dense: 0.01 s/step at batch 16 (stored 2026-12-01" in line for line in estimate.sources)


def test_cpu_calibration_batches_follow_the_input_size():
    from bench.tasks.registry import get_task

    calibrator = est.Calibrator(CPU, est.CalibrationStore(Path("/nonexistent/calibration.json")))
    assert calibrator.batches(get_task("fmnist-tiny")) == (64, 64)  # the whole batch
    assert calibrator.batches(get_task("imagenet-resnet50")) == (8, 2)  # of 256 images of 3x224x224
    assert est.Calibrator(CPU, calibrator.store, batch=4).batches(get_task("imagenet-resnet50")) == (4, 4)


def test_finished_cells_and_a_cached_dense_model_cost_nothing(tiny, monkeypatch):
    suite, paths = tiny
    store_step_times(paths, suite, {"dense": 0.010, "magnitude": 0.013, "gmp": 0.011})
    monkeypatch.setattr(est, "time_steps", no_measuring)
    before = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None)
    done = suite.cells[0]
    ResultStore(paths.store).append({"run_id": done.run_id, "metric": 80.0})
    after = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None)
    row = next(r for r in after.cells() if r.run_id == done.run_id)
    assert (row.state, row.hours, row.steps) == ("done", 0.0, 0)
    cost = next(r for r in before.cells() if r.run_id == done.run_id).hours
    assert after.total == pytest.approx(before.total - cost)
    checkpoint = paths.root / "dense" / f"{done.dense_key}.pt"  # the dense model is already trained
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    cached = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None)
    (dense,) = [r for r in cached.rows if r.kind == "dense"]
    assert (dense.state, dense.hours) == ("cached", 0.0)
    assert cached.total == pytest.approx(sum(r.hours for r in cached.cells()))


def test_every_cell_done_needs_no_dense_model(tiny, monkeypatch):
    suite, paths = tiny
    store_step_times(paths, suite, {"dense": 0.010, "magnitude": 0.013, "gmp": 0.011})
    monkeypatch.setattr(est, "time_steps", no_measuring)
    for cell in suite.cells:
        ResultStore(paths.store).append({"run_id": cell.run_id})
    estimate = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None)
    assert estimate.total == 0.0
    assert all(r.hours == 0.0 for r in estimate.rows)


def test_second_estimate_reuses_the_stored_calibration(tiny, monkeypatch):
    suite, paths = tiny
    calls = []
    real = est.time_steps

    def counting(task, batch, steps, pruner=None, **kwargs):
        calls.append((pruner and pruner.name, batch, steps))
        return real(task, batch, steps, pruner, **kwargs)

    monkeypatch.setattr(est, "time_steps", counting)
    first = est.estimate_suite(suite, "cpu", calibrate=1, paths=paths, log=lambda _m: None)
    # one measurement per configuration: dense, magnitude, gmp (each at the first sparsity only), 1 step at batch 64
    assert sorted(calls, key=str) == sorted([(None, 64, 1), ("magnitude", 64, 1), ("gmp", 64, 1)], key=str)
    assert (paths.root / "calibration.json").is_file()
    second = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None)
    assert len(calls) == 3  # nothing measured again
    assert all("stored" in line for line in second.sources)
    assert second.total == pytest.approx(first.total)
    est.estimate_suite(suite, "cpu", calibrate=2, paths=paths, log=lambda _m: None)  # --calibrate measures again
    assert len(calls) == 6 and calls[-1][2] == 2


def test_without_stored_times_the_default_calibration_runs(tiny, monkeypatch):
    suite, paths = tiny
    calls = []
    monkeypatch.setattr(est, "time_steps", lambda task, batch, steps, pruner=None, **kw: calls.append(steps) or 0.02)
    messages = []
    estimate = est.estimate_suite(suite, "cpu", paths=paths, log=messages.append)
    assert calls == [est.DEFAULT_STEPS] * 3
    assert len(messages) == 3 and all("calibrating fmnist-tiny" in m for m in messages)
    assert all("measured now, 3 steps, none stored" in line for line in estimate.sources)


@pytest.mark.parametrize("value", [0, -1, "0", "x", "1.5", True])
def test_bad_calibrate_is_one_config_error(tiny, value):
    suite, paths = tiny
    with pytest.raises(ConfigError, match=r"^--calibrate: must be an integer >= 1"):
        est.estimate_suite(suite, "cpu", calibrate=value, paths=paths)


@pytest.mark.parametrize("flag", ["--calibrate", "--calibrate-batch"])
def test_cli_rejects_a_bad_count_before_expanding(tmp_path, runs_dir, capsys, flag):
    assert main(["suite", "plan", write_suite(tmp_path, TINY), flag, "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}: must be an integer >= 1") and "got '0'" in err
    assert not runs_dir.exists()


def test_cli_plan_estimate_prints_the_table_and_the_total(tmp_path, runs_dir, capsys):
    path = write_suite(tmp_path, {**TINY, "pruners": ["magnitude"], "sparsities": [0.5]})
    assert main(["suite", "plan", path, "--estimate", "--calibrate", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "estimate of suite t on cpu, in CPU-hours:" in out
    assert "calibrating fmnist-tiny magnitude block:1x8 0.5 at batch 64: 1 warm-up + 1 step timed" in out
    assert "  total: " in out and "for 1 dense model(s)" in out and "for 1 unfinished cell(s)" in out
    assert "fmnist-tiny: 31 steps/epoch at batch 64, val 1,000 + test 1,000 images (counted on this machine)" in out
    stored = json.loads((runs_dir / "calibration.json").read_text())["measurements"]
    assert len(stored) == 2  # dense and magnitude
    assert main(["suite", "plan", path, "--estimate", "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    assert "calibrating" not in again and "(stored " in again


def test_slurm_suggestion_covers_the_longest_job(tiny, monkeypatch):
    suite, paths = tiny
    store_step_times(paths, suite, {"dense": 10.0, "magnitude": 10.5, "gmp": 10.2})
    monkeypatch.setattr(est, "time_steps", no_measuring)
    estimate = est.estimate_suite(suite, "cpu", paths=paths, any_machine=True, log=lambda _m: None)
    advice = est.slurm_advice(estimate)
    (dense,) = [r for r in estimate.rows if r.kind == "dense"]
    cells = estimate.cells()
    assert len(advice.first) == 1 and len(advice.rest) == 3  # one dense model: one first-wave job
    first_row, first_hours = advice.first[0]
    assert first_hours == pytest.approx(first_row.hours + dense.hours)  # the first job also trains the dense model
    longest_min = advice.longest[1] * 60
    assert longest_min == pytest.approx(max(first_hours, *(h for _, h in advice.rest)) * 60)
    assert advice.timeout_min >= longest_min
    assert advice.timeout_min == 10 * math.ceil(longest_min * est.SLURM_SAFETY / 10)
    assert advice.wall_hours == pytest.approx(first_hours + max(r.hours for r in cells[1:]))
    lines = est.slurm_lines(estimate, timeout_min=24 * 60)
    assert f"--timeout-min {advice.timeout_min} " in lines[1] and not any("WARNING" in line for line in lines)
    short = est.slurm_lines(estimate, timeout_min=int(longest_min) - 1)
    assert any(line.strip().startswith(f"WARNING: --timeout-min {int(longest_min) - 1} is below") for line in short)


def test_full_size_task_without_data_uses_its_nominal_sizes(monkeypatch):
    monkeypatch.delenv("SMARTBENCH_IMAGENET", raising=False)
    from bench.tasks.registry import get_task

    sizes = est.task_sizes(get_task("imagenet-resnet50"))
    assert sizes.source == "nominal"
    assert (sizes.steps_per_epoch, sizes.val, sizes.test) == (1_271_167 // 256, 10_000, 50_000)


def test_a_measured_step_is_a_positive_time():
    from bench.tasks.registry import get_task

    task = get_task("fmnist-tiny")
    pruner = build_pruner("smart", parse_pattern("block:1x8"), 0.5)
    assert 0 < est.time_steps(task, 8, 1) < 30
    assert 0 < est.time_steps(task, 8, 1, pruner) < 30


def test_slurm_launcher_prints_the_estimate_and_warns_before_submitting(tiny, monkeypatch, capsys):
    from bench.suites import suite_run

    suite, paths = tiny
    store_step_times(paths, suite, {"dense": 10.0, "magnitude": 10.5, "gmp": 10.2})
    monkeypatch.setattr(est, "time_steps", no_measuring)
    submitted = []
    monkeypatch.setattr(suite_run, "run_suite", lambda suite, **kwargs: submitted.append(kwargs) or 0)
    args = [
        "suite",
        "run",
        str(suite.path),
        "--launcher",
        "slurm",
        "--cluster",
        "local",
        "--timeout-min",
        "20",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    advice = est.slurm_advice(est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None))
    assert "estimate of suite t on cpu, in CPU-hours:" in out
    assert "slurm: 4 job(s) in two waves: 1 first (each also trains its dense model), then 3; longest job " in out
    assert f"suggested: --timeout-min {advice.timeout_min} (longest job x 1.5" in out
    assert "WARNING: --timeout-min 20 is below the longest job's estimate" in out
    assert submitted and submitted[0]["slurm"]["timeout_min"] == 20  # the user's setting is passed on as given


def test_cells_from_a_dense_checkpoint_train_no_dense_model(tmp_path, runs_dir, monkeypatch):
    from bench.tasks.registry import get_task

    checkpoint = tmp_path / "dense.pt"
    torch.save(get_task("fmnist-tiny").build_model().state_dict(), checkpoint)
    suite = load_and_expand(write_suite(tmp_path, {**TINY, "dense_checkpoint": str(checkpoint)}))
    paths = RunPaths(runs_dir)
    store_step_times(paths, suite, {"dense": 0.010, "magnitude": 0.013, "gmp": 0.011})
    monkeypatch.setattr(est, "time_steps", no_measuring)
    estimate = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None)
    (dense,) = [r for r in estimate.rows if r.kind == "dense"]
    assert (dense.state, dense.hours) == ("not needed", 0.0)
    assert estimate.total == pytest.approx(sum(r.hours for r in estimate.cells())) and estimate.total > 0


def test_the_scratch_control_trains_for_the_dense_epochs_too(tmp_path, runs_dir, monkeypatch):
    spec = {**TINY, "pruners": ["scratch"], "patterns": ["channel"], "sparsities": [0.5]}
    suite = load_and_expand(write_suite(tmp_path, spec))
    paths = RunPaths(runs_dir)
    store_step_times(paths, suite, {"dense": 0.010, "scratch": 0.012})
    monkeypatch.setattr(est, "time_steps", no_measuring)
    (row,) = est.estimate_suite(suite, "cpu", paths=paths, log=lambda _m: None).cells()
    assert row.steps == (3 + 1 + 1) * STEPS_PER_EPOCH  # dense + prune + finetune epochs with the dense recipe
    images = CALIB * BATCH + VAL + TEST + VAL + TEST  # no test right after a hard switch: it trains from scratch
    assert row.hours == pytest.approx((row.steps * 0.012 + images * 0.010 / BATCH / 3) / 3600)
