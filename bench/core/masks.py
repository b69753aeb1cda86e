"""Prunable-layer discovery, masks through ``torch.nn.utils.parametrize``, audit and folding.

Discovery (:func:`find_prunable`): every ``nn.Conv2d`` (grouped and depthwise included) and
``nn.Linear`` in module order. By default the *first* and *last* of them are excluded (the stem
sees raw pixels and the classifier maps to the labels; both are tiny and every pruning paper
keeps them dense). Override with ``include``/``exclude`` name patterns (``fnmatch``).

Masks: each prunable weight gets a :class:`UnitMask` parametrization, so ``module.weight`` is
``original * expand(unit_mask)`` in every forward while the optimiser updates the dense
``original``.  For the ``channel`` pattern the same unit mask also gates the layer's bias and
the affine terms of the BatchNorm that directly consumes the layer's output (found by tracing
one forward pass), so a pruned channel outputs exactly zero and the masked model equals its
physically shrunk twin. When such a BatchNorm exists, a soft channel gate acts on the BN affine
terms only and the weights are multiplied by the gate's support (zeroed where it is exactly 0):
BN would normalise a weight scale away, and its running statistics would no longer match the
weights once the gate turns hard.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bench.core.device import device_of, to_device
from bench.core.errors import ConfigError
from bench.core.sparsity import OutputChannel, Pattern


@dataclass
class PrunableLayer:
    name: str
    module: nn.Module
    batchnorm: nn.Module | None = None  # BN consuming this layer's output (channel pattern)
    unit_shape: tuple[int, ...] = ()
    input_sq_mean: Tensor | None = field(default=None, repr=False)  # per input channel, from calibration
    positions: int = 1  # output positions per sample (H_out*W_out, tokens): MACs = kept weights * positions

    @property
    def weight(self) -> Tensor:
        """The dense trainable weight (the parametrization's original when masked)."""
        if parametrize.is_parametrized(self.module, "weight"):
            return self.module.parametrizations.weight.original
        return self.module.weight

    @property
    def num_units(self) -> int:
        return int(torch.Size(self.unit_shape).numel())


class UnitMask(nn.Module):
    """Parametrization ``w -> w * expand(mask)``; the mask is set from outside each step.

    ``straight_through=True`` keeps the masked forward but passes the gradient to every
    weight unchanged (SR-STE style). ``support_only=True`` multiplies by the mask's support
    (mask != 0) instead of its value: used for output channels feeding a BatchNorm, where the
    (soft) gate acts on the BN affine terms — a scale on the weights would be normalised away
    in training and would corrupt the BN running statistics when the mask turns hard.
    """

    def __init__(self, pattern: Pattern, shape: torch.Size):
        super().__init__()
        self.pattern = pattern
        self.shape = torch.Size(shape)
        self.mask: Tensor | None = None
        self.straight_through = False
        self.support_only = False
        self.held = False  # the hard mask is held in the weight itself (Masker.hold): the forward is the identity
        self._source: tuple[Tensor, int] | None = None  # the unit mask ``mask`` was expanded from
        self._applied: tuple | None = None  # (mask, its version, support_only, dtype, the factor) of a fixed mask

    def set(self, unit_mask: Tensor | None) -> None:
        """Expand ``unit_mask`` for the next forwards. A fixed mask set again (the same tensor,
        unmodified, outside autograd: a hard mask held over steps) keeps its expansion, which
        for blocks is a copy of the whole weight's size (3.8 ms per fmnist-resnet step)."""
        if unit_mask is None:
            self.mask = self._source = self._applied = None
            return
        source = self._source
        if source is not None and source[0] is unit_mask and source[1] == unit_mask._version:
            return
        self.mask = self.pattern.expand(unit_mask, self.shape)
        self._source = None if unit_mask.requires_grad else (unit_mask, unit_mask._version)

    def factor(self, dtype: torch.dtype) -> Tensor:
        """What the weight is multiplied by: the mask (or its support) in ``dtype``. For a fixed
        mask (no autograd) it is made once per mask, not in every forward (a hard mask held over
        the fine-tuning stage: one cast, or a compare and a cast, fewer per layer and step); the
        same tensor, unmodified, under the same settings reuses it."""
        mask, applied = self.mask, self._applied
        if torch.compiler.is_compiling():  # a compiled graph fuses the cast into the product: no cache
            return (mask != 0).to(dtype) if self.support_only else mask.to(dtype)
        key = (mask, mask._version, self.support_only, dtype)
        if applied is not None and applied[0] is mask and applied[1:4] == key[1:]:
            return applied[4]
        factor = (mask != 0).to(dtype) if self.support_only else mask.to(dtype)
        self._applied = None if mask.requires_grad else (*key, factor)
        return factor

    def forward(self, weight: Tensor) -> Tensor:
        if self.mask is None or self.held:
            return weight
        mask = self.factor(weight.dtype)
        if self.straight_through:
            return weight + (weight * mask - weight).detach()
        return weight * mask


# the smallest gate value the BN affine terms see during a learned-gate search (Masker.set_masks
# with affine_only): an "off" gate multiplies its channel by this in the forward (negligible), and a
# ReLU-family activation after the BN then passes the gate its channel's activation as gradient
# (d relu(g z) / dg = relu(z) for any g > 0) instead of relu'(0) = 0
SEARCH_GATE_FLOOR = 1e-6


class ChannelMask(nn.Module):
    """Parametrization of a 1-D per-channel tensor (bias, BN weight/bias).

    ``floor`` > 0: the mask's forward value is at least ``floor`` while its gradient is the
    mask's own (straight-through), see SEARCH_GATE_FLOOR."""

    def __init__(self):
        super().__init__()
        self.mask: Tensor | None = None
        self.floor = 0.0
        self.held = False  # as UnitMask.held

    def forward(self, value: Tensor) -> Tensor:
        if self.mask is None or self.held:
            return value
        mask = self.mask.to(value.dtype)
        if self.floor:
            mask = mask + (self.floor - mask).clamp(min=0).detach()
        return value * mask


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_prunable(
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None, keep_first_last: bool = True
) -> list[str]:
    """Names of prunable Conv2d/Linear modules (see module docstring for the default)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if keep_first_last and len(names) > 2:
        names = names[1:-1]
    if include:
        names = [n for n in names if _matches(n, include)]
    if exclude:
        names = [n for n in names if not _matches(n, exclude)]
    if not names:
        raise ConfigError("layers", "no prunable Conv2d/Linear layer left after include/exclude")
    return names


def channel_tensors(layer: PrunableLayer) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) of the per-channel tensors an output-channel mask also zeroes: the layer's
    bias and the affine terms of the BatchNorm right after it."""
    out = []
    if getattr(layer.module, "bias", None) is not None:
        out.append((layer.module, "bias"))
    bn = layer.batchnorm
    if bn is not None and bn.affine:
        out += [(bn, "weight"), (bn, "bias")]
    return out


def covered_layers(model: nn.Module, names: list[str], pattern: Pattern) -> tuple[dict[str, int], dict[str, str]]:
    """({layer: units} the pattern tiles, {layer: reason} of those it cannot) -- the rule for layers a
    pattern cannot cover: they stay dense, the target sparsity is exact over the covered layers,
    and the audit lists the others with their reason (``dense_layers``). Depthwise convs (one
    input channel per group) cannot take a block or N:M pattern. ConfigError when no layer is left."""
    modules = dict(model.named_modules())
    covered, dense = {}, {}
    for name in names:
        module = modules[name]
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.weight.shape[1] == 1
        if depthwise and pattern.kind in ("block", "nm"):
            dense[name] = f"depthwise conv (one input channel per group): {pattern} cannot tile it"
            continue
        try:
            pattern.check(module.weight.shape, name)
        except ConfigError as err:
            dense[name] = str(err).removeprefix(f"{err.field}: ")
            continue
        covered[name] = math.prod(pattern.unit_shape(module.weight.shape))
    if not covered:
        first = next(iter(dense.items()))
        raise ConfigError(
            "pattern", f"{pattern} fits none of the {len(names)} prunable layers (e.g. {first[0]}: {first[1]})"
        )
    return covered, dense


def find_following_batchnorms(model: nn.Module, names: list[str], example_input) -> dict[str, nn.Module]:
    """Map layer name -> BatchNorm whose input *is* that layer's output tensor (one traced forward)."""
    modules = dict(model.named_modules())
    produced: dict[int, str] = {}
    pairs: dict[str, nn.Module] = {}
    handles = []

    def record(name):
        def hook(_module, _inputs, output):
            produced[id(output)] = name

        return hook

    def match(bn):
        def hook(_module, inputs):
            owner = produced.get(id(inputs[0]))
            if owner is not None and owner not in pairs:
                pairs[owner] = bn

        return hook

    for name in names:
        handles.append(modules[name].register_forward_hook(record(name)))
    for module in modules.values():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(match(module)))
    was_training = model.training
    model.eval()
    example_input = to_device(example_input, device_of(model))
    try:
        with torch.no_grad():
            model(example_input) if not isinstance(example_input, dict) else model(**example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return pairs


class Masker:
    """Owns the parametrizations of one model for one pattern."""

    def __init__(self, model: nn.Module, layer_names: list[str], pattern: Pattern, example_input=None):
        self.model = model
        self.pattern = pattern
        modules = dict(model.named_modules())
        unknown = [n for n in layer_names if n not in modules]
        if unknown:
            raise ConfigError("layers", f"unknown module names {unknown}")
        bns = {}
        if isinstance(pattern, OutputChannel) and example_input is not None:
            bns = find_following_batchnorms(model, layer_names, example_input)
        self.layers: list[PrunableLayer] = []
        for name in layer_names:
            module = modules[name]
            pattern.check(module.weight.shape, name)
            self.layers.append(PrunableLayer(name, module, bns.get(name), pattern.unit_shape(module.weight.shape)))
        for layer in self.layers:
            weight_mask = UnitMask(pattern, layer.module.weight.shape)
            weight_mask.support_only = layer.batchnorm is not None  # only set for the channel pattern
            parametrize.register_parametrization(layer.module, "weight", weight_mask, unsafe=True)
            for owner, attr in self._channel_tensors(layer):
                parametrize.register_parametrization(owner, attr, ChannelMask(), unsafe=True)
        self.hard: dict[str, Tensor] | None = None
        self._held: tuple[list[Tensor], list[Tensor]] | None = None  # (original tensors, their 0/1 factors)

    def _channel_tensors(self, layer: PrunableLayer) -> list[tuple[nn.Module, str]]:
        return channel_tensors(layer) if isinstance(self.pattern, OutputChannel) else []

    def by_name(self) -> dict[str, PrunableLayer]:
        return {layer.name: layer for layer in self.layers}

    def set_masks(
        self, unit_masks: dict[str, Tensor] | None, straight_through: bool = False, affine_only: bool = False
    ) -> None:
        """Install unit masks (soft or hard) for the next forward passes; None = dense.

        ``affine_only`` (learned gates during search, ``Pruner.gates_see_activation``): output
        channels feeding a BatchNorm are gated on the BN affine terms only (gate values floored at
        SEARCH_GATE_FLOOR in the forward), their conv weights stay dense, so a gate at 0 still gets
        its channel's post-activation output as gradient, as in PaS's reference code, which gates
        the activation and keeps computing it. The forward output differs from the support-masked
        one only by the floor (an all-zero channel normalises to 0 there)."""
        self._release()
        for layer in self.layers:
            unit_mask = None if unit_masks is None else unit_masks[layer.name].to(layer.weight.device)
            param = layer.module.parametrizations.weight[0]
            gated = affine_only and param.support_only  # a learned gate before a BN, during search
            param.set(None if gated else unit_mask)
            param.straight_through = straight_through
            for owner, attr in self._channel_tensors(layer):
                channel = getattr(owner.parametrizations, attr)[0]
                channel.mask, channel.floor = unit_mask, SEARCH_GATE_FLOOR if gated else 0.0

    def hold(self, unit_masks: dict[str, Tensor]) -> None:
        """Install hard (0/1) unit masks *in the tensors*: each masked tensor's pruned entries are zeroed
        once and every parametrization's forward becomes the identity, so a training step runs no
        per-layer mask product (forward or backward); :meth:`rezero` after every optimizer step puts
        the zeros back (one ``torch._foreach_mul_`` for all tensors) where momentum or weight decay moved
        them. The forward equals the parametrized one (kept entries times exactly 1, pruned entries
        0), and so do the kept entries' gradients and updates with elementwise optimizers and no
        gradient clipping (the stages'), so the kept weights train as under :meth:`set_masks`; only the
        pruned entries of the dense originals differ (zero here), which no forward reads and the final
        fold zeroes anyway. The accelerator path of the fine-tuning stage (issue 34 item 2)."""
        self.set_masks(unit_masks)
        originals, factors = [], []
        for layer in self.layers:
            param = layer.module.parametrizations.weight
            unit = param[0]
            originals.append(param.original)
            factors.append(unit.factor(param.original.dtype))
            unit.held = True
            for owner, attr in self._channel_tensors(layer):
                channel = getattr(owner.parametrizations, attr)
                originals.append(channel.original)
                factors.append(channel[0].mask.to(channel.original.dtype))
                channel[0].held = True
        self._held = (originals, factors)
        self.rezero()

    def rezero(self) -> None:
        """Zero the pruned entries of every held tensor again (no-op when nothing is held)."""
        if self._held is not None:
            with torch.no_grad():
                torch._foreach_mul_(*self._held)

    def _release(self) -> None:
        """Back to parametrized masks (set_masks): the forwards multiply again."""
        if self._held is None:
            return
        self._held = None
        for layer in self.layers:
            layer.module.parametrizations.weight[0].held = False
            for owner, attr in self._channel_tensors(layer):
                getattr(owner.parametrizations, attr)[0].held = False

    def audit(self, unit_masks: dict[str, Tensor], allocation=None) -> dict:
        """Per-layer and global sparsity of hard unit masks, plus the pattern validity check.

        With the protocol's ``allocation`` (bench.core.select.Allocation; not for N:M), each layer
        says whether it was cut down to its floor (``at_floor``) and the audit counts them."""
        rows, kept_units, total_units, zero_w, total_w, valid = [], 0, 0, 0, 0, True
        floors = allocation is not None and not self.pattern.per_row_budget and allocation.policy != "from"
        for layer in self.layers:
            unit_mask = unit_masks[layer.name].bool()
            weight_mask = self.pattern.expand(unit_mask.float(), layer.module.parametrizations.weight.original.shape)
            layer_valid = self.pattern.is_valid(weight_mask)
            valid &= layer_valid
            kept, units = int(unit_mask.sum()), unit_mask.numel()
            zeros, weights = int((weight_mask == 0).sum()), weight_mask.numel()
            rows.append(
                dict(
                    layer=layer.name,
                    units=units,
                    kept_units=kept,
                    sparsity=1 - kept / units,
                    weights=weights,
                    zero_weights=zeros,
                    valid=layer_valid,
                )
            )
            if floors:
                rows[-1]["at_floor"] = kept <= allocation.minimum(units)
            kept_units, total_units, zero_w, total_w = (
                kept_units + kept,
                total_units + units,
                zero_w + zeros,
                total_w + weights,
            )
        return dict(
            layers=rows,
            achieved_sparsity=1 - kept_units / total_units,
            kept_units=kept_units,
            total_units=total_units,
            weight_sparsity=zero_w / total_w,
            pattern_valid=valid,
        ) | ({"layers_at_floor": sum(row["at_floor"] for row in rows)} if floors else {})

    def remove(self, fold: bool = True) -> None:
        """Drop the parametrizations; with ``fold`` the current (hard) masks are baked into the tensors."""
        for layer in self.layers:
            parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=fold)
            for owner, attr in self._channel_tensors(layer):
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=fold)


