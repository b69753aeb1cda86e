"""Every location under the runs folder, from one object that callers pass down.

``RunPaths.from_env()`` is the only place that reads ``SMARTBENCH_RUNS`` (default ``./runs``);
the CLI calls it once and hands the object to everything below it, and a suite passes its
``root`` to its workers explicitly (no ``os.environ`` changes)::

    runs/
      results.jsonl                      the result store (one row per finished run)
      dense/<task>-<key>.pt              cached dense model of (task, seed)  (+ .lock, .ready)
      checkpoints/<run_id>.pt            resume checkpoint of a native run in progress
      mm/<run_id>/                       mmengine work dir of a det/seg run in progress
      models/<run_id>.pt                 the finished run's pruned weights (bench.runs.export)
      speed/<run_id>.json                `smartbench speed` reports
      suites/<suite>/state/<run_id>.*    cell markers (running, failed) and claims (lock)
      suites/<suite>/logs/<run_id>.log   one log per cell
      wandb/                             offline W&B runs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "SMARTBENCH_RUNS"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())

    @classmethod
    def from_env(cls) -> RunPaths:
        return cls(Path(os.environ.get(ENV_VAR, "runs")))

    @property
    def store(self) -> Path:
        return self.root / "results.jsonl"

    def dense(self, task_name: str, key: str) -> Path:
        return self.root / "dense" / f"{task_name}-{key}.pt"

    def checkpoint(self, run_id: str) -> Path:
        return self.root / "checkpoints" / f"{run_id}.pt"

    def mm_work(self, run_id: str) -> Path:
        return self.root / "mm" / run_id

    def model(self, run_id: str) -> Path:
        return self.root / "models" / f"{run_id}.pt"

    def speed(self, run_id: str) -> Path:
        return self.root / "speed" / f"{run_id}.json"

    def suite_state(self, suite: str) -> Path:
        return self.root / "suites" / suite / "state"

    def suite_logs(self, suite: str) -> Path:
        return self.root / "suites" / suite / "logs"

    def cell_log(self, suite: str, run_id: str) -> Path:
        return self.suite_logs(suite) / f"{run_id}.log"


def paths_or_env(paths: RunPaths | None) -> RunPaths:
    """``paths``, or the runs folder of ``SMARTBENCH_RUNS`` for library callers that pass none."""
    return paths if paths is not None else RunPaths.from_env()
