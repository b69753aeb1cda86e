"""Physical removal of pruned output channels (Torch-Pruning DepGraph), exact by construction.

A channel-pruned model (``channel`` pattern) keeps its dense shapes: a masked filter, its bias
and the affine terms of the BatchNorm right after it are zero, so the channel outputs exactly
zero. :func:`shrink_channels` turns that into a smaller dense model that gives the same outputs.

**The rule (residual connections included).** Torch-Pruning's dependency graph groups every
tensor dimension that must shrink together: a conv's output channels, the BatchNorm after it,
every consumer's input channels, and -- through residual adds, concatenations, reshapes --
the output channels of every *other* layer feeding the same tensor. A root channel is removed
only if its value is provably zero everywhere in its group, i.e. for every member of the group:

* a Conv2d/Linear that *produces* the channel (out-channel member, depthwise convs included)
  is a hard-masked layer whose mask drops that channel;
* a BatchNorm on the channel has weight == bias == 0 there (the folded channel mask);
* pass-through nodes (element-wise ops such as ReLU and residual adds, reshape, concat, split,
  slice, PReLU) keep a zero channel zero;
* consumers (input channels of convs/linears) simply lose an all-zero input.

Any other member (LayerNorm, GroupNorm, free nn.Parameter, the model output, ...) keeps the
whole group unshrunk; so does a grouped conv that is not depthwise (ResNeXt, RegNet: removing
masked channels unevenly across its groups would leave a group without channels), so those
channels stay in the shrunk model, zero. So in a ResNet stage, channel c of the residual stream is removed only if
the stem/downsample conv *and* every block's last conv on that stream dropped c; otherwise it
stays, with its masked filters still zero (the model stays exact, it is just less shrunk).
Activations are assumed to map 0 to 0 (ReLU, GELU, SiLU...); :func:`shrink_channels` checks the
shrunk model against the masked one on a random input and raises if they differ.

The model must be *folded* (no parametrizations: ``Masker.remove(fold=True)`` or
:func:`folded_copy`). The removal is recorded as Torch-Pruning's pruning history (a JSON-able
list ``[module_name, is_out_channel, indices]``), which :func:`replay_shrink` re-applies to a
freshly built dense model -- that is how exported models are rebuilt (bench/runs/export.py).
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bench.core.errors import SmartbenchError

PRODUCERS = {tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.LINEAR, tp.ops.OPTYPE.DEPTHWISE_CONV}
PASS_THROUGH = {
    tp.ops.OPTYPE.ELEMENTWISE,
    tp.ops.OPTYPE.RESHAPE,
    tp.ops.OPTYPE.CONCAT,
    tp.ops.OPTYPE.SPLIT,
    tp.ops.OPTYPE.UNBIND,
    tp.ops.OPTYPE.EXPAND,
    tp.ops.OPTYPE.SLICE,
    tp.ops.OPTYPE.PRELU,
}


class ShrinkError(SmartbenchError):
    """The shrunk model does not reproduce the masked one."""


def strip_parametrizations(model: nn.Module) -> nn.Module:
    """Replace every parametrized tensor by a plain Parameter holding its current (masked) value.

    Done by hand instead of ``parametrize.remove_parametrizations``: a deep copy of a
    parametrized module shares its dynamically created class with the original, and
    ``remove_parametrizations`` deletes the property from that shared class, which would break
    the original model.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            values = {attr: getattr(module, attr).detach().clone() for attr in module.parametrizations}
            trainable = {attr: plist.original.requires_grad for attr, plist in module.parametrizations.items()}
            module.__class__ = type(module).__bases__[0]  # the class before parametrize injected its own
            del module._modules["parametrizations"]
            for attr, value in values.items():
                module.register_parameter(attr, nn.Parameter(value, requires_grad=trainable[attr]))
    return model


def folded_copy(model: nn.Module, masker=None, hard_masks: dict[str, Tensor] | None = None) -> nn.Module:
    """A plain deep copy of ``model`` with ``hard_masks`` baked into its tensors.

    The masker's current masks are restored afterwards, so the caller's model is untouched.
    """
    if masker is None or hard_masks is None:
        return strip_parametrizations(copy.deepcopy(model))
    saved = [
        (p, p.mask, getattr(p, "straight_through", None))
        for m in model.modules()
        if parametrize.is_parametrized(m)
        for plist in m.parametrizations.values()
        for p in plist
        if hasattr(p, "mask")
    ]
    masker.set_masks({name: mask.float() for name, mask in hard_masks.items()})
    try:
        clone = copy.deepcopy(model)
    finally:
        for p, mask, straight in saved:
            p.mask = mask
            if straight is not None:
                p.straight_through = straight
    return strip_parametrizations(clone)


