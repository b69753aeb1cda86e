"""Suites: cells claimed atomically by concurrent runners; console lines not wrapped off a terminal."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.runs.record import REPO_ROOT, ResultStore
from bench.runs.run import RunSpec
from bench.suites import cell, suite_run
from bench.suites.suite import Cell, cell_states, claim_cell, load_and_expand, store_counts

TINY = {
    "tasks": ["fmnist-tiny"],
    "pruners": ["magnitude", "gmp"],
    "patterns": ["block:1x8"],
    "sparsities": [0.5],
    "seeds": [0],
    "budget": {"prune_epochs": 1, "finetune_epochs": 1},
}


def write_suite(tmp_path: Path, spec: dict, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


RUNNER_CHILD = """
import sys, time
from pathlib import Path
from bench.suites import cell
from bench.suites import suite_run
from bench.runs.record import ResultStore
from bench.suites.suite import load_and_expand

path, tmp, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
dense = tmp / "dense" / "fmnist-tiny-x.pt"

def fake_execute(run, **kwargs):  # a cell "runs" for 0.3 s and writes its row, like execute()
    with open(tmp / "executed.txt", "a") as fh:
        fh.write(run.run_id + "\\n")
    if not dense.exists():
        dense.write_bytes(b"dense")
    time.sleep(0.3)
    row = {"run_id": run.run_id, "metric": 1.0, "dense_metric": 2.0, "metric_name": "top1"}
    ResultStore(kwargs["paths"].store).append(row)
    return row

cell.execute = fake_execute  # execute_dense_once (and its dense-model lock) stays real
cell.dense_checkpoint_path = lambda task, seed, paths=None: dense
suite = load_and_expand(path)
(tmp / f"ready-{name}").touch()
while not (tmp / "go").exists():
    time.sleep(0.01)
sys.exit(suite_run.run_suite(suite, progress=name == "b"))
"""


def test_two_runners_at_once_run_each_cell_once(tmp_path, runs_dir):
    """Two `suite run` processes of one suite released at the same moment: every cell is executed
    by exactly one of them (the other reports it as skipped), one row each, both exit 0. The
    dense-model lock of execute_dense_once is taken inside the cell claim (no deadlock). Runner b
    has its progress bar enabled but writes to a pipe: plain, unwrapped lines."""
    path = write_suite(tmp_path, {**TINY, "sparsities": [0.5, 0.75]}, "twice")
    suite = load_and_expand(path)
    assert len(suite.cells) == 4
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", RUNNER_CHILD, path, str(tmp_path), name],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    }
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{name}").exists() for name in procs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), "runner did not start"
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = {name: proc.communicate(timeout=120) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ids = [c.run_id for c in suite.cells]
    assert sorted((tmp_path / "executed.txt").read_text().split()) == sorted(ids)  # each cell executed once in all
    assert {name: proc.returncode for name, proc in procs.items()} == {"a": 0, "b": 0}, outputs
    counts = store_counts(ResultStore())
    assert [counts[i] for i in ids] == [1, 1, 1, 1]
    assert [s for _, s, _ in cell_states(suite)] == ["done"] * 4
    lines = {name: out.splitlines() for name, (out, _) in outputs.items()}
    done = [m.split()[1] for name in lines for m in lines[name] if m.startswith("done   ")]
    assert sorted(done) == sorted(ids)
    claims = 0
    for name in lines:  # every cell is reported once by each runner: done, skipped, or planned as done/running
        header = re.match(r"suite twice: 4 cells, (\d+) done, (\d+) to run", lines[name][0])
        done_before, to_run = int(header[1]), int(header[2])
        busy = [m for m in lines[name] if m.startswith("skip   ") and "running in another process" in m]
        skipped = [m for m in lines[name] if m.startswith("skip   ") and m not in busy]
        ran = [m for m in lines[name] if m.startswith("done   ")]
        assert done_before + len(busy) + to_run == 4 and len(ran) + len(skipped) == to_run
        assert all(": claimed by another runner" in m or ": done by another runner" in m for m in skipped)
        assert not any("FAILED" in m or "failed" in m for m in lines[name])
        if skipped:
            assert lines[name][-1] == f"{len(skipped)} cell(s) skipped: claimed or done by another runner"
        assert len(lines[name]) == 1 + len(busy) + to_run + bool(skipped)  # no wrapped or progress-bar lines
        claims += len(skipped) + len(busy)
    assert claims >= 1  # the runners did overlap
    state = runs_dir / "suites" / "twice" / "state"
    assert not any(state.glob("*.running")) and not any(state.glob("*.failed"))


CLAIM_CHILD = """
import time
from bench.suites.suite import claim_cell, running_info, write_marker

