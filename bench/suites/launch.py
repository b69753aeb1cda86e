"""Launchers for one suite cell: torchrun (DDP) and Slurm/submitit, and the DDP-aware entry.

``python -m bench.suites.launch --payload JSON`` runs one cell. Without a torchrun environment
(``WORLD_SIZE`` unset or 1) it is :func:`bench.suites.cell.run_cell`. Under
``torchrun --standalone --nproc_per_node N -m bench.suites.launch ...`` every rank runs the native
trainer on its shard of every batch (DDP: nccl with rank r on ``cuda:LOCAL_RANK`` when the cell's
device resolves to CUDA, whatever GPU index the spec names; gloo on the CPU):

* the task is wrapped (:class:`DistributedTask`): ``train_batches`` yields rank r's slice
  ``batch[r::N]`` of every global batch (same global batch size, same number of steps), read
  as the task's ``shard_batches`` reads it (classification and image folders gather or decode
  only the rank's samples; other tasks read the batch and keep the slice), and
  ``loss`` runs the model through ``DistributedDataParallel`` (gradients all-reduced,
  BatchNorm buffers broadcast from rank 0 at every forward);
* the pruner is wrapped (:class:`DistributedPruner`): gradients of its own learnables (scores,
  gates) are averaged over ranks before each optimizer step (one flat all-reduce for all of them,
  an optimizer step pre-hook), so every rank holds the same weights (DDP) and the
  same learnables, and every pruner decides its masks from those alone (weights, learnables,
  its schedule, seeded draws, calibration statistics of the same unsharded calibration
  batches; no pruner reads rank-local activations): the ranks take identical decisions with no
  mask or learnable broadcast during training (issue 34; before, rank 0's masks and learnables
  were broadcast at every step, ~94 MB per step for unstructured ResNet-50). ``finalize``
  gathers a digest of each rank's own final masks and weights and stops the run with an error
  when they differ; rank 0 writes them to ``runs/suites/<suite>/ddp/<run_id>.json``;
* the dense model of (task, seed), if missing (and the cell names no ``dense_checkpoint`` of its own),
  is trained with DDP too; afterwards every rank loads rank 0's copy, and a resumed run loads rank 0's
  checkpoint on every rank;
* ranks > 0 use a private runs folder (``runs/ddp/<run_id>/rank<r>``, deleted at the end) and
  W&B disabled: only rank 0 writes the result row, the checkpoints and the W&B run.

The suite's claim on a cell (``bench.suites.suite.claim_cell``) is held by the process that starts
torchrun (:func:`torchrun_cell`), for as long as torchrun runs; the ranks do not take it. When that
process is interrupted (a submitit requeue, Ctrl-C) it stops torchrun and its ranks first.

Slurm/submitit (:func:`submit_cells`): every job runs a :class:`CellJob`, which submitit requeues
when the job is preempted or reaches its time limit; the requeued job resumes the cell from its
last epoch checkpoint (docs/suites.md, "Preemption and time limits").

The run id does not include the number of processes: a DDP run computes BatchNorm statistics
per shard (``--sync-bn``: over the global batch, CUDA only; :class:`DistributedTask`), so its numbers
can differ slightly from a single-process run of the same cell.
Tasks with their own training loop (mmengine: detection, segmentation) train in mmengine's Runner,
distributed in the process group made here (``launcher="pytorch"``; ``MMTask.world``): each rank
reads its ``DefaultSampler`` shard at batch_size / N (the same global batch as one process), the
model runs in ``MMDistributedDataParallel`` on its own device (``RankDDP``: no ``device_ids`` on
the CPU; rank 0's BatchNorm buffers at every forward, as above), the calibration batches are the
same on every rank (``WholeSampler``), evaluation is sharded and gathered in order by mmengine's
Evaluator, and a resumed run copies rank 0's mmengine work folder to every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from bench.core.device import resolve_device
from bench.core.errors import ConfigError
from bench.core.paths import RunPaths, paths_or_env
from bench.core.process import prepare_process
from bench.runs.record import REPO_ROOT, ResultStore
from bench.runs.run import RunSpec, dense_checkpoint_path, execute, resolve
from bench.suites.cell import cell_log_path, claimed, done_outcome, payload_paths, run_cell
from bench.suites.suite import clear_marker, running_info, write_marker
from bench.training.train import train_dense


class DistributedTask:
    """A task seen by one DDP rank (see module docstring); everything else is delegated.

    ``sync_bn``: every model the task builds has its BatchNorms converted to
    ``nn.SyncBatchNorm`` (``suite run --sync-bn``): batch statistics over the global batch, as a
    single process would compute them, instead of per shard. The conversion happens when the model
    is built, before the masker exists, so the channel pattern's BN gating and every checkpoint
    (the state-dict keys are those of BatchNorm) see the synchronised modules."""

    def __init__(self, task, rank: int, world: int, sync_bn: bool = False):
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_rank", rank)
        object.__setattr__(self, "_world", world)
        object.__setattr__(self, "_wrapped", {})
        object.__setattr__(self, "_sync_bn", sync_bn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._task, name, value)

    def train_batches(self, epoch: int, seed: int):
        yield from self._task.shard_batches(epoch, seed, self._rank, self._world)

    def build_model(self) -> nn.Module:
        model = self._task.build_model()
        return nn.SyncBatchNorm.convert_sync_batchnorm(model) if self._sync_bn else model

    def ddp(self, model: nn.Module) -> nn.Module:
        """The DDP wrapper of ``model`` (created at its first training step: after the masks'
        parametrizations exist and after a resume has loaded the weights)."""
        wrapped = self._wrapped.get(id(model))
        if wrapped is None or wrapped.module is not model:
            device = self._task.device
            ids = [device.index] if device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
            self._wrapped[id(model)] = wrapped
        return wrapped

    def loss(self, model: nn.Module, batch) -> Tensor:
        return self._task.loss(self.ddp(model), batch)


def digest(tensors: dict[str, Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        sha.update(name.encode())
        sha.update(tensors[name].detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


class DistributedPruner:
    """A pruner whose decisions are identical on every rank (see module docstring)."""

    def __init__(self, pruner, group):
        object.__setattr__(self, "_pruner", pruner)
        object.__setattr__(self, "_group", group)
        object.__setattr__(self, "digests", None)
        object.__setattr__(self, "_hook", None)  # the gradient-averaging optimizer hook (attach)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pruner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pruner, name, value)

    def attach(self, layers) -> None:
        self._pruner.attach(layers)
        params = list(self._pruner.parameters())
        if not params:
            return
        world = dist.get_world_size(self._group)
        ids = {id(p) for p in params}

        def average(optimizer, _args, _kwargs) -> None:
            """Before the optimizer step that updates the learnables: their gradients averaged over
            ranks in one flat all-reduce (one collective per step, not one per layer)."""
            if not any(id(p) in ids for group in optimizer.param_groups for p in group["params"]):
                return
            grads = [p.grad for p in params if p.grad is not None]  # the same on every rank: one graph
            if not grads:
                return
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=self._group)
            flat.div_(world)
            for grad, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(averaged)

        object.__setattr__(self, "_hook", register_optimizer_step_pre_hook(average))

    def finalize(self) -> dict[str, Tensor]:
        """Each rank's own final masks, checked to agree over ranks (a digest each: one gather)."""
        if self._hook is not None:  # the learnables no longer train
            self._hook.remove()
        local = self._pruner.finalize()
        weights = {layer.name: layer.weight for layer in self._pruner.layers}
        gathered: list[Any] = [None] * dist.get_world_size(self._group)
        dist.all_gather_object(gathered, {"masks": digest(local), "weights": digest(weights)}, group=self._group)
        object.__setattr__(self, "digests", gathered)
        if len({g["masks"] for g in gathered}) != 1:
            raise RuntimeError(
                f"DDP ranks disagree on {self._pruner.name}'s final masks (digests {[g['masks'] for g in gathered]}): "
                "its masks depend on something rank-local; the run is stopped rather than recorded"
            )
        return local


