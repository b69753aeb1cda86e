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


def test_a_ddp_rank_reads_the_slice_of_every_global_batch():
    """``Task.shard_batches`` (issue 34): classification gathers only the rank's rows, the same as
    slicing the global batch; the default of other tasks slices what ``train_batches`` read."""
    from bench.tasks.base import Task, slice_batch
    from bench.tasks.registry import get_task

    task = get_task("fmnist-tiny")
    whole = list(task.train_batches(0, 3))
    for rank in (0, 1, 2):
        part = list(task.shard_batches(0, 3, rank, 3))
        assert len(part) == len(whole)
        for mine, batch in zip(part, whole):
            assert torch.equal(mine[0], batch[0][rank::3]) and torch.equal(mine[1], batch[1][rank::3])
    batch = {"x": torch.arange(6), "meta": ("a",), "y": [torch.arange(6) * 2]}
    assert torch.equal(slice_batch(batch, 1, 2)["x"], torch.tensor([1, 3, 5])) and slice_batch(batch, 1, 2)["meta"] == (
        "a",
    )

    class Listed(Task):
        def train_batches(self, epoch, seed):
            yield (torch.arange(8), torch.arange(8) + 10)

    ((x, y),) = Listed.shard_batches(object.__new__(Listed), 0, 0, 1, 4)
    assert x.tolist() == [1, 5] and y.tolist() == [11, 15]
