"""Provenance of protocol v3: per-pruner method versions in run ids and rows, the hash of a dirty
tree's uncommitted state, and tables that refuse to mix method versions in one column."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from bench.cli.main import main
from bench.core.errors import ConfigError
from bench.core.paths import RunPaths
from bench.reports.provenance import mixed_versions, version_lines
from bench.runs import record
from bench.runs import run as run_module
from bench.runs.record import ResultStore, tree_diff_sha256
from bench.runs.registry import get_pruner_class
from bench.runs.run import RunSpec, execute, resolve, run_identity

REPO = Path(__file__).resolve().parents[1]
LEADERBOARD_ROWS = REPO / "results" / "leaderboard-v2" / "leaderboard-v2.rows.jsonl"
SPEC = RunSpec("fmnist-tiny", "magnitude", "block:1x8", 0.5)
PINNED_ID = "4aa8df36088d"  # the id of SPEC before pruners had versions (bench/runs/run.py at a51aa0b)


# -- method_version in the run id and the row -------------------------------------------------
def test_method_version_enters_the_run_id_only_when_not_1(monkeypatch):
    base = resolve(SPEC)
    assert get_pruner_class("magnitude").method_version == 1
    assert base.run_id == PINNED_ID and "method_version" not in base.canonical  # existing ids stay valid

    class Bumped(get_pruner_class("magnitude")):
        method_version = 2

    pruner = base.pruner
    bumped = Bumped(pruner.config, pruner.pattern, pruner.sparsity)
    canonical, run_id = run_identity(base.canonical["task"], "magnitude", bumped, 0)
    assert canonical["method_version"] == 2 and run_id != base.run_id
    assert {k: v for k, v in canonical.items() if k != "method_version"} == base.canonical

    monkeypatch.setattr(get_pruner_class("magnitude"), "method_version", 2)  # what a bump in the class does
    again = resolve(SPEC)
    assert (again.run_id, again.canonical["method_version"]) == (run_id, 2)
    monkeypatch.setattr(get_pruner_class("magnitude"), "method_version", 1)
    assert resolve(SPEC).run_id == PINNED_ID


def test_method_version_of_a_keep_all_control_changes_its_id(monkeypatch):
    nomask = resolve(RunSpec("fmnist-tiny", "nomask", "block:1x8", 0.5))
    monkeypatch.setattr(get_pruner_class("nomask"), "method_version", 3)
    assert resolve(RunSpec("fmnist-tiny", "nomask", "channel", 0.5)).run_id not in (nomask.run_id, PINNED_ID)
    # still one run per (task, budget, seed) for every column
    assert resolve(RunSpec("fmnist-tiny", "nomask", "channel", 0.5)).run_id == (
        resolve(RunSpec("fmnist-tiny", "nomask", "block:1x8", 0.5)).run_id
    )


@pytest.mark.parametrize("bad", [0, -1, "2", 1.0, True])
def test_method_version_must_be_an_integer_of_at_least_1(bad, monkeypatch):
    base = resolve(SPEC)
    monkeypatch.setattr(get_pruner_class("magnitude"), "method_version", bad)
    with pytest.raises(ConfigError, match="method_version"):
        run_identity(base.canonical["task"], "magnitude", base.pruner, 0)


def test_the_row_records_method_version(tmp_path, monkeypatch):
    """execute() writes the pruner's method_version into every row (training replaced by a stub)."""
    fake = {"metric": 80.0, "val_metric": 79.0, "achieved_sparsity": 0.5, "audit": {"layers": []}}
    monkeypatch.setattr(run_module, "prune_and_measure", lambda run, paths, log: dict(fake))
    paths = RunPaths(tmp_path / "runs")
    store = ResultStore(paths.store)
    row = execute(resolve(SPEC), log=lambda _m: None, store=store, paths=paths, wandb=False)
    assert row["method_version"] == 1 and row["run_id"] == PINNED_ID
    monkeypatch.setattr(get_pruner_class("magnitude"), "method_version", 2)
    row = execute(resolve(SPEC), log=lambda _m: None, store=store, paths=paths, wandb=False)
    assert row["method_version"] == 2 and row["run_id"] != PINNED_ID
    assert [r["method_version"] for r in store.rows()] == [1, 2]
    prov = row["provenance"]  # the import-time code version, with the uncommitted state's hash when dirty
    assert prov.get("git_diff_sha256") == record.CODE_VERSION.get("git_diff_sha256")


# -- the hash of a dirty tree -----------------------------------------------------------------
def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "code.py").write_text("x = 1\ny = 2\n")
    (root / ".gitignore").write_text("ignored/\n")
    git(root, "add", "code.py", ".gitignore")
    git(root, "commit", "-q", "-m", "one")
    return root


