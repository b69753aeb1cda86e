"""Running a suite: skip finished cells, resume interrupted ones, launch the rest.

Launchers (one cell = one run):

* ``local``  — in this process (``--workers 1``) or in N spawned worker processes, each with
  ``torch.set_num_threads(max(1, cpus // N))``.
* ``torchrun`` — one ``torchrun --standalone --nproc_per_node N -m bench.launch`` per cell
  (DDP, see bench/launch.py); ``--workers`` such jobs at a time.
* ``slurm``  — one submitit job per cell (``submitit.AutoExecutor``; ``cluster="local"`` runs the
  jobs as local processes, which is what the tests use).

The dense model of a (task, seed) is trained once: cells are ordered so the first cell of every
(task, seed) comes first, and the process that finds the dense checkpoint missing holds an
exclusive ``flock`` on ``runs/dense/<ckpt>.lock`` while it runs its cell; the others wait for it.
Slurm launches in two waves (first cell of every (task, seed), then the rest).

Several runners of one suite at once (two terminals, a Slurm array beside a local run) share the
work: the process that runs a cell (worker, Slurm job, or the parent of a torchrun job) first
claims it (:func:`claimed`, an ``flock`` on ``state/<run_id>.lock``, see bench.suite) and checks
the store again. A cell claimed by another runner, or already in the store, is not run: its
outcome has ``skipped`` set and the console shows ``skip   <run_id> ...: <reason>``.

Console: a progress bar and one line per cell on a terminal; plain, unwrapped lines otherwise
(``suite run ... | tee log`` keeps every line whole).
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.errors import ConfigError
from bench.paths import RunPaths, paths_or_env
from bench.record import ResultStore
from bench.run import RunSpec, dense_checkpoint_path, execute, resolve
from bench.suite import (Cell, Suite, cell_states, claim_cell, claim_holder, clear_marker, running_info,
                         write_marker)

LAUNCHERS = ("local", "torchrun", "slurm")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cell_log_path(suite_name: str, run_id: str, paths: RunPaths | None = None) -> Path:
    path = paths_or_env(paths).cell_log(suite_name, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def payload_for(cell: Cell, suite: Suite, wandb_project: str | None, threads: int | None,
                paths: RunPaths | None = None) -> dict[str, Any]:
    """Everything a worker (another process, a Slurm job, a torchrun rank) needs: plain JSON,
    the runs folder included (workers never read it from the environment)."""
    return {"spec": dict(cell.spec.__dict__), "run_id": cell.run_id, "suite": suite.name,
            "wandb_project": wandb_project, "threads": threads, "runs_dir": str(paths_or_env(paths).root)}


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
    with open(cell_log_path(suite, run_id, paths), "a", encoding="utf-8") as log_file, \
            (output_into(log_file) if echo is None else contextlib.nullcontext()):
        def log(message: str) -> None:
            log_file.write(message + "\n")
            log_file.flush()
            if echo:
                echo(f"  [{run_id}] {message}")

        try:
            run = resolve(RunSpec(**payload["spec"]))
            if run.run_id != run_id:
                raise ConfigError("run_id", f"cell resolves to {run.run_id}, the suite planned {run_id}: "
                                            "the code or a task changed while the suite ran; rerun `suite run`")
            row = execute_dense_once(run, paths=paths, log=log, wandb_project=payload.get("wandb_project"), group=suite)
        except Exception as err:  # noqa: BLE001 — any failure of one run is recorded, the suite goes on
            log(traceback.format_exc())
            write_marker(suite, run_id, "failed", {**running_info(), "error": f"{type(err).__name__}: {err}"}, paths)
            clear_marker(suite, run_id, "running", paths)
            return {"run_id": run_id, "ok": False, "error": f"{type(err).__name__}: {err}",
                    "wall_s": round(time.perf_counter() - started, 1)}
    clear_marker(suite, run_id, "running", paths)
    return {"run_id": run_id, "ok": True, "metric": row["metric"], "dense_metric": row["dense_metric"],
            "metric_name": row["metric_name"], "wall_s": round(time.perf_counter() - started, 1)}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# -- ordering and progress ---------------------------------------------------------------------
def first_wave(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """(first cell of every dense (task, seed) in suite order, the rest grouped by dense model).

    The rest is ordered by the rank of its dense model in the first wave (suite order within a
    group): the dense models that start training first are ready first, so a free worker takes a
    cell whose dense model is ready instead of waiting on the lock of one still in training."""
    rank: dict[str, int] = {}
    first, rest = [], []
    for cell in cells:
        (rest if cell.dense_key in rank else first).append(cell)
        rank.setdefault(cell.dense_key, len(rank))
    return first, sorted(rest, key=lambda cell: rank[cell.dense_key])


class Reporter:
    """rich progress bar + one line per finished cell. The bar only when enabled and stdout is a
    terminal; otherwise plain ``print`` lines, never wrapped (``| tee log`` keeps each line whole)."""

    def __init__(self, total: int, enabled: bool = True, suite_name: str = "", paths: RunPaths | None = None):
        self.total, self.enabled, self.progress, self.suite_name = total, enabled, None, suite_name
        self.paths = paths_or_env(paths)
        self.failed: list[str] = []
        self.skipped: list[str] = []  # cells left to another runner

    def __enter__(self) -> "Reporter":
        if self.enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]suite"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self.progress.start()
            self.bar = self.progress.add_task("cells", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def log(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, flush=True)

    def done(self, cell: Cell, outcome: dict[str, Any]) -> None:
        what = f"{cell.spec.task} {cell.label} {cell.spec.pattern} {cell.spec.sparsity:g} seed {cell.spec.seed}"
        if outcome.get("skipped"):
            self.skipped.append(cell.run_id)
            self.log(f"skip   {cell.run_id} {what}: {outcome['skipped']}")
        elif outcome.get("ok"):
            self.log(f"done   {cell.run_id} {what}: {outcome['metric_name']} {outcome['metric']:.2f} "
                     f"(dense {outcome['dense_metric']:.2f}) {outcome['wall_s']:.1f}s")
        else:
            self.failed.append(cell.run_id)
            log = self.paths.cell_log(self.suite_name, cell.run_id)
            self.log(f"FAILED {cell.run_id} {what}: {outcome.get('error')} (log: {log})")
        if self.progress is not None:
            self.progress.advance(self.bar)


# -- the suite -------------------------------------------------------------------------------
def run_suite(suite: Suite, workers: int = 1, launcher: str = "local", nproc: int = 1,
              wandb_project: str | None = None, progress: bool = True, cluster: str | None = None,
              slurm: dict[str, Any] | None = None, store: ResultStore | None = None,
              paths: RunPaths | None = None) -> int:
    """Run every unfinished cell of an expanded suite; returns 0 if all succeeded, else 1."""
    paths = paths_or_env(paths)
    if launcher not in LAUNCHERS:
        raise ConfigError("--launcher", f"unknown launcher '{launcher}'; allowed: {', '.join(LAUNCHERS)}")
    if workers < 1 or nproc < 1:
        raise ConfigError("--workers" if workers < 1 else "--nproc", "must be >= 1")
    if launcher == "local" and nproc > 1:
        raise ConfigError("--nproc", "several processes per run need --launcher torchrun (or slurm)")
    if suite.plan_only:
        raise ConfigError("suite.plan_only", f"suite '{suite.name}' is a plan-only recipe; `suite plan` lists its cells")
    missing = sorted({c.spec.task for c in suite.cells if not c.registered})
    if missing:
        raise ConfigError("suite.tasks", f"task(s) {', '.join(missing)} are not registered here; cannot run")
    project = wandb_project or suite.wandb_project
    states = cell_states(suite, store, paths)
    todo = [cell for cell, state, _ in states if state in ("pending", "failed")]
    busy = [cell for cell, state, _ in states if state == "running"]
    for cell, state, _ in states:
        if state == "done":  # a kill between the row's append and the marker's removal leaves one behind
            clear_marker(suite.name, cell.run_id, "running", paths)
            clear_marker(suite.name, cell.run_id, "failed", paths)
    first, rest = first_wave(todo)
    with Reporter(len(todo), progress, suite.name, paths) as reporter:
        reporter.log(f"suite {suite.name}: {len(states)} cells, {len(states) - len(todo) - len(busy)} done, "
                     f"{len(todo)} to run ({launcher}, {workers} worker(s), {nproc} process(es) per run)")
        for cell in busy:
            reporter.log(f"skip   {cell.run_id}: running in another process (marker {cell.run_id}.running)")
        if launcher == "slurm":
            from bench.launch import submit_cells

            per_job = (slurm or {}).get("cpus_per_task")  # threads of a job: its CPUs, else torch's default
            payloads = {c.run_id: payload_for(c, suite, project, per_job and max(1, per_job // nproc), paths) for c in todo}
            submit_cells(suite, first, rest, payloads, reporter, nproc, cluster, slurm or {}, paths)
        elif launcher == "torchrun":
            from bench.launch import torchrun_cell

            threads = max(1, cpu_count() // (workers * nproc))
            _pool(ThreadPoolExecutor(workers), first + rest, reporter,
                  lambda pool, c: pool.submit(torchrun_cell, payload_for(c, suite, project, threads, paths), nproc))
        elif workers == 1:  # in this process, with its thread count
            for cell in first + rest:
                reporter.done(cell, run_cell(payload_for(cell, suite, project, None, paths), echo=reporter.log))
        else:
            threads = max(1, cpu_count() // workers)
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(threads,))
            _pool(pool, first + rest, reporter, lambda p, c: p.submit(run_cell, payload_for(c, suite, project, threads, paths)))
        if reporter.skipped:
            reporter.log(f"{len(reporter.skipped)} cell(s) skipped: claimed or done by another runner")
        if reporter.failed:
            reporter.log(f"{len(reporter.failed)} cell(s) failed: {', '.join(reporter.failed)}; logs under "
                         f"{paths.suite_logs(suite.name)}; `suite run` retries them")
    return 1 if reporter.failed else 0


def _pool(pool, cells: list[Cell], reporter: Reporter, submit) -> None:
    """Submit every cell (first wave first) and report each as it finishes."""
    with pool:
        jobs = {submit(pool, cell): cell for cell in cells}
        for job in as_completed(jobs):
            try:
                outcome = job.result()
            except Exception as err:  # noqa: BLE001 — a worker died (e.g. out of memory): the cell stays pending
                outcome = {"run_id": jobs[job].run_id, "ok": False, "error": f"worker died: {type(err).__name__}: {err}"}
            reporter.done(jobs[job], outcome)
