"""The protocol's allocation rule (bench.core.select.Allocation): uniform / global (every pruner's
scores raw; v2's ``mixed`` ranking standardised weight scores per layer), the per-layer keep floor,
validation before training, run identity, audit."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.core.errors import ConfigError
from bench.core.select import Allocation, expected_kept, hard_topk, keep_above
from bench.core.sparsity import parse_pattern
from bench.runs.run import RunSpec, resolve

CHANNEL = parse_pattern("channel")


def scales_apart() -> dict[str, torch.Tensor]:
    """Two layers whose score scales differ by 1000x (Kaiming init under a BatchNorm does this)."""
    gen = torch.Generator().manual_seed(0)
    return {"wide": torch.rand(64, generator=gen) * 1e-3, "narrow": torch.rand(16, generator=gen)}


def kept(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(m.sum()) for name, m in masks.items()}


def test_raw_global_ranking_empties_the_small_scale_layer():
    """v1 (no allocation): the small-scale layer keeps only what the other cannot take -- the audit's finding."""
    assert kept(hard_topk(scales_apart(), CHANNEL, 0.75)) == {"wide": 4, "narrow": 16}


def test_global_allocation_ranks_every_pruners_scores_raw():
    """Protocol v3's one rule: the same ranking for comparable and weight-derived scores."""
    raw = kept(hard_topk(scales_apart(), CHANNEL, 0.75))
    for comparable in (False, True):
        masks = hard_topk(scales_apart(), CHANNEL, 0.75, allocation=Allocation("global"), comparable=comparable)
        assert kept(masks) == raw == {"wide": 4, "narrow": 16}


def test_mixed_ranking_standardises_weight_scores_per_layer():
    """Leaderboard v2's rule, kept so its rows reproduce: weight scores z-scored per layer."""
    masks = hard_topk(scales_apart(), CHANNEL, 0.75, allocation=Allocation("global", ranking="mixed"))
    counts = kept(masks)
    assert sum(counts.values()) == 20  # round(0.25 * 80)
    assert 10 <= counts["wide"] <= 20 and 1 <= counts["narrow"] <= 8  # about a quarter of each
    scores = scales_apart()  # within a layer the highest scores are the ones kept
    for name, mask in masks.items():
        assert scores[name][mask].min() >= scores[name][~mask].max()


def test_mixed_ranking_leaves_comparable_scores_as_they_are():
    raw = hard_topk(scales_apart(), CHANNEL, 0.75)
    mixed = Allocation("global", ranking="mixed")
    same = hard_topk(scales_apart(), CHANNEL, 0.75, allocation=mixed, comparable=True)
    assert kept(same) == kept(raw)


def test_ranking_in_the_identity_only_where_it_selects_differently():
    """v2's ``mixed`` ids are unchanged (no field); raw global ids carry it; uniform ignores it."""
    assert Allocation("global", 0.1, ranking="mixed").to_dict() == {"policy": "global", "floor": 0.1}
    assert Allocation("global", 0.1).to_dict() == {"policy": "global", "floor": 0.1, "ranking": "raw"}
    assert Allocation("uniform", ranking="mixed").to_dict() == Allocation("uniform").to_dict()
    for rule in (
        Allocation("global", 0.1, ranking="mixed"),
        Allocation("global", budget="flops"),
        Allocation("uniform"),
    ):
        assert Allocation.from_value(rule.spec()) == rule
    with pytest.raises(ConfigError, match=r"allocation\.ranking: 'z' is not one of raw, mixed"):
        Allocation.from_value({"policy": "global", "ranking": "z"})


def test_uniform_allocation_is_per_layer():
    counts = kept(hard_topk(scales_apart(), CHANNEL, 0.75, allocation=Allocation("uniform")))
    assert counts == {"wide": 16, "narrow": 4}


def test_floor_holds_every_layer_and_the_total_is_exact():
    allocation = Allocation("global", 0.2)
    scores = scales_apart()
    scores["narrow"] = scores["narrow"] - 10  # ranked raw, every unit of it loses: the floor holds it
    masks = hard_topk(scores, CHANNEL, 0.75, allocation=allocation, comparable=True)
    counts = kept(masks)
    assert counts["narrow"] == math.ceil(0.2 * 16) == 4  # held at its floor
    assert sum(counts.values()) == 20 == expected_kept({"wide": 64, "narrow": 16}, CHANNEL, 0.75, allocation=allocation)


