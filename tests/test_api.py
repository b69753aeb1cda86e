"""The Python API: a pruner in the user's own loop, through the suites' stage driver."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import bench
from bench.core.errors import ConfigError
from bench.runs.export import load_saved

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S).group(1)


def test_readme_example_runs_and_prunes_exactly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})
    assert "achieved sparsity 0.9\n" in capsys.readouterr().out
    saved = load_saved(tmp_path / "pruned.pt")
    assert saved["meta"] == {"pruner": "smart", "pattern": "block:1x8", "sparsity": 0.9}
    kept = sum(int(m.sum()) for m in saved["hard_masks"].values())
    total = sum(m.numel() for m in saved["hard_masks"].values())
    assert total - kept == round(0.9 * total)  # exact k over all layers (SMART's one global ranking)


def small_net() -> nn.Module:
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
        nn.Linear(16, 4),
    )


def train(model: nn.Module, pruning, x, y, steps: int) -> None:
    """The user's loop of the API docs: SGD with the pruner's groups, ``steps`` steps on one batch."""
    optimizer = torch.optim.SGD([{"params": model.parameters()}, *pruning.param_groups()], lr=0.05)
    for _ in range(steps):
        pruning.step()
        loss = nn.functional.cross_entropy(model(x), y) + pruning.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruning.after_optimizer_step(optimizer)


@pytest.mark.parametrize("pruner,pattern", [("magnitude", "channel"), ("gmp", "unstructured"), ("pdp", "nm:2:4")])
def test_loop_finalizes_after_steps_and_export_matches_the_masked_model(pruner, pattern, tmp_path):
    model = small_net()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    pruning = bench.prune(
        model,
        pruner=pruner,
        pattern=pattern,
        sparsity=None if pattern.startswith("nm") else 0.5,
        steps=6,
        example_input=x[:4],
        calibration=[(x, y)],
    )
    train(model, pruning, x, y, 9)
    assert not pruning.pruning and pruning.steps_done == 6  # finalized at the 7th step, then fine-tuning
    audit = pruning.audit()
    assert audit["achieved_sparsity"] == 0.5 and audit["pattern_valid"]
    model.eval()
    with torch.no_grad():
        masked = model(x)
    pruning.export(tmp_path / "m.pt")
    plain = small_net()
    plain.load_state_dict(load_saved(tmp_path / "m.pt")["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), masked)


def test_state_dict_round_trip_resumes_the_schedule():
    x = torch.randn(8, 1, 8, 8)
    first = bench.prune(small_net(), pruner="gmp", pattern="unstructured", sparsity=0.5, steps=10, example_input=x)
    for _ in range(4):
        first.step()
    state = first.state_dict()
    second = bench.prune(small_net(), pruner="gmp", pattern="unstructured", sparsity=0.5, steps=10, example_input=x)
    second.load_state_dict(state)
    assert second.steps_done == 4 and second.pruning


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"pruner": "nope", "pattern": "channel", "sparsity": 0.5}, "pruner"),
        ({"pruner": "smart", "pattern": "block:1x7", "sparsity": 0.5}, "pattern"),
        ({"pruner": "smart", "pattern": "channel", "sparsity": 1.5}, "sparsity"),
        ({"pruner": "smart", "pattern": "channel", "sparsity": 0.5, "options": {"tau0": "warm"}}, "smart.tau0"),
        ({"pruner": "smart", "pattern": "channel", "sparsity": 0.5, "steps": 0}, "steps"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, field):
    with pytest.raises(ConfigError) as err:
        bench.prune(small_net(), example_input=torch.randn(2, 1, 8, 8), **{"steps": 5, **kwargs})
    assert err.value.field.startswith(field)


def nm_cases() -> list[tuple[str, str]]:
    from bench.runs.registry import load_pruners

    return [
        (name, pattern)
        for name, cls in sorted(load_pruners().items())
        if "nm" in cls.patterns and not cls.keeps_all  # nomask prunes nothing by design
        for pattern in ("nm:1:8", "nm:2:8")
    ]


@pytest.mark.parametrize("pruner,pattern", nm_cases())
def test_every_pruner_covers_the_sweep_nm_patterns(pruner, pattern):
    """1:8 and 2:8 (the N:M sweep beyond 2:4 and 1:4): exact N per row of M for every N:M pruner."""
    model = small_net()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    pruning = bench.prune(model, pruner=pruner, pattern=pattern, steps=6, example_input=x[:4], calibration=[(x, y)])
    train(model, pruning, x, y, 8)
    audit = pruning.audit()
    n, m = map(int, pattern.split(":")[1:])
    assert audit["pattern_valid"] and audit["achieved_sparsity"] == 1 - n / m


def test_export_needs_a_pt_file_name(tmp_path):
    pruning = bench.prune(
        small_net(),
        pruner="magnitude",
        pattern="unstructured",
        sparsity=0.5,
        steps=2,
        example_input=torch.randn(2, 1, 8, 8),
    )
    with pytest.raises(ConfigError, match="must end in .pt"):
        pruning.export(tmp_path / "pruned.pth")
    assert not (tmp_path / "pruned.pth").exists()
