"""One run identity: YAML and CLI spellings of one configuration give one run id."""

from __future__ import annotations

import pytest
import yaml

from bench.cli.main import main
from bench.core.errors import ConfigError
from bench.core.select import protocol_allocation
from bench.core.sparsity import parse_pattern
from bench.runs.registry import build_pruner
from bench.runs.run import RunSpec, resolve
from bench.suites.suite import expand, load_suite


def suite_ids(tmp_path, options) -> list[str]:
    path = tmp_path / "ident.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tasks": ["fmnist-tiny"],
                "patterns": ["block:1x8"],
                "sparsities": [0.5],
                "seeds": [0],
                "pruners": [{"name": "smart", "options": options}],
            }
        )
    )
    return [cell.run_id for cell in expand(load_suite(str(path))).cells]


def test_yaml_int_and_cli_string_give_one_id(tmp_path):
    """``options: {tau0: 2}`` (YAML int) and ``--opt tau0=2`` (string) are the same float 2.0."""
    rule = protocol_allocation("protocol", 0.5)  # what `smartbench run` and a suite block default to
    cli = resolve(RunSpec("fmnist-tiny", "smart", "block:1x8", 0.5, 0, pruner_options={"tau0": "2"}, allocation=rule))
    cli = cli.run_id
    assert suite_ids(tmp_path, {"tau0": 2}) == [cli]
    assert suite_ids(tmp_path, {"tau0": 2.0}) == [cli]
    spec = RunSpec("fmnist-tiny", "smart", "block:1x8", 0.5, 0, pruner_options={"tau0": "2.0"}, allocation=rule)
    assert resolve(spec).run_id == cli
    default = resolve(RunSpec("fmnist-tiny", "smart", "block:1x8", 0.5, 0, allocation=rule)).run_id
    assert default != cli and suite_ids(tmp_path, {"tau0": 1}) == [default]


def test_values_are_canonicalised_by_declared_type():
    pattern = parse_pattern("block:1x8")
    config = build_pruner("gmp", pattern, 0.5, {"update_every": 10.0}).config
    assert config.update_every == 10 and type(config.update_every) is int
    assert type(build_pruner("smart", pattern, 0.5, {"tau0": 3}).config.tau0) is float


@pytest.mark.parametrize(
    "options,field",
    [
        ({"tau0": True}, "smart.tau0"),  # a bool is not a number
        ({"tau0": "warm"}, "smart.tau0"),
        ({"tau0": [1]}, "smart.tau0"),
        ({"schedule": 3}, "smart.schedule"),  # a str field
    ],
)
def test_badly_typed_values_name_the_field(options, field):
    with pytest.raises(ConfigError) as err:
        build_pruner("smart", parse_pattern("block:1x8"), 0.5, options)
    assert err.value.field == field and "expected" in str(err.value)


def test_gmp_int_field_refuses_a_fraction():
    with pytest.raises(ConfigError, match="gmp.update_every"):
        build_pruner("gmp", parse_pattern("block:1x8"), 0.5, {"update_every": 2.5})


def test_cli_bad_option_type_is_one_line(capsys, runs_dir):
    assert (
        main(
            [
                "run",
                "--task",
                "fmnist-tiny",
                "--pruner",
                "smart",
                "--pattern",
                "block:1x8",
                "--sparsity",
                "0.5",
                "--opt",
                "tau0=warm",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: smart.tau0") and err.count("\n") == 1
