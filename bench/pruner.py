"""The pruner plugin API, at its documented home (the code lives in bench.core.pruner).

External pruners import from here (docs/adding-a-pruner.md)::

    from bench.pruner import Pruner, PrunerConfig, Progress, register_pruner, check_range, check_choice
"""

from bench.core import pruner as _core
from bench.core.pruner import (
    ALL_PATTERNS,
    ENTRY_POINT_GROUP,
    PRUNERS,
    Progress,
    Pruner,
    PrunerConfig,
    check_choice,
    check_range,
    register_pruner,
)

__all__ = [
    "ALL_PATTERNS",
    "ENTRY_POINT_GROUP",
    "PRUNERS",
    "Progress",
    "Pruner",
    "PrunerConfig",
    "check_choice",
    "check_range",
    "register_pruner",
]


def __getattr__(name: str):
    return getattr(_core, name)  # the deprecated registry names (load_pruners, ...) warn there
