"""Writing and reading back run artifacts (checkpoints, saved models) safely.

Writes are atomic (temporary file, fsync, rename), so a killed process never leaves a
half-written file under its final name. Reads are checked: a truncated or otherwise unreadable
file raises :class:`CorruptArtifact`, which names the file. Callers that can rebuild the
artifact (the dense cache, a resume checkpoint) delete it and rebuild; the others report it as
one ``error:`` line.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import DataError


class CorruptArtifact(DataError):
    """A file under the runs folder cannot be read back."""

    def __init__(self, path: Path, what: str, reason: str):
        super().__init__(f"{what} {path} is truncated or corrupt ({reason})")
        self.path = path


def atomic_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_artifact(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; CorruptArtifact if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptArtifact(Path(path), what, reason[:160]) from None


def load_or_discard(path: Path, what: str, log) -> Any | None:
    """The artifact at ``path``, or None if missing; a corrupt one is deleted (logged) so it is rebuilt."""
    if not path.exists():
        return None
    try:
        return load_artifact(path, what)
    except CorruptArtifact as err:
        log(f"warning: {err}; deleted, rebuilding")
        path.unlink(missing_ok=True)
        return None
