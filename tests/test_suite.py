"""Suites: spec validation, plan, status, the runner (kill -9 + resume), submitit and torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bench.cli.main import main
from bench.cli.suite_cli import plan_lines, select_cells
from bench.core.errors import ConfigError
from bench.core.paths import RunPaths
from bench.core.sparsity import parse_pattern
from bench.runs.record import REPO_ROOT, ResultStore
from bench.runs.registry import load_pruners
from bench.runs.run import RunSpec, execute, resolve
from bench.suites import cell as cell_module
from bench.suites import suite_run
from bench.suites.suite import (
    cell_states,
    expand,
    list_suites,
    load_and_expand,
    load_suite,
    running_info,
    store_counts,
    write_marker,
)

TINY = {
    "tasks": ["fmnist-tiny"],
    "pruners": ["magnitude", "gmp"],
    "patterns": ["block:1x8"],
    "sparsities": [0.5],
    "seeds": [0],
    "budget": {"prune_epochs": 1, "finetune_epochs": 1},
}


def write_suite(tmp_path: Path, spec: dict, name: str = "t") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


# -- spec validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"pruners": ["smart", "magnitude", "foo"]}, "suite.pruners[2]", "unknown pruner 'foo'; allowed: "),
        ({"pruners": [{"name": "smart", "options": {"tau0": 0}}]}, "suite.pruners[0].options", "tau0"),
        ({"pruners": [{"name": "smart", "options": {"bogus": 1}}]}, "suite.pruners[0].options", "unknown option"),
        ({"pruners": [{"name": "smart", "alias": "x"}]}, "suite.pruners[0]", "allowed: name, as, options"),
        (
            {"pruners": ["smart", {"name": "smart", "options": {"schedule": "adaptive"}}]},
            "suite.pruners[1]",
            "duplicate pruner label",
        ),
        ({"patterns": ["block:1x8", "nm:4:2"]}, "suite.patterns[1]", "0 < N < M"),
        ({"sparsities": [0.5, 1.2]}, "suite.sparsities[1]", "outside (0, 1)"),
        ({"sparsities": None}, "suite.sparsities", "non-empty list"),
        ({"seeds": [0, -1]}, "suite.seeds[1]", ">= 0"),
        ({"seeds": ["a"]}, "suite.seeds[0]", "must be an integer"),
        ({"budget": {"prune_epochs": 0}}, "suite.budget.prune_epochs", ">= 1"),
        ({"budget": {"dense_epochs": 0}}, "suite.budget.dense_epochs", ">= 1"),
        ({"budget": {"batch_size": 8}}, "suite.budget.batch_size", "allowed: dense_epochs, prune_epochs"),
        ({"colour": "red"}, "suite", "unknown field(s) ['colour']"),
        ({"cells": [{"patterns": ["channel"], "speed": 1}]}, "suite.cells[0]", "unknown field(s) ['speed']"),
        ({"cells": [{"tasks": "fmnist-tiny"}]}, "suite.cells[0].tasks", "non-empty list"),
        (
            {"cells": [{"pruners": [{"name": "smart", "as": "x"}]}, {"pruners": [{"name": "gmp", "as": "x"}]}]},
            "suite.cells[1].pruners",
            "label 'x' means two configurations",
        ),
    ],
)
def test_spec_errors_name_the_field(tmp_path, change, field, words):
    spec = {**TINY, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        load_suite(write_suite(tmp_path, spec))
    assert err.value.field == field and words in str(err.value)


def test_unknown_task_and_layer_errors_come_before_training(tmp_path, runs_dir):
    with pytest.raises(ConfigError) as err:
        expand(load_suite(write_suite(tmp_path, {**TINY, "tasks": ["fmnist-tiny", "no-such-task"]})))
    assert err.value.field == "suite.tasks[1]" and "unknown task 'no-such-task'; allowed:" in str(err.value)
    with pytest.raises(ConfigError) as err:  # 1x7 blocks do not divide the layers: found while planning
        expand(load_suite(write_suite(tmp_path, {**TINY, "patterns": ["block:1x7"]})))
    assert err.value.field.startswith("suite (fmnist-tiny magnitude block:1x7 0.5): pattern")
    assert not runs_dir.exists()  # nothing written
    with pytest.raises(ConfigError, match="unknown suite 'nope'"):
        load_suite("nope")


def test_cell_ids_are_resolve_ids_and_nm_implies_sparsity(tmp_path):
    spec = {
        **TINY,
        "pruners": [
            "smart",
            {"name": "smart", "as": "smart-adaptive", "options": {"schedule": "adaptive"}},
            "magnitude",
        ],
        "patterns": ["block:1x8", "nm:1:4"],
        "sparsities": [0.5, 0.75],
        "seeds": [0, 3],
    }
    suite = load_and_expand(write_suite(tmp_path, spec))
    assert len(suite.cells) == (2 + 1) * 3 * 2
    for cell in suite.cells:
        assert cell.run_id == resolve(cell.spec).run_id
    nm = [c for c in suite.cells if c.spec.pattern == "nm:1:4"]
    assert {c.spec.sparsity for c in nm} == {0.75}
    assert len({c.run_id for c in suite.cells}) == len(suite.cells)
    assert {c.label for c in suite.cells} == {"smart", "smart-adaptive", "magnitude"}


def test_only_selects_a_slice_with_the_same_run_ids(tmp_path):
    spec = {**TINY, "pruners": ["smart", "magnitude", "gmp"], "sparsities": [0.5, 0.75], "seeds": [0, 1]}
    suite = load_and_expand(write_suite(tmp_path, spec))
    part = select_cells(suite, ["pruner=smart,gmp", "sparsity=0.75"])
    assert sorted((c.label, c.spec.sparsity, c.spec.seed) for c in part.cells) == [
        ("gmp", 0.75, 0),
        ("gmp", 0.75, 1),
        ("smart", 0.75, 0),
        ("smart", 0.75, 1),
    ]
    assert {c.run_id for c in part.cells} <= {c.run_id for c in suite.cells} and part.name == suite.name
    assert len(select_cells(suite, ["seed=1"]).cells) == 3 * 2
    with pytest.raises(ConfigError, match="seed 7 is not in suite t; allowed: 0, 1"):
        select_cells(suite, ["seed=7"])
    with pytest.raises(ConfigError, match="KEY one of task, pruner, pattern, sparsity, seed"):
        select_cells(suite, ["colour=red"])


def test_first_wave_then_cells_grouped_by_dense_model(tmp_path):
    spec = {**TINY, "pruners": ["smart", "magnitude", "gmp"], "seeds": [0, 1, 2]}
    first, rest = suite_run.first_wave(load_and_expand(write_suite(tmp_path, spec)).cells)
    assert [(c.label, c.spec.seed) for c in first] == [("smart", 0), ("smart", 1), ("smart", 2)]
    # seed 2's dense model starts last: its cells come last, so no free worker waits on its lock
    assert [(c.label, c.spec.seed) for c in rest] == [
        ("magnitude", 0),
        ("gmp", 0),
        ("magnitude", 1),
        ("gmp", 1),
        ("magnitude", 2),
        ("gmp", 2),
    ]


def test_overlapping_blocks_keep_a_run_once(tmp_path):
    spec = {**TINY, "pruners": ["magnitude"], "cells": [{"sparsities": [0.5, 0.75]}, {"sparsities": [0.5]}]}
    assert [c.spec.sparsity for c in load_and_expand(write_suite(tmp_path, spec)).cells] == [0.5, 0.75]
    same = {**TINY, "pruners": ["magnitude", {"name": "magnitude", "as": "magnitude-again"}]}
    with pytest.raises(ConfigError, match="'magnitude' and 'magnitude-again' describe the same run"):
        load_and_expand(write_suite(tmp_path, same, "same"))


def expected_cells(path: Path) -> int:
    """Cell count of a shipped suite, computed from its YAML and the pruners' pattern support; a
    pruner that keeps every weight (nomask) is one cell per (task, seed, budget, entry), whatever
    the columns it is listed under."""
    raw = yaml.safe_load(path.read_text())
    pruners = load_pruners()
    total, keep_all = 0, set()
    for block in raw.get("cells") or [{}]:
        values = {**raw, **block}
        entries = values["pruners"]
        names = [p if isinstance(p, str) else p["name"] for p in entries]
        for pattern in map(parse_pattern, values["patterns"]):
            sparsities = 1 if pattern.fixed_sparsity is not None else len(values["sparsities"])
            runnable = sum(pattern.kind in pruners[n].patterns and not pruners[n].keeps_all for n in names)
            total += len(values["tasks"]) * sparsities * runnable * len(values["seeds"])
            for entry, name in zip(entries, names, strict=True):
                if pruners[name].keeps_all and pattern.kind in pruners[name].patterns:
                    budget = json.dumps(values.get("budget"), sort_keys=True)
                    entry_key = json.dumps(entry, sort_keys=True)
                    keep_all |= {(t, s, budget, entry_key) for t in values["tasks"] for s in values["seeds"]}
    return total + len(keep_all)


@pytest.mark.parametrize("name", list_suites())
def test_plan_every_shipped_suite(name, runs_dir):
    suite = load_and_expand(name)
    out = "\n".join(plan_lines(suite))
    assert len(suite.cells) == expected_cells(suite.path) > 0
    assert len({c.run_id for c in suite.cells}) == len(suite.cells)
    for cell in suite.cells:
        assert cell.run_id in out
    assert "budget: " in out and not runs_dir.exists()
    if suite.tune is not None and suite.tune.file.exists():  # a committed tuned file covers every cell
        assert suite.tuned is not None and suite.untuned == []
    srste_off_nm = any(  # srste (N:M only) listed in a block with a pattern of another kind
        "srste" in {e.name for e in b.pruners} and any(parse_pattern(p).kind != "nm" for p in b.patterns)
        for b in suite.blocks
    )
    assert ("skipped: srste on" in out) == srste_off_nm


@pytest.mark.parametrize("name", list_suites())
def test_shipped_suites_list_every_builtin_pruner(name):
    """Every built-in method in every shipped suite; every control in leaderboard-v2, and in quick all
    but the from-scratch controls (scratch, scratch-full: their cells would take quick to 14 min); nothing
    else besides the methods.
    A suite with a committed tuned file lists exactly the pruners it was tuned for: equal tuning
    covers every label of its time, and a method added since (lamp) joins it only by tuning again."""
    pruners = load_pruners()
    builtin = {n for n, cls in pruners.items() if cls.__module__.split(".")[0] in ("smart", "baselines")}
    methods = {n for n in builtin if not pruners[n].control and not pruners[n].keeps_all}
    suite = load_suite(name)
    names = {entry.name for block in suite.blocks for entry in block.pruners}
    if suite.tune is not None and suite.tune.file.exists():
        tuned = set(json.loads(suite.tune.file.read_text())["chosen"])
        labels = {entry.label for block in suite.blocks for entry in block.pruners}
        assert labels == tuned and names <= builtin
        builtin = methods = names  # the pruners of its time
    assert methods <= names <= builtin
    if name == "leaderboard-v2":
        assert names == builtin
    if name == "quick":
        assert names == builtin - {"scratch", "scratch-full"}


def test_plan_only_and_missing_tasks(tmp_path, runs_dir, capsys):
    path = write_suite(
        tmp_path, {**TINY, "tasks": ["imagenet-resnet9000", "fmnist-tiny"], "requires_tasks_present": False}
    )
    suite = load_and_expand(path)
    missing = [c for c in suite.cells if c.spec.task == "imagenet-resnet9000"]
    assert missing and all(not c.registered and c.run_id.startswith("spec-") for c in missing)
    assert all(c.registered and len(c.run_id) == 12 for c in suite.cells if c.spec.task == "fmnist-tiny")
    assert main(["suite", "plan", path]) == 0
    assert "not registered or not importable here" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="imagenet-resnet9000 are not registered"):
        suite_run.run_suite(suite, progress=False)
    recipe = load_and_expand(write_suite(tmp_path, {**TINY, "plan_only": True}, "recipe"))
    with pytest.raises(ConfigError, match="plan-only"):
        suite_run.run_suite(recipe, progress=False)
    assert not (runs_dir / "results.jsonl").exists()


# -- status --------------------------------------------------------------------------------------
def test_status_states(tmp_path, runs_dir, capsys):
    path = write_suite(tmp_path, {**TINY, "pruners": ["magnitude"], "sparsities": [0.5, 0.75], "seeds": [0, 1]})
    suite = load_and_expand(path)
    done, running, interrupted, failed, duplicated = suite.cells[:4] + [None]
    store = ResultStore()
    store.append({"run_id": done.run_id, "metric": 1.0})
    write_marker(suite.name, running.run_id, "running", running_info())  # this (live) process
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_marker(suite.name, interrupted.run_id, "running", {**running_info(), "pid": gone.pid})  # killed: pending
    write_marker(suite.name, failed.run_id, "failed", {**running_info(), "error": "boom"})
    states = {c.run_id: (state, rows) for c, state, rows in cell_states(suite)}
    assert states == {
        done.run_id: ("done", 1),
        running.run_id: ("running", 0),
        interrupted.run_id: ("pending", 0),
        failed.run_id: ("failed", 0),
    }
    assert main(["suite", "status", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{done.run_id}     done     rows 1")
    assert lines[-1] == "suite t: 1 done, 1 running, 1 pending, 1 failed"
    with open(store.path, "a") as fh:  # a duplicate line written behind the store's back is shown
        fh.write(json.dumps({"run_id": done.run_id, "metric": 1.0}) + "\n")
    assert store_counts(store)[done.run_id] == 2


def test_dense_model_trained_once_by_parallel_workers(tmp_path, monkeypatch):
    dense = tmp_path / "dense" / "fmnist-tiny-x.pt"
    monkeypatch.setattr(cell_module, "dense_checkpoint_path", lambda task, seed, paths=None: dense)
    seen = []

    def fake_execute(run, **kwargs):
        seen.append(dense.exists())
        if not dense.exists():
            time.sleep(0.3)  # "train" the dense model while the others wait
            dense.write_bytes(b"dense")
        return {}

    monkeypatch.setattr(cell_module, "execute", fake_execute)
    runs = [SimpleNamespace(task=None, spec=SimpleNamespace(seed=0)) for _ in range(4)]
    threads = [threading.Thread(target=cell_module.execute_dense_once, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and seen.count(False) == 1  # exactly one worker found the dense model missing


WORKER_CHILD = """
import os, sys
from types import SimpleNamespace
from bench.suites import cell
def noisy_execute(run, **kwargs):
    print("pycocotools-style summary")
    os.write(2, b"C-level stderr line\\n")
    kwargs["log"]("epoch line")
    return {"metric": 1.5, "dense_metric": 2.0, "metric_name": "top1"}

