"""Result rows: provenance, the crash-safe local store, and W&B logging.

The store is one JSON-lines file (``RunPaths.store``: ``runs/results.jsonl`` by default;
``SMARTBENCH_RUNS`` moves the whole runs folder). Appends take an exclusive ``flock``, skip a run_id already present, write one
line and ``fsync`` it, so a crash leaves at most one torn final line, which readers ignore and
the next append repairs. One row per finished run, never two.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.core.device import cpu_model
from bench.core.paths import RunPaths

REPO_ROOT = Path(__file__).resolve().parents[2]


def runs_dir() -> Path:
    """The runs folder of ``SMARTBENCH_RUNS`` (kept for callers of the old API; see bench.core.paths)."""
    return RunPaths.from_env().root


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# `git diff` output pinned against the user's git config (colour, external drivers, rename
# detection, diff algorithm, prefixes), so one uncommitted state gives one text on every machine
DIFF_ARGS = (
    "diff",
    "HEAD",
    "--binary",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--no-renames",
    "--diff-algorithm=myers",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)
LARGE_UNTRACKED = 16 * 2**20  # an untracked file above this many bytes enters the hash by name and size


def _git_bytes(root: Path, *args: str) -> bytes | None:
    """``git args`` run in ``root``: its raw stdout, None when git is missing or fails (not a checkout...)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def head_tags(root: Path = REPO_ROOT) -> list[str]:
    """The tags pointing at the checkout's HEAD, sorted; [] for none (or no git)."""
    out = _git_bytes(root, "tag", "--points-at", "HEAD")
    return sorted(out.decode().split()) if out else []


def tree_diff_sha256(root: Path = REPO_ROOT) -> str | None:
    """sha256 of the uncommitted state of the git checkout at ``root``: the output of ``git diff
    HEAD`` (tracked files, staged or not; :data:`DIFF_ARGS`) plus the name and contents of every
    untracked file git does not ignore (``git ls-files --others --exclude-standard``; one above
    :data:`LARGE_UNTRACKED` bytes by name and size). Two rows made from the same uncommitted state
    share it. None for a clean tree, and where ``root`` is no git checkout."""
    diff = _git_bytes(root, *DIFF_ARGS)
    listed = _git_bytes(root, "ls-files", "--others", "--exclude-standard", "-z")
    if diff is None or listed is None:
        return None
    names = sorted(name for name in listed.split(b"\0") if name)
    if not diff and not names:
        return None
    digest = hashlib.sha256(b"git diff HEAD\0%d\0" % len(diff))
    digest.update(diff)
    for name in names:
        digest.update(b"\0untracked\0%d\0%s\0" % (len(name), name))
        path = Path(root) / os.fsdecode(name)
        try:
            size = path.stat().st_size
            if size > LARGE_UNTRACKED:
                digest.update(b"large %d" % size)
                continue
            digest.update(b"%d\0" % size)
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


# The code version this process imported, taken once at import: a long-running worker whose
# checkout moves on (a commit during a suite) keeps reporting the code it actually runs. A tree
# with uncommitted changes or untracked files also records their hash (tree_diff_sha256; once per
# process, like the rest), so rows of one uncommitted state can be told from rows of another.
CODE_VERSION = {
    "git_sha": _git("rev-parse", "HEAD") or "unknown",
    "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
}
_DIFF_SHA256 = tree_diff_sha256(REPO_ROOT) if CODE_VERSION["git_sha"] != "unknown" else None
if _DIFF_SHA256 is not None:
    CODE_VERSION["git_diff_sha256"] = _DIFF_SHA256
_TAGS = head_tags(REPO_ROOT)
if _TAGS:  # the tags naming the commit (a leaderboard sweep runs at one: `leaderboard-v3`); absent when none
    CODE_VERSION["git_tags"] = _TAGS


def provenance(dataset_hash: str) -> dict[str, Any]:
    import timm

    return {
        **CODE_VERSION,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's kernel set (AVX2, AVX512...)
        "threads": torch.get_num_threads(),
        "dataset_hash": dataset_hash,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class ResultStore:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else RunPaths.from_env().store

    def rows(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        seen = set()
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn last line of a crashed append
                if row.get("run_id") not in seen:
                    seen.add(row.get("run_id"))
                    yield row

    def get(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.rows() if r["run_id"] == run_id), None)

    def get_many(self, run_ids) -> dict[str, dict[str, Any]]:
        """{run_id: row} for the stored ones among ``run_ids``, in one read of the file."""
        wanted = set(run_ids)
        return {r["run_id"]: r for r in self.rows() if r["run_id"] in wanted}

    def count(self, run_id: str) -> int:
        if not self.path.exists():
            return 0
        n = 0
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    n += json.loads(line).get("run_id") == run_id
                except json.JSONDecodeError:
                    pass
        return n

    def append(self, row: dict[str, Any]) -> bool:
        """Append unless the run_id is already stored; returns True if written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, sort_keys=True, default=float) + "\n"
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                text = fh.read()
                for existing in text.splitlines():
                    try:
                        if json.loads(existing).get("run_id") == row["run_id"]:
                            return False
                    except json.JSONDecodeError:
                        pass
                if text and not text.endswith("\n"):
                    fh.write("\n")  # fence off a torn line
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
                return True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def log_wandb(
    row: dict[str, Any],
    spec: dict[str, Any],
    project: str | None = None,
    group: str | None = None,
    directory: Path | None = None,
) -> str | None:
    """One W&B run per result row (offline unless WANDB_MODE says otherwise), under ``directory``
    (the runs folder). Returns the run dir."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return None
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(
        project=project or os.environ.get("SMARTBENCH_WANDB_PROJECT", "smartbench"),
        group=group,
        name=f"{row['task']}/{row['pruner']}/{row['pattern']}/{row['target_sparsity']:g}/s{row['seed']}",
        id=row["run_id"],
        config=spec,
        dir=str(directory or RunPaths.from_env().root),
        reinit="finish_previous",
    )
    summary = {k: v for k, v in row.items() if isinstance(v, (int, float, str, bool))}
    run.summary.update(summary)
    layers = row["audit"]["layers"]
    columns = list(layers[0])
    run.log({"sparsity_audit": wandb.Table(columns=columns, data=[[layer[c] for c in columns] for layer in layers])})
    run.finish()
    return str(run.dir) if hasattr(run, "dir") else None
