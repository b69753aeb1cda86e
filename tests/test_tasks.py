"""Task variants of the v2 leaderboard: what they change is in the model and in the run identity."""

import torch

from bench.tasks.registry import get_task


def test_fmnist_resnet_lite_is_resnet10t_at_half_width_and_says_so():
    lite, full = get_task("fmnist-resnet-lite"), get_task("fmnist-resnet")
    lite_model, full_model = lite.build_model(), full.build_model()
    assert [s[-1].conv2.out_channels for s in (lite_model.layer1, lite_model.layer4)] == [32, 256]
    assert [s[-1].conv2.out_channels for s in (full_model.layer1, full_model.layer4)] == [64, 512]
    assert lite.identity()["model_kwargs"] == {"channels": (32, 64, 128, 256)}
    assert "model_kwargs" not in full.identity()  # the ids of fmnist-resnet runs are unchanged
    assert lite.identity()["train_size"] == full.identity()["train_size"]
    with torch.no_grad():
        assert lite_model.eval()(lite.example_input()).shape == (2, 10)
    # another architecture by --model gets no width override
    other = get_task("fmnist-resnet-lite", "timm:test_resnet")
    assert other.model_kwargs() == {} and other.build_model() is not None
