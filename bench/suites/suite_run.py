"""Running a suite: skip finished cells, resume interrupted ones, launch the rest.

Launchers (one cell = one run):

* ``local``  — in this process (``--workers 1``) or in N spawned worker processes, each with
  ``torch.set_num_threads(max(1, cpus // N))`` and, where several GPUs are visible, its own GPU
  (worker i on GPU i mod the count).
* ``torchrun`` — one ``torchrun --standalone --nproc_per_node N -m bench.suites.launch`` per cell
  (DDP, see bench/suites/launch.py); ``--workers`` such jobs at a time.
* ``slurm``  — one submitit job per cell (``submitit.AutoExecutor``; ``cluster="local"`` runs the
  jobs as local processes, which is what the tests use).

One cell (claim, markers, log, run) is bench/suites/cell.py. The dense model of a (task, seed) is trained
once: cells are ordered so the first cell of every
(task, seed) comes first, and the process that finds the dense checkpoint missing holds an
exclusive ``flock`` on ``runs/dense/<ckpt>.lock`` while it runs its cell; the others wait for it.
Slurm launches in two waves (first cell of every (task, seed), then the rest). Transplant controls
(``allocation: from``) run last, in a wave of their own, after the cells whose counts they read.

Several runners of one suite at once (two terminals, a Slurm array beside a local run) share the
work: the process that runs a cell (worker, Slurm job, or the parent of a torchrun job) first
claims it (:func:`bench.suites.cell.claimed`, an ``flock`` on ``state/<run_id>.lock``) and checks
the store again. A cell claimed by another runner, or already in the store, is not run: its
outcome has ``skipped`` set and the console shows ``skip   <run_id> ...: <reason>``.

Console: a progress bar and one line per cell on a terminal; plain, unwrapped lines otherwise
(``suite run ... | tee log`` keeps every line whole).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Any

from bench.core.errors import ConfigError
from bench.core.paths import RunPaths, paths_or_env
from bench.runs.record import ResultStore
from bench.suites.cell import payload_for, run_cell
from bench.suites.launch import submit_cells, torchrun_cell
from bench.suites.suite import Cell, Suite, cell_states, clear_marker

LAUNCHERS = ("local", "torchrun", "slurm")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_worker(threads: int, counter=None) -> None:
    """A local worker process: its thread count, and (several GPUs visible) its own GPU, the
    worker's index (``counter``, shared by the pool) modulo the GPUs: cells on ``auto``/``cuda``
    run there (``resolve_device`` takes the current device; an explicit ``cuda:N`` stays N)."""
    import torch

    from bench.core.process import prepare_process

    prepare_process()  # before the thread pool exists, so that its threads inherit the FTZ mode
    torch.set_num_threads(threads)
    if counter is not None:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible > 1:
            torch.cuda.set_device(index % visible)


# -- ordering and progress ---------------------------------------------------------------------
def is_transplant(cell: Cell) -> bool:
    """A transplant control (``allocation: {policy: from, source: RUN_ID}``): it runs after every
    other cell of the suite, since it reads its source run's row (bench.runs.run.transplant_counts)."""
    allocation = cell.spec.allocation
    return isinstance(allocation, dict) and allocation.get("policy") == "from"


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

    def __enter__(self) -> Reporter:
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
            self.log(
                f"done   {cell.run_id} {what}: {outcome['metric_name']} {outcome['metric']:.2f} "
                f"(dense {outcome['dense_metric']:.2f}) {outcome['wall_s']:.1f}s"
            )
        else:
            self.failed.append(cell.run_id)
            log = self.paths.cell_log(self.suite_name, cell.run_id)
            self.log(f"FAILED {cell.run_id} {what}: {outcome.get('error')} (log: {log})")
        if self.progress is not None:
            self.progress.advance(self.bar)


