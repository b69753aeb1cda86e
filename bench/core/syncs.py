"""Count the host synchronisations a piece of code would cause on a GPU, on the CPU.

On a GPU, an operation whose result the host must read (a Python scalar, a data-dependent output
shape) stalls the host until the device has finished everything queued before it. On the CPU
nothing stalls, but the same operations still pass through torch's dispatcher, so a
``TorchDispatchMode`` sees them (issue 34: sync-free training steps, tested on the CPU):

- ``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``,
  indexing with a 0-dim tensor;
- data-dependent shapes: ``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing
  (``aten.index`` / ``index_put`` with a bool index), ``repeat_interleave`` with tensor repeats;
- ``aten.equal`` / ``is_nonzero`` (a bool answer on the host).

``Tensor.tolist``, ``Tensor.numpy`` and ``Tensor.__array__`` read a CPU tensor's memory directly, so
the dispatcher never sees them; :class:`HostSyncCounter` wraps them for its duration.

    with HostSyncCounter() as syncs:
        step()
    syncs.count, syncs.by_op  # e.g. 3, {"_local_scalar_dense": 2, "nonzero": 1}
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that always need the host to wait for the device
ALWAYS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "equal",
        "is_nonzero",
    }
)
HOST_READS = ("tolist", "numpy", "__array__")

# Two paths, one result. Where reading a value on the host buys a faster step on the CPU (a
# bracket counted before a selection, an early exit from a root solve, a floor checked before it
# is enforced), the code takes that path only when :func:`may_read` says so: on the CPU, where
# nothing waits, the host path stays -- bit for bit what the golden cases and every committed row
# ran; on an accelerator, and on the CPU under :func:`sync_free` (the tests' and
# scripts/count_syncs.py's way to run the accelerator path here), the device-only path runs.
_SYNC_FREE = [False]


def may_read(tensor: torch.Tensor) -> bool:
    """Whether a training step may read ``tensor``'s values on the host: True on the CPU, False on
    an accelerator and under :func:`sync_free`."""
    return tensor.device.type == "cpu" and not _SYNC_FREE[0]


@contextmanager
def sync_free():
    """Run the device-only (accelerator) paths on the CPU too, for tests and sync counts."""
    before, _SYNC_FREE[0] = _SYNC_FREE[0], True
    try:
        yield
    finally:
        _SYNC_FREE[0] = before


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class HostSyncCounter(TorchDispatchMode):
    """Counts the operations that would synchronise the host with a GPU (module docstring)."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self._saved: dict[str, object] = {}

    @property
    def count(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ALWAYS:
            self.by_op[name] += 1
        elif name in ("index", "_index_put_impl_", "index_put", "index_put_") and _bool_index(args[1]):
            self.by_op[f"{name}[bool]"] += 1
        elif name == "repeat_interleave":
            repeats = args[1] if len(args) > 1 else args[0]  # (self, repeats, ...) or (repeats, ...)
            if isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None:
                self.by_op[name] += 1  # the output length is read from the device
        return func(*args, **kwargs)

    def __enter__(self):
        for attr in HOST_READS:
            original = getattr(torch.Tensor, attr)
            self._saved[attr] = original

            def counted(tensor, *args, _original=original, _attr=attr, **kwargs):
                self.by_op[_attr] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, attr, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for attr, original in self._saved.items():
                setattr(torch.Tensor, attr, original)
            self._saved.clear()
