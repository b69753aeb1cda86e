"""The host-sync counter (bench.core.syncs) sees what would stall a GPU, and nothing else."""

from __future__ import annotations

import torch

from bench.core.syncs import HostSyncCounter


def counted(fn) -> dict[str, int]:
    with HostSyncCounter() as syncs:
        fn()
    return dict(syncs.by_op)


def test_every_kind_of_host_read_is_counted_once():
    x = torch.randn(12)
    assert counted(lambda: x.sum().item()) == {"_local_scalar_dense": 1}
    assert counted(lambda: bool(x.max() > 0)) == {"_local_scalar_dense": 1}
    assert counted(lambda: x[torch.tensor(3)]) == {"_local_scalar_dense": 1}  # indexing with a 0-dim tensor
    assert counted(lambda: x[x > 0]) == {"index[bool]": 1}
    assert counted(lambda: x.nonzero()) == {"nonzero": 1}
    assert counted(lambda: torch.unique(x.round())) != {}
    assert counted(lambda: x.tolist()) == {"tolist": 1} and counted(lambda: x.numpy()) == {"numpy": 1}
    assert counted(lambda: torch.repeat_interleave(x, torch.full((12,), 2))) == {"repeat_interleave": 1}


def test_device_side_code_counts_zero_and_the_tensor_methods_come_back():
    x = torch.randn(12)

    def device_only():
        threshold = x.sort().values[-4]  # the 4th largest, kept on the device
        torch.where(x >= threshold, x, torch.zeros_like(x)).mul_(2.0)
        torch.repeat_interleave(x, 2)  # an int repeat: the length is known on the host

    assert counted(device_only) == {}
    original = torch.Tensor.tolist
    with HostSyncCounter():
        assert torch.Tensor.tolist is not original
    assert torch.Tensor.tolist is original


# -- every pruner's training step on the accelerator path (issue 34) ---------------------------------

import contextlib  # noqa: E402

import pytest  # noqa: E402
from torch import nn  # noqa: E402

import bench  # noqa: E402
from bench.core.errors import ConfigError  # noqa: E402
from bench.core.syncs import sync_free  # noqa: E402
from bench.runs.registry import load_pruners  # noqa: E402

PATTERNS = ("block:1x4", "channel", "unstructured", "nm:2:4")
ALLOCATIONS = {
    "v1": ("v1", "params"),
    "global": ({"policy": "global", "floor": 0.1}, "params"),
    "uniform": ("uniform", "params"),
    "global-flops": ({"policy": "global", "floor": 0.1}, "flops"),
}
PRUNE_STEPS, FINETUNE_STEPS = 10, 3