def test_diff_hash_of_uncommitted_state(repo):
    code = repo / "code.py"
    assert tree_diff_sha256(repo) is None  # clean
    code.write_text("x = 1\ny = 3\n")
    first = tree_diff_sha256(repo)
    assert first is not None and len(first) == 64
    code.write_text("x = 1\ny = 2\n")  # back to HEAD: clean again
    assert tree_diff_sha256(repo) is None
    code.write_text("x = 1\ny = 3\n")  # the same modification again: the same hash
    assert tree_diff_sha256(repo) == first
    git(repo, "add", "code.py")  # staged or not, the same state
    assert tree_diff_sha256(repo) == first
    code.write_text("x = 1\ny = 4\n")  # another modification: another hash
    assert tree_diff_sha256(repo) not in (None, first)


def test_diff_hash_counts_untracked_files_but_not_ignored_ones(repo):
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_bytes(b"\0" * 100)
    assert tree_diff_sha256(repo) is None  # ignored files are not the code's state
    (repo / "new_pruner.py").write_text("A = 1\n")
    one = tree_diff_sha256(repo)
    assert one is not None
    (repo / "new_pruner.py").write_text("A = 2\n")  # contents count, not only names
    two = tree_diff_sha256(repo)
    assert two not in (None, one)
    (repo / "new_pruner.py").write_text("A = 1\n")
    assert tree_diff_sha256(repo) == one


def test_diff_hash_outside_a_git_checkout(tmp_path):
    assert tree_diff_sha256(tmp_path) is None


# -- tables: one method version per column ----------------------------------------------------
def row(label: str, seed: int, version: int | None = None, pruner: str | None = None, sparsity: float = 0.5) -> dict:
    out = {
        "label": label,
        "pruner": pruner or label,
        "task": "fmnist-tiny",
        "pattern": "block:1x8",
        "target_sparsity": sparsity,
        "seed": seed,
        "run_id": f"{label}-{sparsity}-{seed}",
    }
    if version is not None:
        out["method_version"] = version
    return out


def test_mixed_versions_names_each_mixed_column():
    rows = [row("smart", 0), row("smart", 1, 1), row("magnitude", 0), row("magnitude", 1)]
    assert mixed_versions(rows) == []  # absent = version 1
    rows += [row("smart", 2, 2), row("smart", 0, 2, sparsity=0.9), row("smart", 1, 2, sparsity=0.9)]
    assert mixed_versions(rows) == ["smart on fmnist-tiny block:1x8 0.5: v1: 2 row(s), v2: 1 row(s)"]
    # two labels of one pruner at different versions are two rows of the table, not one column
    assert mixed_versions([row("smart", 0, 2), row("smart_old", 0, 1, pruner="smart")]) == []
    assert version_lines(rows) == [
        "- 2 row(s) of magnitude at method_version 1",
        "- 2 row(s) of smart at method_version 1",
        "- 3 row(s) of smart at method_version 2",
    ]


def test_the_committed_leaderboard_rows_are_all_version_1():
    rows = [json.loads(line) for line in LEADERBOARD_ROWS.read_text().splitlines() if line.strip()]
    assert rows and mixed_versions(rows) == []
    assert all(line.endswith("at method_version 1") for line in version_lines(rows))


def test_table_refuses_mixed_versions_unless_allowed(tmp_path, runs_dir, capsys):
    from bench.suites.suite import load_and_expand

    spec = {
        "tasks": ["fmnist-tiny"],
        "pruners": ["magnitude"],
        "patterns": ["block:1x8"],
        "sparsities": [0.5],
        "seeds": [0, 1],
    }
    suite_path = tmp_path / "mixed.yaml"
    suite_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    suite = load_and_expand(str(suite_path))
    template = json.loads(LEADERBOARD_ROWS.read_text().splitlines()[0])  # a complete committed row
    template.pop("allocation", None)
    template.pop("label", None)
    rows = [
        {**template, **{k: getattr(cell.spec, k) for k in ("task", "pruner", "pattern", "seed")}}
        | {"run_id": cell.run_id, "target_sparsity": cell.spec.sparsity, "metric": 80.0 + i}
        for i, cell in enumerate(suite.cells)
    ]
    assert len(rows) == 2
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["table", str(suite_path), "--rows", str(same)]) == 0  # all version 1 (field absent)
    assert "| magnitude" in capsys.readouterr().out

    rows[1]["method_version"] = 2
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["table", str(suite_path), "--rows", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "error: --allow-mixed-versions:" in err
    assert "magnitude on fmnist-tiny block:1x8 0.5: v1: 1 row(s), v2: 1 row(s)" in err
    assert "rerun the older cells or pass --allow-mixed-versions" in err
    assert main(["table", str(suite_path), "--rows", str(mixed), "--allow-mixed-versions"]) == 0
    assert "| magnitude" in capsys.readouterr().out


def test_head_tags_name_the_commit_a_row_ran_at(repo):
    from bench.runs.record import head_tags

    assert head_tags(repo) == []
    git(repo, "tag", "leaderboard-v3")
    git(repo, "tag", "-a", "v3-annotated", "-m", "an annotated tag")
    assert head_tags(repo) == ["leaderboard-v3", "v3-annotated"]
    (repo / "code.py").write_text("x = 2\n")
    git(repo, "commit", "-q", "-am", "two")
    assert head_tags(repo) == []  # a later commit is not the tagged one
    assert head_tags(repo.parent / "not-a-repo") == []
