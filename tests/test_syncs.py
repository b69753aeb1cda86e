"""The host-sync counter (bench.core.syncs) sees what would stall a GPU, and nothing else."""

from __future__ import annotations

import torch

from bench.core.syncs import HostSyncCounter


def counted(fn) -> dict[str, int]:
    with HostSyncCounter() as syncs:
        fn()
    return dict(syncs.by_op)


def test_every_kind_of_host_read_is_counted_once():
    x = torch.randn(12)
    assert counted(lambda: x.sum().item()) == {"_local_scalar_dense": 1}
    assert counted(lambda: bool(x.max() > 0)) == {"_local_scalar_dense": 1}
    assert counted(lambda: x[torch.tensor(3)]) == {"_local_scalar_dense": 1}  # indexing with a 0-dim tensor
    assert counted(lambda: x[x > 0]) == {"index[bool]": 1}
    assert counted(lambda: x.nonzero()) == {"nonzero": 1}
    assert counted(lambda: torch.unique(x.round())) != {}
    assert counted(lambda: x.tolist()) == {"tolist": 1} and counted(lambda: x.numpy()) == {"numpy": 1}
    assert counted(lambda: torch.repeat_interleave(x, torch.full((12,), 2))) == {"repeat_interleave": 1}


def test_device_side_code_counts_zero_and_the_tensor_methods_come_back():
    x = torch.randn(12)

    def device_only():
        threshold = x.sort().values[-4]  # the 4th largest, kept on the device
        torch.where(x >= threshold, x, torch.zeros_like(x)).mul_(2.0)
        torch.repeat_interleave(x, 2)  # an int repeat: the length is known on the host

    assert counted(device_only) == {}
    original = torch.Tensor.tolist
    with HostSyncCounter():
        assert torch.Tensor.tolist is not original
    assert torch.Tensor.tolist is original
