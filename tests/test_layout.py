"""Package hygiene: no import cycles, every third-party import declared, installable with its
configs (package data) and usable from another directory."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "smart", "baselines")
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "torch_pruning": "torch-pruning",
    "mmseg": "mmsegmentation",
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "configs" in path.relative_to(ROOT).parts:
                continue  # mmengine config files, not modules
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every absolute import of a file, function-local ones and import_module("constant") included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(node.args[0].value)
    return names


# deprecation shims: an old name kept importable from its old home for one release, loaded lazily
DEPRECATED_SHIMS = {("bench.core.pruner", "bench.runs.registry")}  # load_pruners & co. moved to bench.runs.registry


def test_no_import_cycles():
    """Not even through function-local imports: a lower layer never reaches up into a higher one."""
    mods = modules()
    graph = {
        name: {m for m in imports(path) if m in mods and m != name and (name, m) not in DEPRECATED_SHIMS}
        for name, path in mods.items()
    }
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_every_third_party_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        dep.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
        for dep in project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    }
    mods = modules()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    third_party = {name.split(".")[0] for path in mods.values() for name in imports(path)} - stdlib - set(PACKAGES)
    missing = sorted(
        top
        for top in third_party
        if DISTRIBUTIONS.get(top, top).lower().replace("_", "-") not in {d.replace("_", "-") for d in declared}
    )
    assert missing == []


@pytest.mark.slow
def test_installed_package_plans_a_suite_from_another_directory(tmp_path):
    """`pip install .` (configs and templates as package data), then `smartbench suite plan quick`
    run from an unrelated folder, importing the installed copy, not the checkout."""
    target, source = tmp_path / "site", tmp_path / "src"  # build from a copy: setuptools writes build/ in place
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", "results", "docs")
    shutil.copytree(ROOT, source, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--target", str(target), str(source)], check=True, capture_output=True, cwd=tmp_path)
    assert (target / "bench" / "configs" / "suites" / "quick.yaml").is_file()
    assert (target / "bench" / "configs" / "mm" / "scenes_seg.py").is_file()
    env = {**os.environ, "PYTHONPATH": str(target), "SMARTBENCH_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"}
    where = subprocess.run(
        [sys.executable, "-c", "import bench, smart, baselines; print(bench.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target))
    plan = subprocess.run(
        [sys.executable, "-m", "bench.cli.main", "suite", "plan", "quick"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert plan.returncode == 0, plan.stderr
    assert "fmnist-tiny" in plan.stdout and "scenes-seg-tiny" in plan.stdout


def test_registry_functions_keep_their_old_home_for_one_release():
    import bench.pruner  # the documented plugin API module
    import bench.runs.registry

    with pytest.warns(DeprecationWarning, match="moved to bench.runs.registry.load_pruners"):
        assert bench.pruner.load_pruners is bench.runs.registry.load_pruners
    assert "smart" in bench.runs.registry.load_pruners()