def check_sync_bn(sync_bn: bool, device: torch.device, nproc: int | None = None) -> None:
    """``--sync-bn`` needs several processes and CUDA: torch's SyncBatchNorm synchronises CUDA (and a
    few accelerator) tensors only and raises on CPU tensors in training; one ConfigError before any
    training instead."""
    if not sync_bn:
        return
    if nproc is not None and nproc < 2:
        raise ConfigError("--sync-bn", f"needs --nproc >= 2 with --launcher torchrun or slurm, got --nproc {nproc}")
    if device.type != "cuda":
        raise ConfigError(
            "--sync-bn",
            f"torch's SyncBatchNorm synchronises CUDA tensors only; the cells train on {device.type} "
            "(gloo ranks keep per-shard BatchNorm statistics: leave --sync-bn out)",
        )


def _decide(value: Any) -> Any:
    """Rank 0's value on every rank."""
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def ddp_cell(payload: dict[str, Any]) -> int:
    """One cell under torchrun; returns the process exit code."""
    real = payload_paths(payload)
    prepare_process()
    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    device = resolve_device(payload["spec"].get("device", "auto"))
    check_sync_bn(payload.get("sync_bn", False), device)  # before the process group, before any training
    if device.type == "cuda":  # one GPU per rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(backend=backend)  # pruner collectives, apart from DDP's buckets
    suite, run_id = payload["suite"], payload["run_id"]
    private = real.root / "ddp" / run_id / f"rank{rank}"
    paths = real if rank == 0 else RunPaths(private)  # ranks > 0: a private runs folder, no W&B
    log_file = open(cell_log_path(suite, run_id, real), "a", encoding="utf-8") if rank == 0 else None
    dense_lock = None

    def log(message: str) -> None:
        if log_file is not None:
            log_file.write(f"[ddp x{world}] {message}\n")
            log_file.flush()

    try:
        if rank == 0:
            write_marker(suite, run_id, "running", running_info(), real)
            clear_marker(suite, run_id, "failed", real)
        run = resolve(RunSpec(**payload["spec"]))
        run.task.device = device
        if run.run_id != run_id:
            raise ConfigError("run_id", f"cell resolves to {run.run_id}, the suite planned {run_id}")
        if run.task.loop == "mmengine":  # mmengine's Runner trains distributed in this process group
            run.task.world = world
        if _decide(ResultStore(real.store).get(run_id) is not None):
            log("already in the store")
            return 0
        seed = run.spec.seed
        dense_real = dense_checkpoint_path(run.task, seed, real)
        ckpt_real = real.checkpoint(run_id)
        if rank == 0:  # one dense model per (task, seed), also against concurrent cells (see suite_run)
            dense_lock = open(_mkparent(dense_real).with_name(dense_real.name + ".lock"), "a")
            fcntl.flock(dense_lock, fcntl.LOCK_EX)
        # a user's dense checkpoint (spec.dense_checkpoint) replaces the cached dense model of (task, seed)
        have_dense = run.dense_state is not None or _decide(dense_real.exists())
        have_ckpt = _decide(ckpt_real.exists())
        have_mm_work = _decide(real.mm_work(run_id).is_dir())
        if rank > 0:
            shutil.rmtree(private, ignore_errors=True)
        task = DistributedTask(run.task, rank, world, payload.get("sync_bn", False))
        if not have_dense:  # every rank trains the dense model together
            dense_path = dense_checkpoint_path(task, seed, paths)
            if task.loop == "mmengine":
                task.train_dense(seed, dense_path, log)
            else:
                train_dense(task, seed, dense_path, log)
        dist.barrier()
        if dense_lock is not None:
            dense_lock.close()  # releases the flock
            dense_lock = None
        if rank > 0:  # rank 0's dense model (BatchNorm buffers included) and checkpoint everywhere
            if run.dense_state is None:
                shutil.copyfile(dense_real, _mkparent(dense_checkpoint_path(task, seed, paths)))
            if have_ckpt:
                shutil.copyfile(ckpt_real, _mkparent(paths.checkpoint(run_id)))
            if have_mm_work:  # mmengine's epoch checkpoints: every rank resumes from rank 0's
                shutil.copytree(real.mm_work(run_id), paths.mm_work(run_id), dirs_exist_ok=True)
        dist.barrier()
        run.task, run.pruner = task, DistributedPruner(run.pruner, group)
        row = execute(
            run, log=log, wandb_project=payload.get("wandb_project"), group=suite, paths=paths, wandb=rank == 0
        )
        if rank == 0:
            report = {
                "run_id": run_id,
                "world_size": world,
                "sync_bn": payload.get("sync_bn", False),
                "ranks": run.pruner.digests,
                "metric": row["metric"],
            }
            path = _mkparent(real.root / "suites" / suite / "ddp" / f"{run_id}.json")
            path.write_text(json.dumps(report, indent=1), encoding="utf-8")
            log(f"ranks agree on the final masks: {len({d['masks'] for d in report['ranks']}) == 1}")
            clear_marker(suite, run_id, "running", real)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(real.root / "ddp" / run_id, ignore_errors=True)
        return 0
    except Exception as err:
        if rank == 0:
            log(f"failed: {type(err).__name__}: {err}")
            write_marker(suite, run_id, "failed", {**running_info(), "error": f"{type(err).__name__}: {err}"}, real)
            clear_marker(suite, run_id, "running", real)
        raise
    finally:
        if rank > 0:
            shutil.rmtree(private, ignore_errors=True)
        for handle in (log_file, dense_lock):
            if handle is not None:
                handle.close()
        dist.destroy_process_group()