def net(depth: int = 2) -> nn.Module:
    """A small conv net with BatchNorm: a stem (left dense), ``depth`` 8-channel 3x3 convs, a
    16-channel conv, a head (left dense) -- depth + 1 prunable layers."""
    torch.manual_seed(0)
    body = [nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    for _ in range(depth):
        body += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    body += [nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*body, nn.Linear(16, 10))


def syncs_of_a_run(pruner: str, pattern: str, allocation: str, device_paths: bool = True):
    """Host syncs in every step of a short user loop -- the pruner's calls, the forward, the backward
    through the pruner's own autograd functions and the optimizer step (None: not runnable)."""
    model = net()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    rule, budget = ALLOCATIONS[allocation]
    try:
        pruning = bench.prune(
            model,
            pruner=pruner,
            pattern=pattern,
            sparsity=None if pattern.startswith("nm:") else 0.75,
            steps=PRUNE_STEPS,
            example_input=x,
            allocation=rule,
            budget=budget,
        )
    except ConfigError:  # a pattern the pruner does not support; the from-scratch controls
        return None
    optimizer = torch.optim.SGD([{"params": model.parameters()}, *pruning.param_groups()], lr=0.05, momentum=0.9)
    per_step = []
    with sync_free() if device_paths else contextlib.nullcontext():
        for _ in range(PRUNE_STEPS + FINETUNE_STEPS):
            with HostSyncCounter() as syncs:  # the whole step: the pruner's backward functions too
                pruning.step()
                loss = torch.nn.functional.cross_entropy(model(x), y) + pruning.penalty()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                pruning.after_optimizer_step(optimizer)
            per_step.append(syncs.count)
    return per_step, pruning.finalize()


# the configurations where the accelerator path's masks are compared with the host path's
PARITY = {("block:1x4", "global-flops"), ("channel", "global"), ("unstructured", "uniform"), ("nm:2:4", "v1")}


@pytest.mark.parametrize("pruner", sorted(load_pruners()))
def test_no_pruner_step_waits_for_the_host_on_the_accelerator_path(pruner):
    """Issue 34: on the accelerator path (``sync_free``) a pruner's step reads nothing on the host.
    A method's own mask updates (AC/DC's regrowth at a phase boundary, PDP's layer budgets when its
    ramp starts) may read a fixed number of values that does not grow with the layer count: no
    step of a run of 13 over 3 prunable layers syncs more than once (a read per layer would be 3),
    and a run at most 3 times (AC/DC: 3 phase boundaries), for every pattern and allocation.

    And it is the same method: in the ``PARITY`` configurations its final masks equal those of the
    CPU's host-read paths (which every golden case and committed row ran)."""
    ran = 0
    for pattern in PATTERNS:
        for allocation in ("v1",) if pattern.startswith("nm:") else ALLOCATIONS:
            device = syncs_of_a_run(pruner, pattern, allocation)
            if device is None:
                continue
            ran += 1
            per_step, masks = device
            where = f"{pruner} {pattern} {allocation}: syncs per step {per_step}"
            assert max(per_step) <= 1 and sum(per_step) <= 3, where
            if (pattern, allocation) in PARITY:
                _, host = syncs_of_a_run(pruner, pattern, allocation, device_paths=False)
                for name, mask in host.items():
                    assert torch.equal(mask, masks[name]), f"{pruner} {pattern} {allocation}: layer {name}"
    assert ran > 0 or pruner in ("scratch", "scratch-full")


@pytest.mark.parametrize("budget", ["params", "flops"])
def test_smart_floors_on_the_device_match_the_host_loop_without_a_sync(budget):
    """SMART's floored global soft top-k (smart.topk._floored_fixed): the case where holding one
    layer's floor pushes a second under its own (two held solves), solved with device-side
    decisions only -- no sync from a warm start, floors and the exact total kept, the host loop's
    masks to 1e-6."""
    from bench.core.select import Allocation
    from bench.core.sparsity import parse_pattern
    from smart.topk import soft_select

    torch.manual_seed(1)
    scores = {
        "low": torch.randn(20, dtype=torch.float64) - 6.0,
        "mid": torch.randn(30, dtype=torch.float64) - 0.6,
        "high": torch.randn(50, dtype=torch.float64),
    }
    costs = {"low": 1.0, "mid": 2.0, "high": 3.0}
    rule = Allocation("global", 0.1, budget=budget)
    rule = rule.with_costs(costs) if budget == "flops" else rule
    pattern = parse_pattern("unstructured")
    host, _ = soft_select(scores, pattern, 0.8, "global", 0.5, allocation=rule)
    warm: dict = {}
    with sync_free():
        soft_select(scores, pattern, 0.8, "global", 0.5, thresholds=warm, allocation=rule)  # the cold first step
        with HostSyncCounter() as syncs:
            device, _ = soft_select(scores, pattern, 0.8, "global", 0.5, thresholds=warm, allocation=rule)
    assert syncs.count == 0, dict(syncs.by_op)
    for name, mask in device.items():
        assert torch.allclose(mask, host[name], atol=1e-6), name
        assert float(mask.sum()) >= rule.minimum(mask.numel()) - 1e-9, name
    kept = sum(float(m.sum()) * (costs[n] if budget == "flops" else 1.0) for n, m in device.items())
    total = 20 + (30 * 2 + 50 * 3 if budget == "flops" else 80)
    assert kept == pytest.approx(0.2 * total if budget == "flops" else 20, abs=1e-6)


def test_smarts_device_solves_keep_exact_k_through_training(monkeypatch):
    """The fixed-pass root solves of the accelerator path (smart.topk.WARM_PASSES) converge in
    training: every solve of a 60-step SMART run (resnet10t, channel, global floor 0.1: the case
    where 4 passes left up to 14 % of k) ends within 1e-4 of its k."""
    import timm

    import smart.topk as topk

    misses = []
    solve = topk._solve_fixed

    def checked(z, k, tol, t0, passes):
        t, f, q = solve(z, k, tol, t0, passes)
        misses.append(float(((f.double().sum(1) - k).abs() / k.clamp_min(1)).max()))
        return t, f, q

    monkeypatch.setattr(topk, "_solve_fixed", checked)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    rule = {"policy": "global", "floor": 0.1}
    pruning = bench.prune(
        model, pruner="smart", pattern="channel", sparsity=0.8, steps=60, example_input=x[:4], allocation=rule
    )
    optimizer = torch.optim.SGD([{"params": model.parameters()}, *pruning.param_groups()], lr=0.05, momentum=0.9)
    with sync_free():
        for _ in range(60):
            pruning.step()
            loss = torch.nn.functional.cross_entropy(model(x), y) + pruning.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert len(misses) == 180 and max(misses) <= 1e-4, sorted(misses)[-5:]  # plain + 2 held solves per step
