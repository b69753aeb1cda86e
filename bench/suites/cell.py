"""One suite cell in this process: claim it, mark it running, run it with its log, record the outcome.

Used by every launcher (bench.suites.suite_run's local workers, bench.suites.launch's torchrun ranks and
Slurm jobs). A *payload* (:func:`payload_for`) is the plain-JSON description of a cell that a
worker needs, the runs folder included (workers never read it from the environment).

Claims: the process that runs a cell first claims it (:func:`claimed`, an ``flock`` on
``state/<run_id>.lock``, see bench.suites.suite) and checks the store again. A cell claimed by another
runner, or already in the store, is not run: its outcome has ``skipped`` set.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.core.errors import ConfigError
from bench.core.paths import RunPaths, paths_or_env
from bench.core.process import prepare_process
from bench.runs.record import ResultStore
from bench.runs.run import RunSpec, dense_checkpoint_path, execute, resolve
from bench.suites.suite import Cell, Suite, claim_cell, claim_holder, clear_marker, running_info, write_marker


def cell_log_path(suite_name: str, run_id: str, paths: RunPaths | None = None) -> Path:
    path = paths_or_env(paths).cell_log(suite_name, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def payload_for(
    cell: Cell,
    suite: Suite,
    wandb_project: str | None,
    threads: int | None,
    paths: RunPaths | None = None,
    sync_bn: bool = False,
) -> dict[str, Any]:
    """Everything a worker (another process, a Slurm job, a torchrun rank) needs: plain JSON,
    the runs folder included (workers never read it from the environment)."""
    return {
        "spec": dict(cell.spec.__dict__),
        "run_id": cell.run_id,
        "suite": suite.name,
        "wandb_project": wandb_project,
        "threads": threads,
        "runs_dir": str(paths_or_env(paths).root),
        "sync_bn": sync_bn,  # DDP ranks only (bench.suites.launch.DistributedTask)
    }


def payload_paths(payload: dict[str, Any]) -> RunPaths:
    """The runs folder a payload names (older payloads without one: the environment's)."""
    return RunPaths(payload["runs_dir"]) if payload.get("runs_dir") else RunPaths.from_env()


# -- one cell ----------------------------------------------------------------------------------
@contextlib.contextmanager
def output_into(log_file):
    """Point this process's stdout and stderr (file descriptors 1 and 2, so C code, pycocotools'
    prints and logging handlers bound to ``sys.stdout`` follow) at ``log_file``; restore after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def execute_dense_once(run, paths: RunPaths | None = None, **kwargs) -> dict[str, Any]:
    """``execute`` such that only one process trains the dense model of (task, seed)."""
    paths = paths_or_env(paths)
    kwargs["paths"] = paths
    dense = dense_checkpoint_path(run.task, run.spec.seed, paths)
    ready = dense.with_name(dense.name + ".ready")  # for tasks that cache their dense model elsewhere
    if dense.exists() or ready.exists():
        return execute(run, **kwargs)
    dense.parent.mkdir(parents=True, exist_ok=True)
    with open(dense.with_name(dense.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process trains this dense model
        if not (dense.exists() or ready.exists()):
            row = execute(run, **kwargs)
            ready.touch()
            return row
    return execute(run, **kwargs)


@contextlib.contextmanager
def claimed(payload: dict[str, Any]) -> Iterator[dict[str, Any] | None]:
    """Claim the payload's cell for this process while the with-block runs (``claim_cell``).

    Yields None when this process holds the claim and the store has no row for the cell: run it.
    Otherwise yields the outcome of a skipped cell, ``{"run_id", "ok": True, "skipped": reason}``:
    claimed by another runner (its markers are left alone), or done by another runner (the row
    appeared after this runner planned its cells)."""
    suite, run_id, paths = payload["suite"], payload["run_id"], payload_paths(payload)
    with claim_cell(suite, run_id, paths) as held:
        if not held:
            holder = claim_holder(suite, run_id, paths)
            reason = "claimed by another runner" + (f" ({holder})" if holder else "")
            yield {"run_id": run_id, "ok": True, "skipped": reason}
        elif ResultStore(paths.store).get(run_id) is not None:
            yield {"run_id": run_id, "ok": True, "skipped": "done by another runner"}
        else:
            yield None


def run_cell(payload: dict[str, Any], echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one cell in this process if it can claim it (:func:`claimed`; else the skipped outcome);
    markers + log file; returns an outcome dict (never raises for a failing run: the error goes
    to ``<run_id>.failed``). Without ``echo`` (a worker process, a Slurm job, a torchrun rank)
    everything the run prints goes to the cell's log file, so the suite's console shows only its
    progress and one line per cell."""
    prepare_process()
    if payload.get("threads"):
        import torch

        torch.set_num_threads(int(payload["threads"]))
    with claimed(payload) as skipped:
        return skipped or _run_claimed_cell(payload, echo)


def _run_claimed_cell(payload: dict[str, Any], echo: Callable[[str], None] | None) -> dict[str, Any]:
    """The body of :func:`run_cell`, run while this process holds the cell's claim."""
    suite, run_id, paths = payload["suite"], payload["run_id"], payload_paths(payload)
    write_marker(suite, run_id, "running", running_info(), paths)
    clear_marker(suite, run_id, "failed", paths)
    started = time.perf_counter()
    with (
        open(cell_log_path(suite, run_id, paths), "a", encoding="utf-8") as log_file,
        output_into(log_file) if echo is None else contextlib.nullcontext(),
    ):

        def log(message: str) -> None:
            log_file.write(message + "\n")
            log_file.flush()
            if echo:
                echo(f"  [{run_id}] {message}")

        try:
            run = resolve(RunSpec(**payload["spec"]))
            if run.run_id != run_id:
                raise ConfigError(
                    "run_id",
                    f"cell resolves to {run.run_id}, the suite planned {run_id}: "
                    "the code or a task changed while the suite ran; rerun `suite run`",
                )
            row = execute_dense_once(run, paths=paths, log=log, wandb_project=payload.get("wandb_project"), group=suite)
        except Exception as err:  # noqa: BLE001 — any failure of one run is recorded, the suite goes on
            log(traceback.format_exc())
            write_marker(suite, run_id, "failed", {**running_info(), "error": f"{type(err).__name__}: {err}"}, paths)
            clear_marker(suite, run_id, "running", paths)
            return {
                "run_id": run_id,
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "wall_s": round(time.perf_counter() - started, 1),
            }
    clear_marker(suite, run_id, "running", paths)
    return done_outcome(run_id, row, round(time.perf_counter() - started, 1))


def done_outcome(run_id: str, row: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The outcome of a finished cell, from its result row (what the suite console prints)."""
    return {
        "run_id": run_id,
        "ok": True,
        "metric": row["metric"],
        "dense_metric": row["dense_metric"],
        "metric_name": row["metric_name"],
        "wall_s": wall_s,
    }
