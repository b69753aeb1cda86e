"""Preemption-safe cluster runs: a submitit job interrupted the way Slurm interrupts it (SIGUSR2
before its time limit) is requeued and resumes its cell from the last epoch checkpoint, to the
same row as an uninterrupted run (bench.suites.launch.CellJob), in-process and under torchrun."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.core.artifacts import load_artifact
from bench.core.paths import RunPaths
from bench.runs.record import REPO_ROOT, ResultStore
from bench.suites import suite_run
from bench.suites.cell import payload_for
from bench.suites.launch import CellJob
from bench.suites.suite import load_and_expand, store_counts
from bench.tasks.registry import get_task
from bench.training.train import seed_everything

# timeout_min <= 10: submitit's signal handler counts the signal as a time limit (no guaranteed
# walltime below 10 min), which it requeues only for a checkpointable callable
JOBS = {"timeout_min": 10}
NOT_COMPARED = ("wall_s", "prune_wall_s", "provenance")  # timings, host, time of day, git state


def wait_for(condition, timeout: float, what: str, step: float = 0.05):
    """Poll ``condition()`` every ``step`` seconds until it is truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def tiny_suite(tmp_path: Path, budget: dict):
    """One fmnist-tiny gmp cell with ``budget`` from a fixed dense checkpoint (a seeded, untrained
    test_resnet), so that the test spends its time in the stage whose resume it checks."""
    seed_everything(0)
    dense = tmp_path / "dense.pt"
    torch.save(get_task("fmnist-tiny").build_model().state_dict(), dense)
    spec = {
        "tasks": ["fmnist-tiny"],
        "pruners": ["gmp"],
        "patterns": ["block:1x8"],
        "sparsities": [0.5],
        "seeds": [0],
        "budget": budget,
        "dense_checkpoint": str(dense),
    }
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    suite = load_and_expand(str(path))
    assert len(suite.cells) == 1
    return suite


def job_processes(folder: Path) -> list[int]:
    """Pids of the task processes of the local submitit jobs in ``folder``: the children of their
    controllers, whose pids are the job ids (what the local controller signals at a time limit)."""
    controllers = {path.name.split("_")[0] for path in folder.glob("*_submitted.pkl")}
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if ppid in controllers:
            pids.append(int(stat.parent.name))
    return pids