def _mkparent(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- launchers used by bench.suites.suite_run ----------------------------------------------------------
def child_env(threads: int | None = None) -> dict[str, str]:
    """Environment for child interpreters: this checkout importable, threads pinned (the runs
    folder travels in the payload)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def torchrun_cell(payload: dict[str, Any], nproc: int) -> dict[str, Any]:
    """Run one cell as ``torchrun --standalone --nproc_per_node N -m bench.suites.launch`` if this process
    can claim it (``bench.suites.cell.claimed``; it holds the claim while torchrun runs), else
    return the skipped outcome."""
    with claimed(payload) as skipped:
        return skipped or _torchrun_claimed_cell(payload, nproc)


def _torchrun_claimed_cell(payload: dict[str, Any], nproc: int) -> dict[str, Any]:
    """The body of :func:`torchrun_cell`, run while this process holds the cell's claim. An exception
    while torchrun runs (submitit's ``UncompletedJobError`` after the last time limit) stops torchrun
    and its ranks and fails the cell; SystemExit (a submitit requeue) and KeyboardInterrupt stop them
    and propagate, leaving the cell to resume from its checkpoint."""
    import subprocess

    run_id, suite = payload["run_id"], payload["suite"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "bench.suites.launch",
        "--payload",
        json.dumps(payload, sort_keys=True),
    ]
    started = time.perf_counter()
    paths = payload_paths(payload)
    log_path = cell_log_path(suite, run_id, paths).with_suffix(".torchrun.log")
    with open(log_path, "a", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT), env=child_env(payload.get("threads"))
        )
        try:
            code = proc.wait()
            error = f"torchrun exited with {code} (log: {log_path})"
        except Exception as err:  # e.g. submitit's UncompletedJobError after the last time limit
            _stop_torchrun(proc)
            code, error = None, f"{type(err).__name__}: {err}"
        except BaseException:  # a submitit requeue (SystemExit from its signal handler), Ctrl-C: as a kill
            _stop_torchrun(proc)
            raise
    row = ResultStore(paths.store).get(run_id)
    wall = round(time.perf_counter() - started, 1)
    if code == 0 and row is not None:
        return done_outcome(run_id, row, wall)
    write_marker(suite, run_id, "failed", {**running_info(), "error": error}, paths)
    clear_marker(suite, run_id, "running", paths)
    return {"run_id": run_id, "ok": False, "error": error, "wall_s": wall}


def _stop_torchrun(proc, grace_s: float = 60.0) -> None:
    """Stop a torchrun launched by :func:`_torchrun_claimed_cell` and its ranks before this process
    lets go of the cell's claim: SIGTERM (torchrun passes it to every rank, waits for them up to
    30 s, then kills them), SIGKILL if torchrun is still there after ``grace_s``."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def slurm_job(payload: dict[str, Any], nproc: int) -> dict[str, Any]:
    """One cell in a submitit job: in this process, or under torchrun for nproc > 1."""
    return torchrun_cell(payload, nproc) if nproc > 1 else run_cell(payload)


class CellJob:
    """What one submitit job runs: :func:`slurm_job` of one payload, requeued on preemption or
    time limit.

    submitit's checkpointing protocol: when the job gets its preemption / time-limit signal
    (SIGUSR2 on Slurm, sent ``signal_delay_s`` before the limit; the local executor's controller
    sends it too), submitit calls :meth:`checkpoint`, pickles the ``DelayedSubmission`` it returns
    in place of the submitted one and requeues the job, which then calls that object. The state that
    matters is on disk, not in this object: the requeued job runs the same payload and the cell
    resumes from its last epoch checkpoint (``runs/checkpoints/<run_id>.pt``, or mmengine's in
    ``runs/mm/<run_id>``), as after any kill. The interrupted process's claim on the cell is an
    ``flock`` that goes with the process (for nproc > 1 it first stops torchrun and its ranks).

    ``requeues`` counts the requeues of this job. A requeued job whose cell already has its row
    (the signal came after the row was written) returns the finished outcome from the row instead
    of running anything. Time limits are requeued at most ``max_num_timeout`` times (submitit's
    default: 3), preemptions without limit; after the last time limit submitit raises
    ``UncompletedJobError`` inside the cell, which is recorded as the cell's failure (its epoch
    checkpoint stays for the next ``suite run``)."""

    def __init__(self, payload: dict[str, Any], nproc: int, requeues: int = 0):
        self.payload, self.nproc, self.requeues = payload, nproc, requeues

    def __call__(self) -> dict[str, Any]:
        run_id, paths = self.payload["run_id"], payload_paths(self.payload)
        if self.requeues:
            row = ResultStore(paths.store).get(run_id)
            with open(cell_log_path(self.payload["suite"], run_id, paths), "a", encoding="utf-8") as log:
                if row is not None:
                    log.write(
                        f"requeued job (requeue {self.requeues}): the cell had finished; its row is the outcome\n"
                    )
                    clear_marker(self.payload["suite"], run_id, "running", paths)
                    return done_outcome(run_id, row, float(row.get("wall_s", 0.0)))
                log.write(f"requeued job (requeue {self.requeues}): running the cell again from its last checkpoint\n")
        return slurm_job(self.payload, self.nproc)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit in the signal handler: the same payload, one more requeue."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(CellJob(self.payload, self.nproc, self.requeues + 1))


@contextlib.contextmanager
def _importable_checkout():
    """Jobs start fresh interpreters: make this checkout importable while submitting."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), old or "") if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def submit_cells(
    suite,
    first,
    rest,
    payloads: dict[str, dict],
    reporter,
    nproc: int,
    cluster: str | None,
    params: dict[str, Any],
    paths: RunPaths | None = None,
) -> None:
    """One submitit job per cell (:class:`CellJob`: requeued on preemption or time limit, resuming
    the cell from its last epoch checkpoint), in two waves (first cell of every dense (task, seed),
    then the rest)."""
    import submitit

    folder = paths_or_env(paths).root / "suites" / suite.name / "submitit"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except (ValueError, RuntimeError) as err:
        raise ConfigError("--cluster", f"{err}; use --cluster local to run the jobs on this machine") from None
    settings = {"name": f"smartbench-{suite.name}", "timeout_min": params.get("timeout_min", 24 * 60)}
    for key in ("slurm_partition", "slurm_account", "gpus_per_node", "cpus_per_task", "mem_gb"):
        if params.get(key) is not None:
            settings[key] = params[key]
    executor.update_parameters(**settings)
    for wave in (first, rest):
        with _importable_checkout():
            jobs = [(cell, executor.submit(CellJob(payloads[cell.run_id], nproc))) for cell in wave]
        for cell, job in jobs:
            reporter.log(f"submitted {cell.run_id} as job {job.job_id}")
        while jobs:
            time.sleep(1.0)
            for cell, job in [j for j in jobs if j[1].done()]:
                jobs.remove((cell, job))
                try:
                    outcome = job.result()
                except Exception as err:  # noqa: BLE001 — job crashed outside run_cell
                    outcome = {"run_id": cell.run_id, "ok": False, "error": f"job {job.job_id}: {err}"}
                reporter.done(cell, outcome)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suites.launch", description="run one suite cell (torchrun-aware)"
    )
    parser.add_argument("--payload", required=True, help="JSON from bench.suites.cell.payload_for")
    payload = json.loads(parser.parse_args(argv).payload)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return ddp_cell(payload)
    outcome = run_cell(payload)
    print(json.dumps(outcome))
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
