"""--device / --amp: validation, identity, placement of restored pruner state, bf16 autocast in
the native loop. (Pruners creating their tensors on their layers' device: the conformance kit's
meta-device check. CUDA itself: scripts/gpu_check.py on a machine that has one.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conformance import harness

from bench.cli.main import main
from bench.core.device import autocast, resolve_device, to_device
from bench.core.errors import ConfigError
from bench.runs.run import RunSpec, resolve
from bench.suites.suite import spec_only_id
from bench.training.stages import StageDriver
from bench.training.train import PruneTrainer

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda0", "tpu", ""])
def test_unknown_device_names_the_field_and_the_choices(bad):
    with pytest.raises(ConfigError, match=r"^device: unknown device .*allowed: auto, cpu, cuda, cuda:N"):
        resolve_device(bad)


@needs_no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_refused(name):
    with pytest.raises(ConfigError, match="sees no CUDA device here"):
        resolve_device(name)


@needs_no_gpu
def test_cli_refuses_cuda_before_any_training(capsys, runs_dir):
    code = main(
        ["run", "--task", "fmnist-tiny", "--pruner", "magnitude", "--pattern", "block:1x8"]
        + ["--sparsity", "0.5", "--device", "cuda"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: device: 'cuda' asked for, but torch sees no CUDA device here; allowed: auto, cpu"
    ]
    assert not any(runs_dir.rglob("*.pt")) and not any(runs_dir.rglob("*.jsonl"))


def test_device_is_not_identity_amp_is():
    spec = RunSpec(task="fmnist-tiny", pruner="magnitude", pattern="block:1x8", sparsity=0.5)
    base = resolve(spec)
    assert resolve(dataclasses.replace(spec, device="cpu")).run_id == base.run_id
    with_amp = resolve(dataclasses.replace(spec, amp=True))
    assert with_amp.run_id != base.run_id and with_amp.canonical["task"]["amp"] == "bf16"
    assert "amp" not in base.canonical["task"]  # ids of fp32 runs are those from before the field
    assert spec_only_id(dataclasses.replace(spec, device="cpu")) == spec_only_id(spec)
    assert spec_only_id(dataclasses.replace(spec, amp=True)) != spec_only_id(spec)
    with pytest.raises(ConfigError, match="^amp: must be true or false"):
        resolve(dataclasses.replace(spec, amp="yes"))


def test_to_device_moves_nested_tensors_only():
    meta = torch.device("meta")
    moved = to_device({"x": torch.zeros(2), "rest": [torch.ones(1), "tag", 3]}, meta)
    assert moved["x"].device == meta and moved["rest"][0].device == meta
    assert moved["rest"][1:] == ["tag", 3]


def test_restored_pruner_state_goes_to_the_layers_device():
    """Checkpoints hold CPU tensors; a pruner attached to layers elsewhere gets them there (meta here)."""
    case = harness.KitCase(harness.registered_pruners()["random"], "block:1x8", 0.5)
    cpu_pruner = harness.build(case)
    _, _, masker, _ = harness.fresh_setup(case)
    cpu_pruner.attach(masker.layers)
    state = cpu_pruner.state_dict()
    with torch.device("meta"):
        model = harness.TinyNet()
    names = [layer.name for layer in masker.layers]
    meta_masker = harness.Masker(model, names, cpu_pruner.pattern)
    meta_pruner = harness.build(case)
    meta_pruner.attach(meta_masker.layers)
    meta_pruner.load_state_dict(state)
    assert {t.device.type for t in meta_pruner.scores.values()} == {"meta"}


class AutocastRecordingTask(harness.KitTask):
    def loss(self, model, batch):
        self.autocast_seen = getattr(self, "autocast_seen", []) + [torch.is_autocast_enabled("cpu")]
        return super().loss(model, batch)


def test_amp_autocasts_the_training_forward_in_bf16():
    assert torch.is_autocast_enabled("cpu") is False
    with autocast(torch.device("cpu"), True):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    case = harness.KitCase(harness.registered_pruners()["magnitude"], "block:1x8", 0.5)
    task, model, masker, pruner = harness.fresh_setup(case)
    task = AutocastRecordingTask()
    task.amp = True
    b = task.budget
    driver = StageDriver(pruner, masker, b.prune_epochs, b.finetune_epochs, lambda _: None)
    driver.setup(task.calibration_batches(), task.forward)
    hard = PruneTrainer(task, model, driver, 0).run()
    assert task.autocast_seen and all(task.autocast_seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    kept = sum(int(m.sum()) for m in hard.values())
    assert kept == sum(m.numel() for m in hard.values()) // 2


def test_cpu_allocator_keeps_freed_memory_on_glibc():
    import platform

    from bench.core.allocator import keep_freed_cpu_memory

    applied = keep_freed_cpu_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert keep_freed_cpu_memory() == applied  # idempotent


_SUBNORMAL_PROBE = """
import sys, torch
{setup}
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-39)  # subnormal; 1M elements: the multiply runs on the thread pool
big = int((x * 1.0).count_nonzero())
small = int((x[:100] * 1.0).count_nonzero())  # under the grain size: the calling thread alone
print(big, small)
"""


def _probe(setup: str) -> tuple[int, int]:
    import subprocess
    import sys

    code = _SUBNORMAL_PROBE.format(setup=setup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    big, small = out.stdout.split()[-2:]  # the probe prints last
    return int(big), int(small)


def test_flush_denormals_reaches_every_thread_of_a_process():
    """The CLI entry point flushes subnormals to zero before torch's thread pool exists, so the
    pool's threads inherit the mode (subnormal masks made a conv ~130x slower, docs/cell-time.md)."""
    import torch

    if not torch.set_flush_denormal(False):  # the CPU has no FTZ/DAZ (not x86): nothing to test
        pytest.skip("this CPU cannot flush subnormals")
    assert _probe("") == (1 << 20, 100)  # IEEE default: subnormal products stay
    assert _probe("from bench.cli.main import main; main(['list'])") == (0, 0)
    assert _probe("from bench.core.device import flush_denormals; assert flush_denormals()") == (0, 0)


