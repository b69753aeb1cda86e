"""Sparsity patterns as data.

Every pattern works on the *matrix view* of a weight: ``W2 = (out, kh*kw*in)`` with the
input channels contiguous (a conv weight ``(O, I, kh, kw)`` is permuted to ``(O, kh, kw, I)``
and flattened; a Linear weight ``(O, I)`` is already that view). On that view:

* ``unstructured`` — every weight is one unit.
* ``block:RxC``   — R consecutive output rows × C consecutive input channels at one spatial
  tap form one unit (``block:1x8`` = 8 neighbouring input channels of one filter tap).
  R must divide ``out`` and C must divide ``in`` (per conv group), so blocks never straddle
  a tap.
* ``channel``     — one whole output row (a filter / neuron) is one unit.
* ``nm:N:M``      — units are single weights, organised in rows of M consecutive weights along
  the reduction dimension; exactly N are kept in every row (M must divide ``in``).

A pattern maps a weight to its *unit tensor* of shape ``unit_shape + (unit_size,)`` and a
unit mask (shape ``unit_shape``) back to a weight-shaped mask.  ``unit_shape`` is ``(G,)``
for block/channel/unstructured and ``(G, M)`` for N:M, where each of the G rows keeps N.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.core.errors import ConfigError

PATTERN_HELP = "unstructured | channel | block:RxC (e.g. block:1x8) | nm:N:M (e.g. nm:2:4)"


def weight_matrix(weight: Tensor) -> Tensor:
    """(O, I, kh, kw) -> (O, kh*kw*I) with input channels contiguous; 2-D weights unchanged."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    if weight.dim() == 2:
        return weight
    raise ConfigError("layer", f"only 2-D (Linear) and 4-D (Conv2d) weights are prunable, got {tuple(weight.shape)}")