def test_keep_above_respects_the_floor():
    gates = {"a": torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3]), "b": torch.tensor([0.1, 0.4, 0.2, 0.3, 0.0])}
    plain = keep_above(gates, CHANNEL, 0.5)
    assert kept(plain) == {"a": 2, "b": 0}
    floored = keep_above(gates, CHANNEL, 0.5, Allocation("global", 0.4))
    assert kept(floored) == {"a": 2, "b": 2}
    assert floored["b"].tolist() == [False, True, False, True, False]  # its best two


def test_nm_is_exempt():
    nm = parse_pattern("nm:2:4")
    scores = {"x": torch.rand(8, 4)}
    floored = hard_topk(scores, nm, 0.5, allocation=Allocation("global", 0.9))
    assert torch.equal(floored["x"], hard_topk(scores, nm, 0.5)["x"])
    assert floored["x"].sum(dim=1).tolist() == [2] * 8


@pytest.mark.parametrize(
    "value,field",
    [
        ("layerwise", "allocation.policy"),
        ({"policy": "global", "floor": 1.5}, "allocation.floor"),
        ({"policy": "global", "floor": "a"}, "allocation.floor"),
        ({"policy": "global", "minimum": 0.1}, "allocation"),
        (3, "allocation"),
    ],
)
def test_bad_allocations_name_the_field(value, field):
    with pytest.raises(ConfigError) as err:
        Allocation.from_value(value)
    assert err.value.field == field


SPEC = RunSpec(task="fmnist-tiny", pruner="magnitude", pattern="channel", sparsity=0.5)


def test_identity_v1_unchanged_and_allocation_part_of_it():
    v1 = resolve(SPEC)
    assert "allocation" not in v1.canonical
    glob = resolve(dataclasses.replace(SPEC, allocation={"policy": "global", "floor": 0.1}))
    assert glob.canonical["allocation"] == {"policy": "global", "floor": 0.1, "ranking": "raw"}
    assert glob.run_id != v1.run_id
    mixed = resolve(dataclasses.replace(SPEC, allocation={"policy": "global", "floor": 0.1, "ranking": "mixed"}))
    assert mixed.canonical["allocation"] == {"policy": "global", "floor": 0.1}  # v2's ids
    assert mixed.run_id not in (v1.run_id, glob.run_id)
    assert resolve(dataclasses.replace(SPEC, allocation="uniform")).run_id not in (v1.run_id, glob.run_id)


def test_floor_above_what_the_sparsity_leaves_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"^allocation.floor: floor 0.6 keeps"):
        resolve(dataclasses.replace(SPEC, allocation={"policy": "global", "floor": 0.6}))
    with pytest.raises(ConfigError, match=r"^allocation.floor: floor 0.6 is above"):
        resolve(dataclasses.replace(SPEC, allocation={"policy": "uniform", "floor": 0.6}))


def test_the_protocol_rule_is_the_default_and_v1_stays_available(shared_runs_dir, monkeypatch, capsys):
    """`smartbench run` without --allocation takes the protocol's rule (global, floor min(10 %, half
    the kept fraction)), so magnitude channel 90 % keeps >= 5 % of every layer; `--allocation v1`
    is the old default, which empties a layer down to a few units."""
    import json
    import math

    from bench.cli.main import main
    from bench.core.select import protocol_allocation, protocol_floor

    assert protocol_allocation("protocol", 0.9) == {"policy": "global", "floor": 0.05}
    assert protocol_allocation("v1", 0.9) is None and protocol_allocation("uniform", 0.9) == "uniform"
    assert protocol_floor(0.5) == 0.1 and protocol_floor(0.98) == 0.01
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    base = ["run", "--task", "fmnist-tiny", "--pruner", "magnitude", "--pattern", "channel", "--sparsity", "0.9"]
    base += ["--prune-epochs", "1", "--finetune-epochs", "0", "--json"]
    rows = {}
    for name, extra in (("protocol", []), ("v1", ["--allocation", "v1"])):
        assert main(base + extra) == 0
        rows[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    protocol = {"policy": "global", "floor": 0.05, "ranking": "raw"}
    assert rows["protocol"]["allocation"] == protocol and "allocation" not in rows["v1"]
    fractions = {name: [l["kept_units"] / l["units"] for l in row["audit"]["layers"]] for name, row in rows.items()}
    floors = [math.ceil(0.05 * l["units"]) for l in rows["protocol"]["audit"]["layers"]]
    assert all(l["kept_units"] >= f for l, f in zip(rows["protocol"]["audit"]["layers"], floors))
    assert min(fractions["v1"]) < 0.05 <= min(fractions["protocol"])  # the v1 default collapses a layer