cell.RunSpec = dict
cell.resolve = lambda spec: SimpleNamespace(run_id="abc123")
cell.execute_dense_once = noisy_execute
outcome = cell.run_cell({"spec": {}, "run_id": "abc123", "suite": "quiet", "threads": None,
                              "runs_dir": sys.argv[1]})
print("after the cell", outcome["ok"], outcome["metric"])
"""


def test_worker_cell_output_goes_to_its_log(runs_dir):
    """A cell run without echo (a worker process) sends what the run prints -- Python prints,
    C-level writes to fd 1/2 -- to the cell's log, not to the suite's console; fds are restored."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER_CHILD, str(runs_dir)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "after the cell True 1.5\n" and done.stderr == ""
    log = (runs_dir / "suites" / "quiet" / "logs" / "abc123.log").read_text()
    assert "pycocotools-style summary" in log and "C-level stderr line" in log and "epoch line" in log


# -- end to end -----------------------------------------------------------------------------------
def child_env(runs: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SMARTBENCH_RUNS": str(runs),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }


def run_until(cmd, env, trigger, timeout=120.0) -> bool:
    """Start ``cmd`` in its own process group and SIGKILL the group once ``trigger()`` holds.
    Returns True if it was killed, False if it finished first."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if trigger():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    assert proc.poll() is not None, "suite run hung"
    return False


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume(tmp_path, runs_dir):
    path = write_suite(tmp_path, TINY, "killme")
    suite = load_and_expand(path)
    env, store = child_env(runs_dir), ResultStore(runs_dir / "results.jsonl")
    cmd = [sys.executable, "-m", "bench.cli.main", "suite", "run", path, "--no-progress"]
    state = runs_dir / "suites" / "killme" / "state"
    checkpoints = runs_dir / "checkpoints"

    # 1. while the first cell trains its dense model; 2. after a pruning-epoch checkpoint;
    # 3. right after the first row reached the store
    assert run_until(cmd, env, lambda: any(state.glob("*.running")))
    assert [s for _, s, _ in cell_states(suite, store)] == ["pending", "pending"]  # dead pid: not "running"
    assert run_until(cmd, env, lambda: any(checkpoints.glob("*.pt")))
    run_until(cmd, env, lambda: bool(store_counts(store)))
    with open(store.path, "a") as fh:  # and a torn half line, as a kill inside an append leaves it
        fh.write('{"run_id": "' + suite.cells[1].run_id + '", "metr')
    assert not run_until(cmd + ["--workers", "2"], env, lambda: False, timeout=240)
    counts = store_counts(store)
    assert [counts[c.run_id] for c in suite.cells] == [1, 1]
    assert [s for _, s, _ in cell_states(suite, store)] == ["done", "done"]
    logs = "".join(p.read_text() for p in (runs_dir / "suites" / "killme" / "logs").glob("*.log"))
    assert "resumed after epoch 1" in logs
    assert not any(state.glob("*.running")) and not any(state.glob("*.failed"))
    rows = {r["run_id"]: r for r in store.rows()}
    assert all(rows[c.run_id]["achieved_sparsity"] == pytest.approx(0.5) for c in suite.cells)


@pytest.mark.slow
def test_submitit_local_executor(tmp_path, runs_dir):
    path = write_suite(
        tmp_path, {**TINY, "pruners": ["magnitude"], "budget": {"prune_epochs": 1, "finetune_epochs": 0}}, "slurmish"
    )
    suite = load_and_expand(path)
    jobs = {"timeout_min": 10, "cpus_per_task": 1}
    assert suite_run.run_suite(suite, launcher="slurm", cluster="local", progress=False, slurm=jobs) == 0
    assert [(s, n) for _, s, n in cell_states(suite)] == [("done", 1)]
    assert (runs_dir / "suites" / "slurmish" / "submitit").is_dir()


@pytest.mark.slow
def test_torchrun_ddp_two_ranks_agree(tmp_path, runs_dir):
    """Two gloo ranks, no mask or learnable broadcast during training (issue 34): SMART (learned
    scores, their gradients averaged) and AC/DC (hard masks from the weights, phase switches) end
    with the same masks and weights on both ranks."""
    budget = {"prune_epochs": 1, "finetune_epochs": 0}
    path = write_suite(tmp_path, {**TINY, "pruners": ["smart", "acdc"], "budget": budget}, "ddp")
    suite = load_and_expand(path)
    assert suite_run.run_suite(suite, launcher="torchrun", nproc=2, progress=False) == 0
    assert [(s, n) for _, s, n in cell_states(suite)] == [("done", 1)] * 2
    for cell in suite.cells:
        report = json.loads((runs_dir / "suites" / "ddp" / "ddp" / f"{cell.run_id}.json").read_text())
        assert report["world_size"] == 2
        ranks = report["ranks"]
        assert len(ranks) == 2 and ranks[0] == ranks[1]  # each rank's own masks and weights, digested
        row = ResultStore().get(cell.run_id)
        assert row["achieved_sparsity"] == pytest.approx(0.5) and row["pattern_valid"]
        assert not (runs_dir / "ddp" / cell.run_id).exists()  # rank-private folders removed


@pytest.mark.slow
def test_torchrun_ddp_trains_an_mmengine_task_through_its_runner(tmp_path, runs_dir):
    """Issue 34: a det/seg task under torchrun trains in mmengine's Runner, distributed in the
    launcher's process group (2 gloo ranks; each rank its DefaultSampler shard at half the batch, the
    model in MMDistributedDataParallel with rank 0's BN buffers). The calibration batches are the
    same on both ranks, so SMART's masks agree; evaluation is sharded and gathered by mmengine's
    Evaluator, and gives the numbers one process gives on the saved models."""
    import torch

    from bench.tasks.registry import get_task

    budget = {"dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 1}
    spec = {"tasks": ["scenes-seg-tiny"], "pruners": ["smart"], "patterns": ["channel"], "sparsities": [0.5]}
    suite = load_and_expand(write_suite(tmp_path, {**spec, "seeds": [0], "budget": budget}, "ddpmm"))
    assert suite_run.run_suite(suite, launcher="torchrun", nproc=2, progress=False) == 0
    (cell,) = suite.cells
    report = json.loads((runs_dir / "suites" / "ddpmm" / "ddp" / f"{cell.run_id}.json").read_text())
    assert report["world_size"] == 2 and report["ranks"][0] == report["ranks"][1]
    row = ResultStore().get(cell.run_id)
    assert row["achieved_sparsity"] == pytest.approx(0.5) and row["pattern_valid"]
    task = get_task("scenes-seg-tiny")
    (dense_file,) = (runs_dir / "dense").glob("scenes-seg-tiny-*.pt")
    dense = torch.load(dense_file, weights_only=False)
    model = task.build_model()
    task.load_dense(model, dense["model"])
    assert task.evaluate_all(model, "test") == dense["test"]  # the 2-rank evaluation == one process's


def test_sync_bn_converts_before_the_masker_and_is_refused_where_it_cannot_sync(tmp_path, runs_dir):
    """``--sync-bn``: the rank's task builds models with SyncBatchNorm (same state-dict keys as the
    BatchNorm model, so dense caches and checkpoints load either way), and the channel pattern's BN
    gating finds the synchronised BNs as it finds plain ones. Torch's SyncBatchNorm synchronises
    CUDA tensors only: on this CPU machine, and with fewer than 2 processes, the run is refused with
    one message before any cell starts."""
    import torch
    from torch import nn

    from bench.core.masks import Masker, find_prunable
    from bench.core.sparsity import parse_pattern
    from bench.suites.launch import DistributedTask
    from bench.tasks.registry import get_task

    task = get_task("fmnist-tiny")
    plain, synced = task.build_model(), DistributedTask(task, 0, 2, sync_bn=True).build_model()
    kinds = {type(m) for m in synced.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    assert list(plain.state_dict()) == list(synced.state_dict())
    synced.load_state_dict(plain.state_dict())
    names = find_prunable(synced, task.include, task.exclude, task.keep_first_last)
    gated = Masker(synced, names, parse_pattern("channel"), task.example_input())
    reference = Masker(plain, names, parse_pattern("channel"), task.example_input())
    assert all(isinstance(layer.batchnorm, nn.SyncBatchNorm) for layer in gated.layers)  # gated (parametrized)
    assert [layer.batchnorm is None for layer in reference.layers] == [False] * len(names)
    assert DistributedTask(task, 0, 2).build_model().state_dict().keys() == task.build_model().state_dict().keys()
    path = write_suite(tmp_path, TINY, "syncbn")
    suite = load_and_expand(path)
    with pytest.raises(ConfigError, match="^--sync-bn: torch's SyncBatchNorm synchronises CUDA tensors only"):
        suite_run.run_suite(suite, launcher="torchrun", nproc=2, progress=False, sync_bn=True)
    with pytest.raises(ConfigError, match="^--sync-bn: needs --nproc >= 2"):
        suite_run.run_suite(suite, launcher="torchrun", nproc=1, progress=False, sync_bn=True)
    assert [s for _, s, _ in cell_states(suite)] == ["pending"] * len(suite.cells)
    assert torch.cuda.is_available() or not any(runs_dir.rglob("*.pt"))


def test_suite_cells_carry_a_dense_checkpoint_and_an_allocation(tmp_path):
    """A block's dense_checkpoint and allocation reach every cell; the planned ids are resolve()'s."""
    import torch

    from bench.tasks.registry import get_task

    checkpoint = tmp_path / "dense.pt"
    torch.save(get_task("fmnist-tiny").build_model().state_dict(), checkpoint)
    allocation = {"policy": "global", "floor": 0.1, "ranking": "raw"}
    suite = expand(
        load_suite(write_suite(tmp_path, {**TINY, "dense_checkpoint": str(checkpoint), "allocation": allocation}))
    )
    assert len(suite.cells) == 2
    for cell in suite.cells:
        assert cell.spec.dense_checkpoint == str(checkpoint) and cell.spec.allocation == allocation
        run = resolve(cell.spec)
        assert cell.run_id == run.run_id
        assert "dense_checkpoint" in run.canonical["task"] and run.canonical["allocation"] == allocation
    plain = expand(load_suite(write_suite(tmp_path, TINY, name="plain")))
    assert {c.run_id for c in plain.cells}.isdisjoint(c.run_id for c in suite.cells)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"data": 3}, "suite.data"),
        ({"dense_checkpoint": ""}, "suite.dense_checkpoint"),
        ({"allocation": "x"}, "suite.allocation.policy"),
    ],
)
def test_bad_paths_and_allocation_name_the_field(tmp_path, change, field):
    with pytest.raises(ConfigError) as err:
        load_suite(write_suite(tmp_path, {**TINY, **change}))
    assert err.value.field == field


# -- the no-mask control: one run per (task, budget, seed), shown in every column ----------------
def test_nomask_has_one_run_per_task_budget_and_seed(tmp_path):
    spec = {**TINY, "pruners": ["magnitude", "nomask"], "patterns": ["block:1x8", "channel"], "sparsities": [0.5, 0.75]}
    spec["allocation"] = {"policy": "global", "floor": 0.1}
    suite = load_and_expand(write_suite(tmp_path, spec))
    nomask = [c for c in suite.placed() if c.label == "nomask"]
    assert len(nomask) == 4 and len({c.run_id for c in nomask}) == 1  # 4 columns, 1 run
    assert [c.label for c in suite.cells].count("nomask") == 1 and len(suite.cells) == 4 + 1
    assert len({c.run_id for c in suite.cells if c.label == "magnitude"}) == 4  # pruners keep one id per column
    # a slice that names one column still runs the shared control, and places it in that column only
    part = select_cells(suite, ["pattern=channel"])
    assert sorted(c.label for c in part.cells) == ["magnitude", "magnitude", "nomask"]
    assert {c.column for c in part.placements} == {("fmnist-tiny", "channel", 0.5), ("fmnist-tiny", "channel", 0.75)}
    # the budget and the seed still part the runs
    other = resolve(RunSpec("fmnist-tiny", "nomask", "channel", 0.5, 1, budget=TINY["budget"]))
    assert other.run_id != nomask[0].run_id


def test_nomask_numbers_do_not_depend_on_the_column(tmp_path):
    """What makes the shared run valid: the control trained under two different columns (pattern,
    sparsity, allocation) gives the same numbers, bit for bit."""
    rows = []
    for i, (pattern, sparsity, allocation) in enumerate(
        [("block:1x8", 0.5, None), ("channel", 0.9, {"policy": "global", "floor": 0.05})]
    ):
        spec = RunSpec(
            "fmnist-tiny",
            "nomask",
            pattern,
            sparsity,
            0,
            budget={"prune_epochs": 1, "finetune_epochs": 1},
            allocation=allocation,
        )
        rows.append(execute(resolve(spec), log=lambda _m: None, paths=RunPaths(tmp_path / f"runs{i}"), wandb=False))
    assert rows[0]["run_id"] == rows[1]["run_id"]
    for field in ("metric", "val_metric", "dense_metric", "metric_before_finetune"):
        assert rows[0][field] == rows[1][field], field
    assert rows[0]["pattern"] == "block:1x8" and rows[1]["pattern"] == "channel"  # each row says where it ran
    assert "allocation" not in rows[1]  # it allocates nothing


def test_table_places_the_shared_control_in_every_column(tmp_path, runs_dir):
    from bench.reports.tables import build_table, rows_from_store

    spec = {**TINY, "pruners": ["magnitude", "nomask"], "sparsities": [0.5, 0.75], "seeds": [0, 1]}
    suite = load_and_expand(write_suite(tmp_path, spec))
    store = ResultStore()
    for i, cell in enumerate(suite.cells):
        store.append(
            {
                "run_id": cell.run_id,
                "task": "fmnist-tiny",
                "pruner": cell.spec.pruner,
                "pattern": cell.spec.pattern,
                "target_sparsity": cell.spec.sparsity,
                "achieved_sparsity": 0.0 if cell.label == "nomask" else cell.spec.sparsity,
                "seed": cell.spec.seed,
                "metric_name": "top1",
                "metric": 80.0 + i,
                "dense_metric": 79.0 + cell.spec.seed,
            }
        )
    frame = rows_from_store(suite, store)
    control = frame[frame["label"] == "nomask"]
    assert sorted(control["sparsity"]) == [0.5, 0.5, 0.75, 0.75] and control["run_id"].nunique() == 2
    table = build_table(frame, suite)
    row = table.stats[(table.stats["label"] == "nomask")]
    assert sorted(row["sparsity"]) == [0.5, 0.75] and set(row["n"]) == {2} and set(row["expected_n"]) == {2}
    assert table.render("md").count("| nomask") == 1
