import pytest
import torch
from torch import nn

from baselines.acdc import COMPRESSED, DECOMPRESSED, DENSE, ACDCConfig, phase_plan
from bench.core.errors import ConfigError
from bench.core.masks import Masker, find_prunable
from bench.core.pruner import Progress
from bench.core.select import expected_kept
from bench.core.sparsity import parse_pattern
from bench.runs.registry import build_pruner


def test_plan_reproduces_the_reference_100_epoch_configuration():
    plan = phase_plan(100)
    starts = {kind: [s for s, _, k in plan if k == kind] for kind in (DENSE, COMPRESSED, DECOMPRESSED)}
    assert plan[0] == (0, 10, DENSE)
    assert starts[COMPRESSED] == [10, 20, 30, 40, 50, 60, 70, 85]
    assert starts[DECOMPRESSED] == [15, 25, 35, 45, 55, 65, 75]
    assert (75, 85, DECOMPRESSED) in plan and plan[-1] == (85, 100, COMPRESSED)
    assert all(end - start == 5 for start, end, kind in plan[1:-2])
    # 50 dense epochs (warm-up + D) and 50 sparse ones, as in the paper
    assert sum(e - s for s, e, k in plan if k == COMPRESSED) == 50


@pytest.mark.parametrize("total", [1, 2, 3, 5, 7, 10, 31, 64, 93, 250])
def test_plan_covers_the_budget_alternates_and_ends_compressed(total):
    plan = phase_plan(total)
    assert plan[0][0] == 0 and plan[-1][1] == total and plan[-1][2] == COMPRESSED
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in zip(plan, plan[1:]))  # contiguous, kinds alternate
    assert all(end > start for start, end, _ in plan)
    assert all(kind != DENSE for _, _, kind in plan[1:])


def test_plan_for_64_steps():  # boundaries 6 + round(i * 42 / 13)
    assert phase_plan(64) == [
        (0, 6, DENSE),
        (6, 9, COMPRESSED),
        (9, 12, DECOMPRESSED),
        (12, 16, COMPRESSED),
        (16, 19, DECOMPRESSED),
        (19, 22, COMPRESSED),
        (22, 25, DECOMPRESSED),
        (25, 29, COMPRESSED),
        (29, 32, DECOMPRESSED),
        (32, 35, COMPRESSED),
        (35, 38, DECOMPRESSED),
        (38, 42, COMPRESSED),
        (42, 45, DECOMPRESSED),
        (45, 48, COMPRESSED),
        (48, 54, DECOMPRESSED),
        (54, 64, COMPRESSED),
    ]


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def run_steps(model, masker, pruner, optimizer, steps, total, data):
    """The trainer's pruning-stage loop; returns per-step snapshots."""
    x, y = data
    log = []
    for step in steps:
        pruner.on_step(Progress("prune", step, total))
        masker.set_masks(pruner.masks())
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.after_optimizer_step(optimizer)
        log.append(
            dict(
                phase=pruner.phase,
                mask=None if pruner.mask is None else dict(pruner.mask),
                weights={layer.name: layer.weight.detach().clone() for layer in masker.layers},
                grads={layer.name: layer.weight.grad.clone() for layer in masker.layers},
                buffers={id(p): optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()},
            )
        )
    return log


@pytest.mark.parametrize("reset", ["all", "pruned_layers"])
def test_pruned_weights_stay_zero_and_momentum_resets_at_decompression(reset):
    model = tiny_net()
    data = torch.randn(16, 6), torch.randint(0, 3, (16,))
    pattern = parse_pattern("unstructured")
    masker = Masker(model, find_prunable(model), pattern)
    pruner = build_pruner("acdc", pattern, 0.5, {"momentum_reset": reset})
    pruner.attach(masker.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    total = 20  # plan: dense 0-1, C 2, D 3, C 4, ..., C 14, D 15-16, C 17-19
    assert pruner.phases.plan_for(total)[:3] == [(0, 2, DENSE), (2, 3, COMPRESSED), (3, 4, DECOMPRESSED)]
    log = run_steps(model, masker, pruner, opt, range(total), total, data)
    assert [entry["phase"] for entry in log[:5]] == [DENSE, DENSE, COMPRESSED, DECOMPRESSED, COMPRESSED]
    prunable = {id(layer.weight) for layer in masker.layers}
    for step, entry in enumerate(log):
        if entry["phase"] != COMPRESSED:
            continue
        for name, mask in entry["mask"].items():
            kept = pattern.expand(mask.float(), entry["weights"][name].shape).bool()
            assert (entry["weights"][name][~kept] == 0).all()  # zeroed despite momentum + weight decay
            assert (entry["weights"][name][kept] != 0).all()
            assert (entry["grads"][name][~kept] == 0).all()  # the parametrization masks the gradient
        if step + 1 < total and log[step + 1]["phase"] == DECOMPRESSED:
            for key, buffer in entry["buffers"].items():  # reset before the first D step
                if reset == "all" or key in prunable:
                    assert (buffer == 0).all()
                else:
                    assert (buffer != 0).any()
    # the first D step moves the pruned weights off zero: they re-enter training from 0
    c_entry, d_entry = log[2], log[3]
    for name, mask in c_entry["mask"].items():
        pruned = ~pattern.expand(mask.float(), d_entry["weights"][name].shape).bool()
        assert (d_entry["weights"][name][pruned] != 0).any()
        # momentum was zeroed, so the D step is exactly -lr * (grad + wd * w) from w = 0: -lr * grad
        assert torch.allclose(d_entry["weights"][name][pruned], -0.1 * d_entry["grads"][name][pruned], atol=1e-7)
    # the run ends compressed and finalize returns that mask, exact at the global target
    assert log[-1]["phase"] == COMPRESSED
    hard = pruner.finalize()
    counts = {layer.name: layer.num_units for layer in masker.layers}
    assert masker.audit(hard)["kept_units"] == expected_kept(counts, pattern, 0.5)
    assert all(torch.equal(hard[n], log[-1]["mask"][n]) for n in hard)


def conv_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 8),
    )


