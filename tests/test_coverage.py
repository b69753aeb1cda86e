"""Layers a pattern cannot cover stay dense (bench.core.masks.covered_layers): listed with their
reason, target exact over the covered layers; no covered layer at all is one clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bench
from bench.core.errors import ConfigError
from bench.runs.run import RunSpec, resolve


class DepthwiseNet(nn.Module):
    """stem -> pointwise (8->16) -> depthwise 3x3 (16 groups) -> pointwise (16->16) -> head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.expand(torch.relu(self.stem(x))))
        x = self.project(torch.relu(self.depthwise(x)))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("pattern,sparsity", [("block:1x8", 0.5), ("nm:2:4", None)])
def test_depthwise_conv_is_left_dense_and_listed(pattern, sparsity):
    torch.manual_seed(0)
    model = DepthwiseNet()
    pruning = bench.prune(
        model, pruner="magnitude", pattern=pattern, sparsity=sparsity, steps=2, example_input=torch.randn(2, 3, 8, 8)
    )
    audit = pruning.audit()
    assert [row["layer"] for row in audit["layers"]] == ["expand", "project"]
    assert audit["dense_layers"] == [
        {"layer": "depthwise", "reason": f"depthwise conv (one input channel per group): {pattern} cannot tile it"}
    ]
    assert audit["achieved_sparsity"] == 0.5 and audit["pattern_valid"]
    assert bool((model.depthwise.weight != 0).all())  # untouched


def test_a_pattern_that_fits_no_layer_is_one_error():
    with pytest.raises(ConfigError, match=r"^pattern: block:1x7 fits none of the 3 prunable layers \(e.g. expand:"):
        bench.prune(
            DepthwiseNet(), pruner="magnitude", pattern="block:1x7", sparsity=0.5, example_input=torch.randn(2, 3, 8, 8)
        )


def test_timm_mobilenet_resolves_with_its_depthwise_convs_dense():
    """The issue's case: mobilenetv2_050 with block:1x8 used to be refused outright."""
    run = resolve(
        RunSpec(task="fmnist-tiny", pruner="magnitude", pattern="block:1x8", sparsity=0.5, model="timm:mobilenetv2_050")
    )
    assert run.dense_layers and all("depthwise" in why or "does not divide" in why for why in run.dense_layers.values())
    assert any("depthwise" in why for why in run.dense_layers.values())
    assert run.unit_counts and not set(run.unit_counts) & set(run.dense_layers)