def _is_zero_bn(module: nn.Module, idx: int) -> bool:
    if not getattr(module, "affine", False):
        return False
    return bool(module.weight[idx] == 0) and bool(module.bias[idx] == 0)


def _blocked_roots(item, names: dict, hard_masks: dict[str, Tensor]) -> set[int] | None:
    """Root indices this group member forbids removing; None = it forbids the whole group."""
    kind, module = item.dep.target.type, item.dep.target.module
    pairs = list(zip(item.idxs, item.root_idxs))
    if isinstance(module, nn.Conv2d) and 1 < module.groups < module.in_channels:
        return None  # a grouped (not depthwise) conv: uneven removal would break its groups
    if kind in PRODUCERS:
        producing = item.dep.handler in (
            tp.prune_conv_out_channels,
            tp.prune_linear_out_channels,
            tp.prune_depthwise_conv_out_channels,
        )
        if not producing:
            return set()  # a consumer: it just loses all-zero inputs
        mask = hard_masks.get(names.get(module))
        if mask is None:
            return None
        return {root for idx, root in pairs if bool(mask[idx])}
    if kind == tp.ops.OPTYPE.BN:
        return {root for idx, root in pairs if not _is_zero_bn(module, idx)}
    if kind in PASS_THROUGH:
        return set()
    return None


def _dependency_graph(model: nn.Module, example_input) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()  # tracing runs a forward: no BatchNorm statistics update
    try:
        return tp.DependencyGraph().build_dependency(model, example_input, verbose=False)
    finally:
        model.train(was_training)


def removable_channels(
    model: nn.Module, hard_masks: dict[str, Tensor], example_input, graph: tp.DependencyGraph | None = None
) -> list[tuple[str, list[int]]]:
    """(root layer name, root channel indices to remove) for every group with something to remove."""
    graph = graph or _dependency_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    plan = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        channels = set(range(graph.get_out_channels(root)))
        for item in group.items:
            blocked = _blocked_roots(item, names, hard_masks)
            if blocked is None:
                channels = set()
                break
            channels -= blocked
        if channels and len(channels) < graph.get_out_channels(root):
            plan.append((names[root], sorted(channels)))
    return plan


def _outputs(model: nn.Module, x) -> list[Tensor]:
    out = model(**x) if isinstance(x, dict) else model(x)
    flat = []

    def collect(value):
        if isinstance(value, Tensor):
            flat.append(value.detach().float())
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)

    collect(out)
    return flat


def random_like_input(example_input, seed: int = 0):
    """A seeded random input with the example's shape (dict inputs: only tensors replaced)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(example_input, Tensor):
        return torch.randn(example_input.shape, generator=gen).to(example_input)
    if isinstance(example_input, dict):
        return {
            k: random_like_input(v, seed) if isinstance(v, Tensor) and v.is_floating_point() else v
            for k, v in example_input.items()
        }
    return example_input


def shrink_channels(
    model: nn.Module, hard_masks: dict[str, Tensor], example_input, verify: bool = True, rtol: float = 1e-4
) -> list:
    """Remove every removable masked channel in place (see module docstring); returns the history.

    ``hard_masks``: layer name -> bool mask over output channels (Masker unit masks of the
    ``channel`` pattern). With ``verify`` the shrunk model must match the input model (eval
    mode, random input) to ``rtol`` of the output scale, else :class:`ShrinkError`.
    """
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("shrink_channels needs a folded model (Masker.remove(fold=True) or folded_copy)")
    was_training = model.training
    model.eval()
    probe = random_like_input(example_input)
    with torch.no_grad():
        reference = _outputs(model, probe) if verify else None
    graph = _dependency_graph(model, example_input)
    plan = removable_channels(model, hard_masks, example_input, graph)
    modules = dict(model.named_modules())
    for name, channels in plan:
        root = modules[name]
        fn = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, fn, channels).prune()
    if verify:
        with torch.no_grad():
            got = _outputs(model, probe)
        for ref, out in zip(reference, got):
            scale = max(1.0, float(ref.abs().max()))
            if ref.shape != out.shape or float((ref - out).abs().max()) > rtol * scale:
                raise ShrinkError(
                    "the shrunk model does not reproduce the masked model's outputs "
                    "(an activation with f(0) != 0 or an unsupported op in a pruned group?)"
                )
    model.train(was_training)
    return [list(entry) for entry in graph.pruning_history()]


def replay_shrink(model: nn.Module, history: list, example_input) -> nn.Module:
    """Re-apply a recorded shrink (from :func:`shrink_channels`) to a fresh dense model, in place."""
    if history:
        _dependency_graph(model, example_input).load_pruning_history([list(entry) for entry in history])
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
