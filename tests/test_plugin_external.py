"""The plugin API stays stable: an external pruner package, written the way
docs/adding-a-pruner.md tells an author to write one, installs, registers and runs.

The plugin below is frozen on purpose (it is not generated from the `new-pruner` template, which
evolves with the code): it stands for third-party code that must keep working while bench/ is
refactored. It uses only the documented names of ``bench.pruner`` and is registered through the
``smartbench.pruners`` entry point of its own pyproject.toml.

It is installed with pip ``--target`` into a temporary folder (no network, the .venv and the
repository are never modified), and every check runs in a fresh interpreter with that folder on
PYTHONPATH, so the entry points are discovered from its ``*.dist-info`` as after a real install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NAME = "extplug"  # registry name; unique enough for `pytest -k extplug` to select only its cases
PACKAGE = "smartbench_extplug"

# Exactly the pyproject.toml of docs/adding-a-pruner.md, section 4 (no [build-system]: pip's default
# setuptools backend; the src/ layout needs no __init__.py, as in the doc's `new-pruner --dir`).
PYPROJECT = f"""\
[project]
name = "smartbench-{NAME}"
version = "0.1.0"
dependencies = ["smartbench"]

[project.entry-points."smartbench.pruners"]
{NAME} = "{PACKAGE}.{NAME}:ExtplugPruner"
"""

# The plugin module, as an external author writes it from docs/adding-a-pruner.md.
MODULE = '''\
"""extplug: noisy running-magnitude pruning (an external plugin, smartbench's API-stability test).

    c_u  =  rms(W_u)  or  mean |W_u|                       (criterion, one value per unit u)
    s_u <-  beta * s_u + (1 - beta) * (c_u + a * sigma_c * xi_u),   xi_u ~ N(0, 1)
    a    =  noise * (1 - progress.fraction)                 (noise anneals to 0 over the stage)
    mask =  exact top-k of s;  final = exact top-k of s

sigma_c is the standard deviation of c within the layer; xi comes from torch's global RNG, which
the trainer seeds and checkpoints. Defaults: beta = 0.5, noise = 0.1, criterion = rms.
Source: none (a test fixture). Deviations: none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bench.pruner import Progress, Pruner, PrunerConfig, check_choice, check_range, register_pruner


@dataclass(frozen=True)
class ExtplugConfig(PrunerConfig):
    beta: float = 0.5  # running-average factor, in [0, 1)
    noise: float = 0.1  # relative noise on the criterion at the start of pruning, in [0, 1]
    criterion: str = "rms"  # rms | l1

    def __post_init__(self):
        super().__post_init__()  # checks `scope`
        check_range(self, "beta", 0.0, 1.0, high_open=True)
        check_range(self, "noise", 0.0, 1.0)
        check_choice(self, "criterion", ("rms", "l1"))


@register_pruner("extplug")
class ExtplugPruner(Pruner):
    Config = ExtplugConfig
    patterns = ("unstructured", "block")

    def __init__(self, config: ExtplugConfig, pattern, sparsity: float):
        super().__init__(config, pattern, sparsity)
        self.scores: dict[str, Tensor] = {}

    def criterion(self) -> dict[str, Tensor]:
        out = {}
        for layer in self.layers:
            units = self.pattern.units(layer.weight.detach())
            out[layer.name] = units.pow(2).mean(-1).sqrt() if self.config.criterion == "rms" else units.abs().mean(-1)
        return out

    def on_step(self, progress: Progress) -> None:
        amplitude = self.config.noise * (1.0 - progress.fraction)
        for name, value in self.criterion().items():
            noisy = value + amplitude * value.std() * torch.randn_like(value)
            previous = self.scores.get(name, noisy)
            self.scores[name] = self.config.beta * previous + (1.0 - self.config.beta) * noisy

    def masks(self) -> dict[str, Tensor] | None:
        if not self.scores:
            return None
        return {name: mask.float() for name, mask in self.select(self.scores).items()}

    def finalize(self) -> dict[str, Tensor]:
        return self.select(self.scores or self.criterion())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scores": {name: s.clone() for name, s in self.scores.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scores = {name: s.clone() for name, s in state["scores"].items()}
'''

# What the kit must select for the plugin: 7 checks for each (pattern, sparsity) case (the
# device check included), the allocation and exact-cost checks for each case at 0.5, the two per-pruner checks,
# and one refusal per undeclared pattern kind (channel, nm).
KIT_CASES = [f"{NAME}-{p}-{s}" for p in ("unstructured", "block:1x8", "block:2x4") for s in ("0.5", "0.75")]
PER_CASE = {case: 9 if case.endswith("-0.5") else 7 for case in KIT_CASES}  # 0.5: + the floor and the exact-cost checks
KIT_TESTS = sum(PER_CASE.values()) + 2 + 2


def run(cmd: list[str], env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout if len(proc.stdout) < 8000 else f"{proc.stdout[:6000]}\n[...]\n{proc.stdout[-2000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{out}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin package written to a temp folder and pip-installed (--target) next to it.
    Returns (env, cwd) for fresh interpreters that see smartbench and the plugin."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "smartbench-extplug"
    (source / "src" / PACKAGE).mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "src" / PACKAGE / f"{NAME}.py").write_text(MODULE)
    site = base / "site"
    work = base / "work"
    work.mkdir()
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        env,
        work,
        timeout=300,
    )
    assert (site / PACKAGE / f"{NAME}.py").exists()
    [dist] = site.glob("smartbench_extplug-*.dist-info")
    assert f"{NAME} = {PACKAGE}.{NAME}:ExtplugPruner" in (dist / "entry_points.txt").read_text()
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), str(site), os.environ.get("PYTHONPATH")]))
    env.update(PYTHONPATH=pythonpath, SMARTBENCH_RUNS=str(base / "runs"), WANDB_MODE="disabled")
    return env, work


def test_plugin_is_listed(plugin):
    env, cwd = plugin
    out = run([sys.executable, "-m", "bench.cli.main", "list"], env, cwd, timeout=300).stdout
    assert re.search(rf"^\s+{NAME}\s+patterns: unstructured, block$", out, re.MULTILINE), out
    assert re.search(r"^\s+smart\s+patterns:", out, re.MULTILINE), out  # built-ins still load next to it


def test_plugin_passes_the_conformance_kit(plugin):
    """`pytest /path/to/smartbench/tests/conformance -k NAME`, run outside the checkout (section 4)."""
    env, cwd = plugin
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests" / "conformance"),
        "-k",
        NAME,
        "-q",
        "-rA",
        "--tb=short",
        "-p",
        "no:cacheprovider",
    ]
    out = run(cmd, env, cwd, timeout=1200).stdout
    passed = re.findall(r"^PASSED (\S+)$", out, re.MULTILINE)
    assert len(passed) == KIT_TESTS, out
    for case in KIT_CASES:
        assert sum(f"[{case}]" in test for test in passed) == PER_CASE[case], (case, out)
    assert any("test_undeclared_pattern_rejected[extplug-channel]" in t for t in passed), out
    assert re.search(rf"\b{KIT_TESTS} passed, \d+ deselected", out), out


def test_plugin_runs_end_to_end_on_fmnist_tiny(plugin):
    env, cwd = plugin
    cmd = [
        sys.executable,
        "-m",
        "bench.cli.main",
        "run",
        "--task",
        "fmnist-tiny",
        "--pruner",
        NAME,
        "--pattern",
        "block:1x8",
        "--sparsity",
        "0.5",
        "--json",
    ]
    start = time.perf_counter()
    row = json.loads(run(cmd, env, cwd, timeout=1800).stdout)
    assert (row["pruner"], row["pattern"], row["target_sparsity"]) == (NAME, "block:1x8", 0.5)
    assert row["achieved_sparsity"] == 0.5
    assert row["pattern_valid"] is True and row["audit"]["pattern_valid"] is True
    assert row["metric"] > 50.0, row  # 10 classes: chance is 10%
    print(
        f"fmnist-tiny {NAME} block:1x8 0.5: top1 {row['metric']:.1f} (dense {row['dense_metric']:.1f}), "
        f"{time.perf_counter() - start:.0f}s"
    )