def weight_from_matrix(matrix: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`weight_matrix`."""
    if len(shape) == 4:
        out_c, in_c, kh, kw = shape
        return matrix.reshape(out_c, kh, kw, in_c).permute(0, 3, 1, 2)
    return matrix.reshape(shape)


@dataclass(frozen=True)
class Pattern:
    """Base class; subclasses define the unit layout."""

    kind = "abstract"

    # -- layout -----------------------------------------------------------------------
    def check(self, shape: torch.Size, layer: str) -> None:
        """Raise ConfigError if the pattern cannot tile a weight of this shape."""

    def units(self, weight: Tensor) -> Tensor:
        """Weight -> (*unit_shape, unit_size)."""
        raise NotImplementedError

    def expand(self, unit_mask: Tensor, shape: torch.Size) -> Tensor:
        """Unit mask (*unit_shape) -> weight-shaped mask (differentiable)."""
        raise NotImplementedError

    def unit_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return tuple(self.units(torch.empty(shape, device="meta")).shape[:-1])

    # -- budget -----------------------------------------------------------------------
    @property
    def per_row_budget(self) -> bool:
        """True for N:M: the budget is N per row of M, not a global count."""
        return False

    @property
    def fixed_sparsity(self) -> float | None:
        return None

    def unit_norms(self, weight: Tensor) -> Tensor:
        """L2 norm of each unit (|w| for single-weight units)."""
        return self.units(weight).norm(dim=-1)

    def is_valid(self, mask: Tensor) -> bool:
        """True if a weight-shaped {0,1} mask obeys the pattern."""
        units = self.units(mask.to(torch.float32))
        return bool(((units == 0) | (units == 1)).all() and (units == units[..., :1]).all())

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Unstructured(Pattern):
    kind = "unstructured"

    def units(self, weight: Tensor) -> Tensor:
        return weight.reshape(-1, 1)

    def expand(self, unit_mask: Tensor, shape: torch.Size) -> Tensor:
        return unit_mask.reshape(shape)


@dataclass(frozen=True)
class Block(Pattern):
    rows: int
    cols: int
    kind = "block"

    def check(self, shape: torch.Size, layer: str) -> None:
        out_c, in_c = shape[0], shape[1]
        if out_c % self.rows or in_c % self.cols:
            raise ConfigError(
                "pattern",
                f"block:{self.rows}x{self.cols} does not divide layer '{layer}' "
                f"(out={out_c}, in per group={in_c}); rows must divide out and cols must divide in",
            )

    def units(self, weight: Tensor) -> Tensor:
        matrix = weight_matrix(weight)
        out_c, cols_total = matrix.shape
        tiles = matrix.reshape(out_c // self.rows, self.rows, cols_total // self.cols, self.cols)
        return tiles.permute(0, 2, 1, 3).reshape(-1, self.rows * self.cols)

    def expand(self, unit_mask: Tensor, shape: torch.Size) -> Tensor:
        out_c = shape[0]
        cols_total = int(torch.Size(shape).numel() // out_c)
        tiles = unit_mask.reshape(out_c // self.rows, cols_total // self.cols, 1, 1)
        tiles = tiles.expand(-1, -1, self.rows, self.cols).permute(0, 2, 1, 3)
        return weight_from_matrix(tiles.reshape(out_c, cols_total), shape)

    def __str__(self) -> str:
        return f"block:{self.rows}x{self.cols}"


@dataclass(frozen=True)
class OutputChannel(Pattern):
    kind = "channel"

    def units(self, weight: Tensor) -> Tensor:
        return weight.reshape(weight.shape[0], -1)

    def expand(self, unit_mask: Tensor, shape: torch.Size) -> Tensor:
        return unit_mask.reshape((shape[0],) + (1,) * (len(shape) - 1)).expand(shape)


@dataclass(frozen=True)
class NM(Pattern):
    n: int
    m: int
    kind = "nm"

    def check(self, shape: torch.Size, layer: str) -> None:
        if shape[1] % self.m:
            raise ConfigError(
                "pattern",
                f"nm:{self.n}:{self.m} needs M={self.m} to divide the input size of layer '{layer}' (in={shape[1]})",
            )

    def units(self, weight: Tensor) -> Tensor:
        return weight_matrix(weight).reshape(-1, self.m, 1)

    def expand(self, unit_mask: Tensor, shape: torch.Size) -> Tensor:
        out_c = shape[0]
        return weight_from_matrix(unit_mask.reshape(out_c, -1), shape)

    @property
    def per_row_budget(self) -> bool:
        return True

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def is_valid(self, mask: Tensor) -> bool:
        rows = weight_matrix(mask.to(torch.float32)).reshape(-1, self.m)
        return bool(((rows == 0) | (rows == 1)).all() and (rows.sum(dim=1) <= self.n).all())

    def __str__(self) -> str:
        return f"nm:{self.n}:{self.m}"


def parse_pattern(text: str) -> Pattern:
    """Parse ``unstructured``, ``channel``, ``block:RxC`` or ``nm:N:M``."""
    text = text.strip().lower()
    if text == "unstructured":
        return Unstructured()
    if text in ("channel", "output-channel"):
        return OutputChannel()
    block = re.fullmatch(r"block:(\d+)x(\d+)", text)
    if block:
        rows, cols = int(block.group(1)), int(block.group(2))
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise ConfigError("pattern", f"block:{rows}x{cols} needs R,C >= 1 and R*C >= 2; allowed: {PATTERN_HELP}")
        return Block(rows, cols)
    nm = re.fullmatch(r"nm:(\d+):(\d+)", text)
    if nm:
        n, m = int(nm.group(1)), int(nm.group(2))
        if not 0 < n < m:
            raise ConfigError("pattern", f"nm:{n}:{m} needs 0 < N < M; allowed: {PATTERN_HELP}")
        return NM(n, m)
    raise ConfigError("pattern", f"unknown pattern '{text}'; allowed: {PATTERN_HELP}")


def resolve_sparsity(pattern: Pattern, sparsity: float | None) -> float:
    """Check the target sparsity against the pattern; N:M fixes it to 1 - N/M."""
    fixed = pattern.fixed_sparsity
    if fixed is not None:
        if sparsity is not None and abs(sparsity - fixed) > 1e-9:
            raise ConfigError(
                "sparsity", f"{pattern} fixes the sparsity to {fixed:g}; omit --sparsity or pass {fixed:g}"
            )
        return fixed
    if sparsity is None:
        raise ConfigError("sparsity", f"required for pattern {pattern}; a value in (0, 1)")
    if not 0.0 < float(sparsity) < 1.0:
        raise ConfigError("sparsity", f"{sparsity} is outside (0, 1)")
    return float(sparsity)
