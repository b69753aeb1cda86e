import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An isolated SMARTBENCH_RUNS folder (store, dense cache, checkpoints)."""
    monkeypatch.setenv("SMARTBENCH_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def shared_runs_dir(tmp_path_factory):
    """A session-wide runs folder so end-to-end tests share one cached dense model."""
    return tmp_path_factory.mktemp("shared-runs")


@pytest.fixture(scope="module")
def one_thread():
    """mm models run many small ops: on a shared 2-core machine one thread is several times faster
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