def test_stage_driver_flushes_denormals():
    """A user's own loop (bench.api) reaches the driver's setup, not the CLI: it flushes too."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from conformance import harness\n"
        "from bench.training.stages import StageDriver\n"
        "case = harness.KitCase(harness.registered_pruners()['magnitude'], 'block:1x8', 0.5)\n"
        "task, model, masker, pruner = harness.fresh_setup(case)\n"
        "driver = StageDriver(pruner, masker, 1, 1, lambda _: None)\n"
        "driver.setup(task.calibration_batches(), task.forward)\n"
    )
    assert _probe(code) == (0, 0)


def test_compile_is_identity_when_on_and_native_loops_only():
    spec = RunSpec(task="fmnist-tiny", pruner="magnitude", pattern="block:1x8", sparsity=0.5)
    base, compiled = resolve(spec), resolve(dataclasses.replace(spec, compile=True))
    assert compiled.run_id != base.run_id and compiled.canonical["task"]["compile"] == "inductor"
    assert "compile" not in base.canonical["task"]  # ids of eager runs are those from before the field
    assert spec_only_id(dataclasses.replace(spec, compile=True)) != spec_only_id(spec)
    with pytest.raises(ConfigError, match="^compile: must be true or false"):
        resolve(dataclasses.replace(spec, compile="yes"))
    mm = RunSpec(task="scenes-seg-tiny", pruner="magnitude", pattern="channel", sparsity=0.5, compile=True)
    with pytest.raises(ConfigError, match="^compile: task 'scenes-seg-tiny' trains in its own"):
        resolve(mm)


@pytest.mark.parametrize("pruner", ["smart", "magnitude", "acdc"])
def test_compiled_training_steps_keep_the_masks_and_compile_once_not_per_step(monkeypatch, pruner):
    """The native loop through ``Task.training_model`` (torch.compile; the aot_eager backend here:
    no C++ build): the same hard masks as eager, weights within float tolerance, and a bounded number
    of graphs over the whole run -- a mask set from outside every step (a new tensor for SMART's
    soft masks) does not recompile the model, nor does the fixed mask's factor cache (bypassed
    while compiling)."""
    from torch._dynamo.utils import counters

    import bench.tasks.base as base

    monkeypatch.setattr(base, "COMPILE_BACKEND", "aot_eager")
    case = harness.KitCase(harness.registered_pruners()[pruner], "channel", 0.5)
    results = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        task, model, masker, pruner_ = harness.fresh_setup(case)
        task.compile = compiled
        b = task.budget
        driver = StageDriver(pruner_, masker, b.prune_epochs, b.finetune_epochs, lambda _: None)
        driver.setup(task.calibration_batches(), task.forward)
        hard = PruneTrainer(task, model, driver, 0).run()
        results[compiled] = (hard, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if compiled:
            graphs = counters["stats"]["unique_graphs"]
            steps = (b.prune_epochs + b.finetune_epochs) * task.steps_per_epoch()
            assert 1 <= graphs <= 3 < steps, (graphs, steps)
    (eager_masks, eager_state), (compiled_masks, compiled_state) = results[False], results[True]
    for name, mask in eager_masks.items():
        assert torch.equal(mask, compiled_masks[name]), name
    for name, value in eager_state.items():
        if value.is_floating_point():
            assert torch.allclose(value, compiled_state[name], atol=1e-4, rtol=1e-4), name