@pytest.mark.parametrize("pattern,sparsity", [("block:1x8", 0.5), ("channel", 0.75), ("nm:2:4", 0.5)])
def test_structured_patterns_end_exact_and_resume_from_state(pattern, sparsity):
    model = conv_net()
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 8, (4,))
    pat = parse_pattern(pattern)
    masker = Masker(model, find_prunable(model), pat, x)
    pruner = build_pruner("acdc", pat, sparsity, {})
    pruner.attach(masker.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    log = run_steps(model, masker, pruner, opt, range(11), 12, (x, y))  # plan(12) ends with C at 10-11
    assert log[-1]["phase"] == COMPRESSED
    saved = {n: m.clone() for n, m in pruner.mask.items()}
    with torch.no_grad():  # perturb the weights: a resumed run must keep the mask mid-phase, not recompute it
        for layer in masker.layers:
            layer.weight.mul_(torch.rand_like(layer.weight))
    resumed = build_pruner("acdc", pat, sparsity, {})
    resumed.attach(masker.layers)
    resumed.load_state_dict(pruner.state_dict())
    log += run_steps(model, masker, resumed, opt, range(11, 12), 12, (x, y))
    assert all(torch.equal(resumed.mask[n], saved[n]) for n in saved)
    pruner = resumed
    hard = pruner.finalize()
    audit = masker.audit(hard)
    counts = {layer.name: layer.num_units for layer in masker.layers}
    assert log[-1]["phase"] == COMPRESSED and audit["pattern_valid"]
    assert audit["kept_units"] == expected_kept(counts, pat, sparsity)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="final_compressed_fraction"):
        ACDCConfig(warmup_fraction=0.5, long_decompressed_fraction=0.3, final_compressed_fraction=0.3)
    with pytest.raises(ConfigError, match="momentum_reset"):
        ACDCConfig(momentum_reset="some")
    with pytest.raises(ConfigError, match="phase_fraction"):
        ACDCConfig(phase_fraction=0.0)


@pytest.mark.parametrize("regrow", ["silent", "zero"])
def test_regrown_channels_reenter_silently_under_batchnorm(regrow):
    """Audit (protocol v2): a channel re-entering at zero under BN has zero batch variance, so its
    normalised output is 0/sqrt(eps) and its filter's gradient is scaled by gamma/sqrt(eps).
    ``regrow=silent``: fresh filter, gamma = beta = 0, running stats reset -- bounded gradient."""
    model = conv_net()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 8, (8,))
    pattern = parse_pattern("channel")
    masker = Masker(model, find_prunable(model), pattern, x)
    pruner = build_pruner("acdc", pattern, 0.5, {"regrow": regrow})
    pruner.attach(masker.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    total = 20  # dense 0-1, C 2, D 3, ...
    log = run_steps(model, masker, pruner, opt, range(4), total, (x, y))
    c_mask, ratios = log[2]["mask"], []
    for layer in masker.layers:
        pruned = ~c_mask[layer.name]
        if not bool(pruned.any()):
            continue
        grads = log[3]["grads"][layer.name]
        ratios.append(float(grads[pruned].abs().max()) / float(grads[~pruned].abs().max()))
        if regrow == "silent":
            assert (layer.batchnorm.running_var[pruned] > 0.05).all()  # reset to 1, then one batch update
    assert ratios
    if regrow == "silent":
        assert max(ratios) <= 10  # no gamma/sqrt(eps) amplification of the re-grown filters
    else:  # v1, kept as an option for comparison: the defect (here ~550x on the 2nd conv)
        assert max(ratios) > 100


def test_min_phase_gives_short_stages_fewer_longer_phases():
    plan = phase_plan(64, min_phase=10)
    assert plan == [
        (0, 6, DENSE),
        (6, 20, COMPRESSED),
        (20, 34, DECOMPRESSED),
        (34, 48, COMPRESSED),
        (48, 54, DECOMPRESSED),
        (54, 64, COMPRESSED),
    ]
    assert phase_plan(64, min_phase=1) == phase_plan(64)  # the reference plan
    assert phase_plan(100, min_phase=5) == phase_plan(100)  # long enough already: unchanged
    for total in (7, 31, 93, 250):  # still contiguous, alternating, ends compressed
        plan = phase_plan(total, min_phase=20)
        assert plan[-1][1] == total and plan[-1][2] == COMPRESSED
        assert all(a[1] == b[0] and a[2] != b[2] for a, b in zip(plan, plan[1:]))
    with pytest.raises(ConfigError, match="min_phase_steps"):
        ACDCConfig(min_phase_steps=0)
