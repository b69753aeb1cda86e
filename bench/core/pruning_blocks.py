"""Shared mechanics of the built-in pruners, so that each file states only its method.

* ``straight_through(soft, hard)``: forward exactly ``hard``, gradient of ``soft`` (learned gates).
* ``HardMaskPruner``: a pruner whose forward mask is a hard unit mask it recomputes on its own
  schedule (``self.mask``, None = dense): masks(), finalize() and the state come with it.

With these, ``Pruner``'s helpers (``select``, ``keep_above``, ``unit_rms``, ``weight_norms``,
``state_attrs``) and ``bench.core.schedules``, a pruner is its config, its scores and its hooks.
"""

from __future__ import annotations

from torch import Tensor

from bench.core.pruner import Pruner


def straight_through(soft: Tensor, hard: Tensor) -> Tensor:
    """Forward exactly ``hard`` (0/1, in ``soft``'s dtype), backward identity to ``soft``."""
    return hard.to(soft.dtype) + (soft - soft.detach())


class HardMaskPruner(Pruner):
    """``self.mask``: bool unit masks by layer used in the forward pass, or None (dense).

    ``masks()`` installs it; ``finalize()`` returns it, or the exact top-k of ``unit_rms()`` when
    there is none yet; it is saved with the state. Subclasses set it in ``on_step``."""

    state_attrs = ("mask",)

    def __init__(self, config, pattern, sparsity):
        super().__init__(config, pattern, sparsity)
        self.mask: dict[str, Tensor] | None = None
        self._float: tuple[list, dict[str, Tensor]] | None = None  # (the bool masks and versions, their floats)

    def masks(self) -> dict[str, Tensor] | None:
        """``self.mask`` as floats; the same float tensors while the bool masks are the same,
        unmodified tensors (a hard mask is held for many steps: no conversion per step, and the
        masker keeps its expansion)."""
        if self.mask is None:
            return None
        source = [(name, m, m._version) for name, m in self.mask.items()]
        if self._float is not None and len(self._float[0]) == len(source):
            if all(a[0] == b[0] and a[1] is b[1] and a[2] == b[2] for a, b in zip(self._float[0], source)):
                return dict(self._float[1])
        floats = {name: m.float() for name, m in self.mask.items()}
        self._float = (source, floats)
        return dict(floats)

    def finalize(self) -> dict[str, Tensor]:
        return self.mask if self.mask is not None else self.select(self.unit_rms())
