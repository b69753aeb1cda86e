"""What a process that trains does first, before any torch work (no torch import at module level:
the CLI calls it before torch is loaded, as bench.core.allocator asks)."""

from __future__ import annotations

from bench.core.allocator import keep_freed_cpu_memory


def prepare_process() -> None:
    """Keep freed CPU memory for reuse (:func:`bench.core.allocator.keep_freed_cpu_memory`), then
    flush subnormal floats to zero before torch's thread pool exists
    (:func:`bench.core.device.flush_denormals`)."""
    keep_freed_cpu_memory()
    from bench.core.device import flush_denormals  # imports torch

    flush_denormals()