# -- the suite -------------------------------------------------------------------------------
def run_suite(
    suite: Suite,
    workers: int = 1,
    launcher: str = "local",
    nproc: int = 1,
    wandb_project: str | None = None,
    progress: bool = True,
    cluster: str | None = None,
    slurm: dict[str, Any] | None = None,
    store: ResultStore | None = None,
    paths: RunPaths | None = None,
    sync_bn: bool = False,
) -> int:
    """Run every unfinished cell of an expanded suite; returns 0 if all succeeded, else 1.
    ``sync_bn``: DDP ranks (torchrun / slurm with ``nproc`` >= 2) use SyncBatchNorm."""
    paths = paths_or_env(paths)
    if launcher not in LAUNCHERS:
        raise ConfigError("--launcher", f"unknown launcher '{launcher}'; allowed: {', '.join(LAUNCHERS)}")
    if workers < 1 or nproc < 1:
        raise ConfigError("--workers" if workers < 1 else "--nproc", "must be >= 1")
    if launcher == "local" and nproc > 1:
        raise ConfigError("--nproc", "several processes per run need --launcher torchrun (or slurm)")
    if sync_bn:
        import torch

        from bench.core.device import resolve_device
        from bench.suites.launch import check_sync_bn

        check_sync_bn(True, torch.device("cuda"), nproc)
        if launcher == "torchrun":  # the ranks run here: their device is known now (a Slurm job's is not)
            for device in {c.spec.device for c in suite.cells}:
                check_sync_bn(True, resolve_device(device), nproc)
    if suite.plan_only:
        raise ConfigError(
            "suite.plan_only", f"suite '{suite.name}' is a plan-only recipe; `suite plan` lists its cells"
        )
    if suite.untuned:  # a leaderboard mixing tuned and untuned pruners is not an equal-tuning one
        raise ConfigError(
            "suite.tune.file",
            f"{suite.tune.file} has no tuned config for {', '.join(suite.untuned)}; rerun `smartbench tune {suite.name}`",
        )
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
    transplants = [cell for cell in todo if is_transplant(cell)]  # they read their sources' rows: after them
    first, rest = first_wave([cell for cell in todo if not is_transplant(cell)])
    with Reporter(len(todo), progress, suite.name, paths) as reporter:
        reporter.log(
            f"suite {suite.name}: {len(states)} cells, {len(states) - len(todo) - len(busy)} done, "
            f"{len(todo)} to run ({launcher}, {workers} worker(s), {nproc} process(es) per run)"
        )
        for cell in busy:
            reporter.log(f"skip   {cell.run_id}: running in another process (marker {cell.run_id}.running)")
        for wave_first, wave_rest in ((first, rest), ([], transplants)):
            if not wave_first and not wave_rest:
                continue
            if launcher == "slurm":
                per_job = (slurm or {}).get("cpus_per_task")  # threads of a job: its CPUs, else torch's default
                payloads = {
                    c.run_id: payload_for(c, suite, project, per_job and max(1, per_job // nproc), paths, sync_bn)
                    for c in wave_first + wave_rest
                }
                submit_cells(suite, wave_first, wave_rest, payloads, reporter, nproc, cluster, slurm or {}, paths)
            elif launcher == "torchrun":
                threads = max(1, cpu_count() // (workers * nproc))
                _pool(
                    ThreadPoolExecutor(workers),
                    wave_first + wave_rest,
                    reporter,
                    lambda pool, c, t=threads: pool.submit(
                        torchrun_cell, payload_for(c, suite, project, t, paths, sync_bn), nproc
                    ),
                )
            elif workers == 1:  # in this process, with its thread count
                for cell in wave_first + wave_rest:
                    reporter.done(cell, run_cell(payload_for(cell, suite, project, None, paths), echo=reporter.log))
            else:
                threads = max(1, cpu_count() // workers)
                context = multiprocessing.get_context("spawn")
                pool = ProcessPoolExecutor(
                    workers,
                    mp_context=context,
                    initializer=_init_worker,
                    initargs=(threads, context.Value("i", 0)),  # each worker takes the next GPU
                )
                _pool(
                    pool,
                    wave_first + wave_rest,
                    reporter,
                    lambda p, c, t=threads: p.submit(run_cell, payload_for(c, suite, project, t, paths)),
                )
        if reporter.skipped:
            reporter.log(f"{len(reporter.skipped)} cell(s) skipped: claimed or done by another runner")
        if reporter.failed:
            reporter.log(
                f"{len(reporter.failed)} cell(s) failed: {', '.join(reporter.failed)}; logs under "
                f"{paths.suite_logs(suite.name)}; `suite run` retries them"
            )
    return 1 if reporter.failed else 0


def _pool(pool, cells: list[Cell], reporter: Reporter, submit) -> None:
    """Submit every cell (first wave first) and report each as it finishes."""
    with pool:
        jobs = {submit(pool, cell): cell for cell in cells}
        for job in as_completed(jobs):
            try:
                outcome = job.result()
            except Exception as err:  # noqa: BLE001 — a worker died (e.g. out of memory): the cell stays pending
                outcome = {
                    "run_id": jobs[job].run_id,
                    "ok": False,
                    "error": f"worker died: {type(err).__name__}: {err}",
                }
            reporter.done(jobs[job], outcome)