def calibrate(model: nn.Module, layers: list[PrunableLayer], batches, forward) -> None:
    """Store E[x^2] per input channel (``layer.input_sq_mean``) and output positions per sample.

    ``forward(model, batch)`` runs one batch; no gradients, eval mode, masks as currently set.
    """
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    positions: dict[str, int] = {}

    def count_positions(name):
        def post(_module, _inputs, output):
            positions[name] = output[0].numel() // output.shape[-1 if output.dim() != 4 else 1]

        return post

    def hook(name, is_conv):
        def pre(_module, inputs):
            x = inputs[0].detach().to(torch.float64)
            if is_conv:
                sq = x.pow(2).sum(dim=(0, 2, 3))
                n = x.shape[0] * x.shape[2] * x.shape[3]
            else:
                sq = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
                n = x.numel() // x.shape[-1]
            sums[name] = sums.get(name, 0) + sq
            counts[name] = counts.get(name, 0) + n

        return pre

    for layer in layers:
        handles.append(layer.module.register_forward_pre_hook(hook(layer.name, isinstance(layer.module, nn.Conv2d))))
        handles.append(layer.module.register_forward_hook(count_positions(layer.name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for layer in layers:
        layer.input_sq_mean = (sums[layer.name] / counts[layer.name]).to(torch.float32)
        layer.positions = positions[layer.name]


def input_norm_like_weight(layer: PrunableLayer) -> Tensor:
    """sqrt(E[x_i^2]) of the input feeding each weight, broadcast to the weight's shape."""
    weight = layer.weight
    if layer.input_sq_mean is None:
        return torch.ones_like(weight)
    norms = layer.input_sq_mean.to(weight.device).sqrt()
    if weight.dim() == 2:
        return norms.reshape(1, -1).expand_as(weight)
    groups = getattr(layer.module, "groups", 1)
    per_group = norms.reshape(groups, -1)  # (groups, in/groups)
    rows = per_group.repeat_interleave(weight.shape[0] // groups, dim=0)  # (out, in/groups)
    return rows[:, :, None, None].expand_as(weight)
