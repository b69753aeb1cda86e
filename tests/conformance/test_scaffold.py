"""`smartbench new-pruner`: the generated file imports, registers, and passes the kit's checks."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import bench.core.pruner
from bench.cli.main import main
from bench.cli.scaffold import new_pruner, render
from bench.core.errors import ConfigError

from . import harness


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the pruner registry, so generated pruners do not leak into other tests."""
    harness.registered_pruners()  # load the built-ins first
    monkeypatch.setattr(bench.core.pruner, "PRUNERS", dict(bench.core.pruner.PRUNERS))
    return bench.core.pruner.PRUNERS


def import_file(path, module_name, monkeypatch):
    """Import a generated file as a module (kept in sys.modules for the test, as baselines/ are)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


def test_generated_pruner_registers_and_passes_the_kit(tmp_path, registry, capsys, monkeypatch):
    assert main(["new-pruner", "my_method", "--dir", str(tmp_path / "plugins")]) == 0
    path = tmp_path / "plugins" / "my_method.py"
    assert "wrote" in capsys.readouterr().out and path.exists()
    module = import_file(path, "kit_generated_my_method", monkeypatch)
    cls = registry["my_method"]
    assert cls is module.MyMethodPruner and cls.Config is module.MyMethodConfig
    assert cls.patterns == ("unstructured", "block", "channel", "nm")
    torch.set_num_threads(1)
    harness.check_all(cls, tmp_path, sparsities=(0.75,))


def test_generated_config_validates_its_field(tmp_path, registry, monkeypatch):
    module = import_file(new_pruner("checked", tmp_path), "kit_generated_checked", monkeypatch)
    with pytest.raises(ConfigError, match="beta"):
        module.CheckedPruner.Config.from_dict({"beta": "1.5"}, owner="checked")
    assert module.CheckedPruner.Config.from_dict({"beta": "0.5"}).beta == 0.5


@pytest.mark.parametrize("name", ["my-method", "2fast", "class", "_hidden", "naïve", ""])
def test_invalid_names_are_refused(name, tmp_path, registry):
    with pytest.raises(ConfigError, match="name"):
        new_pruner(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["magnitude", "gmp", "smart"])
def test_existing_pruner_names_are_refused_even_with_force(name, tmp_path, registry):
    with pytest.raises(ConfigError, match="already exists"):
        new_pruner(name, tmp_path, force=True)
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_without_force(tmp_path, registry, capsys):
    path = tmp_path / "mine.py"
    path.write_text("# my edits\n")
    with pytest.raises(ConfigError, match="--force"):
        new_pruner("mine", tmp_path)
    assert path.read_text() == "# my edits\n"
    assert main(["new-pruner", "mine", "--dir", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err and path.read_text() == "# my edits\n"
    new_pruner("mine", tmp_path, force=True)
    assert '@register_pruner("mine")' in path.read_text()


def test_force_regenerates_its_own_file_but_not_one_defining_other_pruners(tmp_path, registry, monkeypatch):
    own = new_pruner("solo", tmp_path)
    import_file(own, "kit_generated_solo", monkeypatch)
    own.write_text(own.read_text() + "# edited\n")
    new_pruner("solo", tmp_path, force=True)  # the registered 'solo' lives in this very file
    assert "# edited" not in own.read_text()

    pair = tmp_path / "pair_a.py"
    pair.write_text(render("pair_a") + '\n\n@register_pruner("pair_b")\nclass PairB(PairAPruner):\n    pass\n')
    import_file(pair, "kit_generated_pair", monkeypatch)
    assert {"pair_a", "pair_b"} <= set(registry)
    before = pair.read_text()
    with pytest.raises(ConfigError, match="pair_b"):
        new_pruner("pair_a", tmp_path, force=True)
    assert pair.read_text() == before