def preempt_and_compare(tmp_path: Path, monkeypatch, nproc: int, budget: dict) -> None:
    """Run one cell twice in parallel, as local submitit jobs of ``nproc`` processes each: in one runs
    folder uninterrupted, in another through ``suite run --launcher slurm --cluster local``, sending
    SIGUSR2 to that job once the pruning stage wrote its first epoch checkpoint. Checks the requeue,
    the resume after epoch 1, and that the interrupted cell ends with one row equal to the other's
    (timings and host aside) and the same saved weights and masks, bit for bit."""
    import submitit

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    suite = tiny_suite(tmp_path, budget)
    run_id = suite.cells[0].run_id
    cut, ref = RunPaths(tmp_path / "preempted"), RunPaths(tmp_path / "reference")
    jobs = {**JOBS, "cpus_per_task": nproc}  # one torch thread per process in both runs

    # the uninterrupted run: the callable submit_cells submits, the same executor settings
    reference = submitit.AutoExecutor(folder=tmp_path / "reference-jobs", cluster="local")
    reference.update_parameters(**jobs)
    ref_job = reference.submit(CellJob(payload_for(suite.cells[0], suite, None, 1, ref), nproc))

    # the interrupted one: `suite run --launcher slurm --cluster local [--nproc 2]`
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(
            suite_run.run_suite(
                suite, launcher="slurm", cluster="local", nproc=nproc, progress=False, slurm=jobs, paths=cut
            )
        )
    )
    runner.start()
    try:
        checkpoint = cut.checkpoint(run_id)
        wait_for(checkpoint.exists, 240, "the first epoch checkpoint of the pruning stage")
        [pid] = job_processes(cut.root / "suites" / suite.name / "submitit")
        if nproc == 1:  # the job runs the cell in its own process
            assert json.loads((cut.suite_state(suite.name) / f"{run_id}.running").read_text())["pid"] == pid
        # what Slurm sends signal_delay_s before the time limit (submitit's --signal=USR2@delay) and the
        # local controller too (LocalJob._interrupt() would signal the controller, which does not forward it)
        os.kill(pid, signal.SIGUSR2)
    finally:
        runner.join(timeout=300)
    assert not runner.is_alive(), "the requeued job did not finish"
    assert codes == [0]
    ref_outcome = ref_job.result()
    assert ref_outcome["ok"] and "skipped" not in ref_outcome

    # requeued once, resumed after epoch 1: no epoch trained twice, none left out
    log = cut.cell_log(suite.name, run_id).read_text()
    ranks = "[ddp x2] " if nproc == 2 else ""
    assert log.count("requeued job (requeue 1): running the cell again from its last checkpoint") == 1
    assert "requeue 2" not in log
    assert log.count(f"{ranks}resumed after epoch 1") == 1
    prune, epochs = budget["prune_epochs"], budget["prune_epochs"] + budget["finetune_epochs"]
    for epoch in range(1, epochs + 1):
        line = f"{ranks}{'prune' if epoch <= prune else 'finetune'} epoch {epoch}/{epochs} "
        assert log.count(line) == 1, line
    job_logs = "".join(p.read_text() for p in (cut.root / "suites" / suite.name / "submitit").glob("*_log.*"))
    assert job_logs.count("Starting with JobEnvironment") == 2  # one job, started twice

    # one row, equal to the uninterrupted run's except timings and host; the same saved weights and masks
    assert store_counts(ResultStore(cut.store))[run_id] == 1
    state = cut.suite_state(suite.name)
    assert not (state / f"{run_id}.running").exists() and not (state / f"{run_id}.failed").exists()
    assert not checkpoint.exists()  # removed once the row was written
    row, ref_row = ResultStore(cut.store).get(run_id), ResultStore(ref.store).get(run_id)
    compared = {k: v for k, v in row.items() if k not in NOT_COMPARED}
    assert compared == {k: v for k, v in ref_row.items() if k not in NOT_COMPARED}
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"]
    saved, ref_saved = load_artifact(cut.model(run_id), "model"), load_artifact(ref.model(run_id), "model")
    for part in ("state_dict", "hard_masks"):
        assert saved[part].keys() == ref_saved[part].keys()
        assert all(torch.equal(saved[part][k], ref_saved[part][k]) for k in saved[part]), part
    assert not job_processes(cut.root / "suites" / suite.name / "submitit")  # no rank left behind

    # a job requeued after its cell finished returns the finished outcome from the row, runs nothing
    again = CellJob(payload_for(suite.cells[0], suite, None, 1, cut), nproc, requeues=2)()
    assert again["ok"] and "skipped" not in again and again["metric"] == row["metric"]
    assert store_counts(ResultStore(cut.store))[run_id] == 1


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes_to_the_uninterrupted_row(tmp_path, monkeypatch):
    preempt_and_compare(tmp_path, monkeypatch, nproc=1, budget={"prune_epochs": 2, "finetune_epochs": 1})


@pytest.mark.slow
def test_preempted_torchrun_job_stops_its_ranks_and_resumes_to_the_uninterrupted_row(tmp_path, monkeypatch):
    """nproc > 1: the job process stops torchrun and its ranks (SIGTERM) before it lets go of the claim
    (no fine-tuning epoch: DDP on gloo is slow here)."""
    preempt_and_compare(tmp_path, monkeypatch, nproc=2, budget={"prune_epochs": 2, "finetune_epochs": 0})


def test_an_interrupted_dense_stage_resumes_to_the_same_dense_model(tmp_path):
    """The dense stage (90 epochs on ImageNet) is the longest: a killed or requeued job resumes it from
    its last epoch checkpoint (``<cache>.resume``) and ends with the uninterrupted model, bit for bit."""
    import dataclasses

    from bench.training.train import train_dense

    task = get_task("fmnist-tiny")
    task.budget = dataclasses.replace(task.budget, dense_epochs=3)
    reference = train_dense(task, 0, tmp_path / "reference.pt", log=lambda _m: None)

    class Killed(Exception):
        pass

    def killed_in_epoch_3(message: str) -> None:
        if message.startswith("dense epoch 3/"):
            raise Killed

    cut = tmp_path / "cut.pt"
    with pytest.raises(Killed):
        train_dense(task, 0, cut, log=killed_in_epoch_3)
    assert not cut.exists() and (tmp_path / "cut.pt.resume").exists()
    logs: list[str] = []
    resumed = train_dense(task, 0, cut, log=logs.append)
    assert "resumed after epoch 2" in logs and [m for m in logs if m.startswith("dense epoch")] == [logs[-1]]
    assert resumed.state.keys() == reference.state.keys()
    assert all(torch.equal(resumed.state[k], reference.state[k]) for k in reference.state)
    assert not (tmp_path / "cut.pt.resume").exists()
