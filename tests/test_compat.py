"""Compatibility sweep cells (scripts/compat_sweep.py) on the families that used to fail:
depthwise convs under block, grouped convs under channel (shrink), a model that cannot take
28x28 inputs (refused with one line), and a plain ResNet under N:M."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compat_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("compat_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_depthwise_mobilenet_block_runs_with_depthwise_dense(sweep):
    row = sweep.cell("timm:mobilenetv2_050", "magnitude", "block:1x8", 0.5, steps=2)
    assert row["outcome"] == "ok", row
    assert row["dense"] > 0 and any("depthwise" in r for r in row["dense_reasons"])
    assert row["achieved"] == 0.5


@pytest.mark.slow
def test_grouped_regnet_channel_shrinks_exactly(sweep):
    """regnety_002 channel used to crash in the shrink (weight of size [368, 0, 3, 3])."""
    row = sweep.cell("timm:regnety_002", "magnitude", "channel", 0.5, steps=2)
    assert row["outcome"] == "ok", row
    assert row["shrink"] == "agrees"


@pytest.mark.slow
def test_convnext_at_28px_is_refused_in_one_line(sweep):
    row = sweep.cell("timm:convnext_atto", "magnitude", "channel", 0.5, steps=2)
    assert row["outcome"] == "refused"
    assert row["detail"].startswith(
        "model: 'timm:convnext_atto' cannot take the input of task 'fmnist-tiny' (1, 28, 28)"
    )


@pytest.mark.slow
def test_resnet_nm(sweep):
    row = sweep.cell("timm:resnet18", "smart", "nm:2:4", None, steps=2)
    assert row["outcome"] == "ok", row
    assert row["achieved"] == 0.5
