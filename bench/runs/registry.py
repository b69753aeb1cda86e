"""The pruner registry: built-ins and plugins loaded once, looked up by name.

``bench.core.pruner`` (the core) holds the registry dict and ``@register_pruner``; it imports no
pruner. This module sits above the pruners: :func:`load_pruners` imports SMART (``smart.pruner``),
every module of the ``baselines`` package (a new file there is picked up without any other
entry) and every ``smartbench.pruners`` entry point (external packages).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

import baselines
import smart.pruner  # noqa: F401  (registers "smart")
from bench.core import pruner as core
from bench.core.errors import ConfigError
from bench.core.pruner import ENTRY_POINT_GROUP, Pruner, register_pruner
from bench.core.select import Allocation
from bench.core.sparsity import Pattern

_LOADED = False


def load_pruners() -> dict[str, type[Pruner]]:
    """Import the built-in pruners (smart, baselines/*) and entry-point plugins once."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for info in pkgutil.iter_modules(baselines.__path__):
            importlib.import_module(f"baselines.{info.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            cls = ep.load()
            if ep.name not in core.PRUNERS:
                register_pruner(ep.name)(cls)
    return core.PRUNERS  # looked up each time: tests swap the dict


def get_pruner_class(name: str) -> type[Pruner]:
    pruners = load_pruners()
    if name not in pruners:
        raise ConfigError("pruner", f"unknown pruner '{name}'; allowed: {', '.join(sorted(pruners))}")
    return pruners[name]


def build_pruner(
    name: str,
    pattern: Pattern,
    sparsity: float,
    options: dict[str, Any] | None = None,
    allocation: Allocation | None = None,
) -> Pruner:
    """The configured pruner; ``allocation``: the protocol's allocation rule (None: v1, the pruner's scope)."""
    cls = get_pruner_class(name)
    if allocation is not None and allocation.policy == "from" and not cls.transplantable:
        allowed = ", ".join(sorted(n for n, c in load_pruners().items() if c.transplantable))
        raise ConfigError(
            "allocation",
            f"from:RUN_ID transplants another run's per-layer counts into a one-shot selection; pruner '{name}' "
            f"selects during training. Allowed: {allowed}",
        )
    if allocation is not None and allocation.policy == "from" and pattern.per_row_budget:
        raise ConfigError("allocation", f"from:RUN_ID has nothing to transplant under {pattern}: N:M keeps N per row")
    config = cls.Config.from_dict(options or {}, owner=name)
    pruner = cls(config, pattern, sparsity)
    pruner.allocation = allocation
    return pruner