with claim_cell("held", "abc123") as held:
    write_marker("held", "abc123", "running", running_info())
    print(held, flush=True)
    time.sleep(120)
"""


def test_claim_of_a_live_process_is_refused_and_freed_when_it_dies(runs_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIM_CHILD],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    marker = runs_dir / "suites" / "held" / "state" / "abc123.running"
    payload = {"spec": {}, "run_id": "abc123", "suite": "held", "threads": None, "runs_dir": str(runs_dir)}
    try:
        assert proc.stdout.readline().strip() == "True"
        with claim_cell("held", "abc123") as held:
            assert held is False
        before = marker.read_text()
        outcome = cell.run_cell(payload)  # refused: nothing run, the holder's marker untouched
        assert outcome == {
            "run_id": "abc123",
            "ok": True,
            "skipped": f"claimed by another runner (pid {proc.pid} on {socket.gethostname()})",
        }
        assert marker.read_text() == before
        assert not (runs_dir / "suites" / "held" / "state" / "abc123.failed").exists()
    finally:
        proc.kill()
        proc.wait()
    with claim_cell("held", "abc123") as held:  # the kernel released the dead process's lock
        assert held is True
    ResultStore().append({"run_id": "abc123", "metric": 1.0})
    assert cell.run_cell(payload) == {"run_id": "abc123", "ok": True, "skipped": "done by another runner"}


def test_claim_is_exclusive_within_a_process_and_released_after_the_block(runs_dir):
    with claim_cell("s", "r1") as first:
        with claim_cell("s", "r1") as second, claim_cell("s", "r2") as other:
            assert (first, second, other) == (True, False, True)
    with claim_cell("s", "r1") as again:
        assert again is True


def _cell() -> Cell:
    return Cell(
        RunSpec(task="fmnist-tiny", pruner="magnitude", pattern="block:1x8", sparsity=0.5), "magnitude", "abc123"
    )


def test_console_lines_not_wrapped_when_stdout_is_not_a_terminal(capsys):
    long = "x" * 250
    with suite_run.Reporter(3, enabled=True, suite_name="wrap") as reporter:
        assert reporter.progress is None  # captured stdout is not a terminal: no progress bar
        reporter.log("note " + long)
        reporter.done(_cell(), {"run_id": "abc123", "ok": False, "error": "ValueError: " + long})
        reporter.done(_cell(), {"run_id": "abc123", "ok": True, "skipped": "claimed by another runner " + long})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0] == "note " + long
    assert out[1].startswith("FAILED abc123 fmnist-tiny magnitude block:1x8 0.5 seed 0: ValueError: " + long)
    assert out[2] == "skip   abc123 fmnist-tiny magnitude block:1x8 0.5 seed 0: claimed by another runner " + long
    assert reporter.failed == ["abc123"] and reporter.skipped == ["abc123"]


def test_console_on_a_terminal_keeps_the_bar_and_long_lines_whole(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    long = "y" * 250
    with suite_run.Reporter(1, enabled=True, suite_name="tty") as reporter:
        assert reporter.progress is not None
        reporter.log("note " + long)
    assert "note " + long in capsys.readouterr().out  # soft wrap: no newline inserted by rich


def test_local_workers_spread_over_the_visible_gpus(monkeypatch):
    """Issue 34: each spawned local worker takes the next GPU (index mod the count); one GPU or
    none: nothing is set."""
    import multiprocessing

    import torch

    import bench.core.process
    from bench.suites.suite_run import _init_worker

    chosen = []
    monkeypatch.setattr(bench.core.process, "prepare_process", lambda: None)  # not this test process's modes
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    for _ in range(4):
        _init_worker(1, counter)
    assert chosen == [0, 1, 2, 0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _init_worker(1, counter)
    assert chosen == [0, 1, 2, 0] and counter.value == 5
