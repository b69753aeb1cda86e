"""ViT N:M tasks: coverage, N:M audit after SMART, sparsity implied by N:M, ImageNet path check, 2:4 kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.core.errors import ConfigError, DataError, SmartbenchError
from bench.core.masks import Masker, calibrate, find_prunable
from bench.core.pruner import Progress
from bench.core.sparsity import NM, parse_pattern
from bench.deploy.sparse24 import PATTERN_24, compare, covered_linears, make_pair, mask_24_
from bench.runs.registry import build_pruner
from bench.runs.run import RunSpec, resolve
from bench.tasks.registry import get_task
from bench.tasks.vit import IMAGENET_ENV, imagenet_root

BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def covered(task):
    model = task.build_model()
    return model, find_prunable(model, task.include, task.exclude, task.keep_first_last)


@pytest.mark.parametrize("name,depth", [("fmnist-vit", 4), ("fmnist-vit-tiny", 2)])
def test_every_block_linear_is_covered_and_nothing_else(name, depth):
    task = get_task(name)
    model, names = covered(task)
    assert names == [f"blocks.{i}.{layer}" for i in range(depth) for layer in BLOCK_LINEARS]
    assert "patch_embed.proj" not in names and "head" not in names
    modules = dict(model.named_modules())
    for pattern in ("nm:2:4", "nm:1:4", "nm:4:8"):
        for layer in names:
            parse_pattern(pattern).check(modules[layer].weight.shape, layer)  # M divides every input size


def test_model_swap_keeps_the_fmnist_input_and_changes_the_identity():
    default, swapped = get_task("fmnist-vit"), get_task("fmnist-vit", "timm:deit_tiny_patch16_224")
    model = swapped.build_model()
    assert model.embed_dim == 192 and model.patch_embed.grid_size == (4, 4)  # 7x7 patches
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert default.identity() != swapped.identity()


def smart_on_random_data(task, pattern, steps=6):
    """Masker + SMART hooks on the task's model with random images (no data, no trainer)."""
    torch.manual_seed(0)
    model, names = covered(task)
    masker = Masker(model, names, pattern, task.example_input())
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(3)]
    calibrate(model, masker.layers, batches[:1], task.forward)
    pruner = build_pruner("smart", pattern, 1 - pattern.n / pattern.m, {})
    pruner.attach(masker.layers)
    optimizer = torch.optim.SGD([{"params": list(model.parameters())}] + pruner.param_groups(), lr=0.01, momentum=0.9)
    for step in range(steps):
        pruner.on_step(Progress("prune", step, steps, 0))
        masker.set_masks(pruner.masks())
        x, y = batches[step % len(batches)]
        loss = F.cross_entropy(model(x), y) + pruner.penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pruner.after_optimizer_step(optimizer)
    hard = {name: mask.bool() for name, mask in pruner.finalize().items()}
    masker.set_masks({name: mask.float() for name, mask in hard.items()})
    return model, masker, hard


@pytest.mark.parametrize("pattern", [NM(2, 4), NM(1, 4), NM(4, 8)])
def test_smart_finalize_gives_valid_nm_masks_on_every_covered_layer(pattern):
    model, masker, hard = smart_on_random_data(get_task("fmnist-vit-tiny"), pattern)
    audit = masker.audit(hard)
    assert audit["pattern_valid"] and all(row["valid"] for row in audit["layers"])
    assert audit["achieved_sparsity"] == pytest.approx(1 - pattern.n / pattern.m, abs=1e-12)
    assert [row["layer"] for row in audit["layers"]] == [layer.name for layer in masker.layers]
    for layer in masker.layers:  # the effective weights themselves: <= N non-zeros in every group of M inputs
        groups = layer.module.weight.detach().reshape(-1, pattern.m)
        assert int((groups != 0).sum(dim=1).max()) <= pattern.n
        assert groups.shape[0] == layer.weight.numel() // pattern.m


def test_audit_flags_a_group_with_too_many_weights():
    _model, masker, hard = smart_on_random_data(get_task("fmnist-vit-tiny"), NM(2, 4), steps=1)
    name = masker.layers[2].name
    broken = dict(hard)
    broken[name] = hard[name].clone()
    broken[name][5] = True  # 4 of 4 kept in one group
    audit = masker.audit(broken)
    assert not audit["pattern_valid"]
    assert [row["layer"] for row in audit["layers"] if not row["valid"]] == [name]


@pytest.mark.parametrize("pattern,implied", [("nm:2:4", 0.5), ("nm:1:4", 0.75), ("nm:4:8", 0.5)])
def test_resolve_takes_the_sparsity_from_nm(pattern, implied):
    run = resolve(RunSpec(task="fmnist-vit-tiny", pruner="magnitude", pattern=pattern))
    assert run.sparsity == implied and run.canonical["sparsity"] == implied
    explicit = resolve(RunSpec(task="fmnist-vit-tiny", pruner="magnitude", pattern=pattern, sparsity=implied))
    assert explicit.run_id == run.run_id


def test_resolve_rejects_a_sparsity_that_conflicts_with_nm():
    with pytest.raises(ConfigError) as err:
        resolve(RunSpec(task="fmnist-vit-tiny", pruner="smart", pattern="nm:2:4", sparsity=0.7))
    assert err.value.field == "sparsity" and "nm:2:4 fixes the sparsity to 0.5" in str(err.value)


def test_nm_that_does_not_tile_a_layer_leaves_it_dense_and_says_why():
    """nm:2:128 tiles only the 256-wide fc2 inputs of the width-64 ViT: the rest stays dense
    (bench.core.masks.covered_layers); a pattern that tiles nothing is refused before training."""
    run = resolve(RunSpec(task="fmnist-vit-tiny", pruner="smart", pattern="nm:2:128"))
    assert sorted(run.unit_counts) == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    assert (
        "M=128 to divide the input size of layer 'blocks.0.attn.qkv' (in=64)" in run.dense_layers["blocks.0.attn.qkv"]
    )
    with pytest.raises(
        ConfigError, match=r"^pattern: nm:2:512 fits none of the 8 prunable layers \(e.g. blocks.0.attn.qkv"
    ):
        resolve(RunSpec(task="fmnist-vit-tiny", pruner="smart", pattern="nm:2:512"))


# -- ImageNet by path ----------------------------------------------------------------------


def fake_imagenet(root, classes=("n01440764", "n01443537"), per_class=3):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in classes:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 30), (i * 40, 80, 160)).save(folder / f"{wnid}_{i}.JPEG")
    return root


def test_imagenet_root_comes_from_the_environment_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    with pytest.raises(DataError, match=IMAGENET_ENV):
        imagenet_root()
    root = fake_imagenet(tmp_path / "imagenet")
    monkeypatch.setenv(IMAGENET_ENV, str(root))
    found = imagenet_root()
    assert found["train"] == root.resolve() / "train" and found["val"] == root.resolve() / "val"
    for image in (root / "val").glob("*/*.JPEG"):
        image.unlink()
    with pytest.raises(DataError, match="Expected layout"):
        imagenet_root()


def test_imagenet_task_reads_the_fake_tree(tmp_path, monkeypatch):
    monkeypatch.setenv(IMAGENET_ENV, str(fake_imagenet(tmp_path / "imagenet")))
    task = get_task("imagenet-deit")
    task.workers, task.holdout = 0, 2
    assert len(task.splits["train"]) == 4 and len(task.splits["val"]) == 2 and len(task.splits["test"]) == 6
    assert task.dataset_hash() == get_task("imagenet-deit").dataset_hash()
    images, labels = next(iter(task._loader(task.splits["test"], 6)))
    assert images.shape == (6, 3, 224, 224) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    _model, names = covered(task)
    assert len(names) == 4 * 12 and all(n.startswith("blocks.") for n in names)
    with pytest.raises(ConfigError, match="model"):
        get_task("imagenet-deit", "timm:resnet18").build_model()


# -- 2:4 kernels ---------------------------------------------------------------------------


def test_magnitude_24_mask_keeps_the_two_largest_of_every_four():
    layer = torch.nn.Linear(8, 3)
    weight = layer.weight.detach().clone()
    masks = mask_24_(torch.nn.Sequential(layer), ["0"])
    assert PATTERN_24.is_valid(masks["0"].float())
    groups, original = layer.weight.detach().reshape(-1, 4), weight.reshape(-1, 4)
    kept = original.abs().topk(2, dim=1).indices.sort(dim=1).values
    assert torch.equal((groups != 0).nonzero()[:, 1].reshape(-1, 2), kept)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_bench_24_needs_cuda_and_records_nothing(tmp_path):
    import importlib.util
    from pathlib import Path

    from bench.deploy.sparse24 import require_cuda

    with pytest.raises(SmartbenchError, match="needs a CUDA GPU"):
        require_cuda()
    spec = importlib.util.spec_from_file_location("bench_24", Path(__file__).parents[1] / "scripts" / "bench_24.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path / "rows.json")]) == 2
    assert not (tmp_path / "rows.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels need CUDA")
def test_sparse_24_outputs_match_masked_dense_fp16():
    torch.manual_seed(0)
    model = get_task("fmnist-vit").build_model()
    pair = make_pair(model, covered_linears(model), torch.device("cuda"))
    assert not pair.skipped
    x = torch.randn(32, 1, 28, 28, device="cuda", dtype=torch.float16)
    row = compare(pair, x, warmup=1, repeats=2)
    assert row["rel_err"] <= 1e-2
    linear = torch.nn.Sequential(torch.nn.Linear(768, 3072))
    pair = make_pair(linear, ["0"], torch.device("cuda"))
    x = torch.randn(256, 768, device="cuda", dtype=torch.float16)
    assert compare(pair, x, warmup=1, repeats=2)["rel_err"] <= 1e-2


def test_dense_optimizer_is_adamw_and_part_of_the_identity():
    from bench.training.train import make_dense_optimizer

    task = get_task("fmnist-vit-tiny")
    optimizer = make_dense_optimizer(task.build_model(), task)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == task.budget.lr == 1e-3
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    assert task.identity()["dense_optimizer"] == {"type": "AdamW", "weight_decay": 0.05}
    assert "dense_optimizer" not in get_task("fmnist-tiny").identity()  # SGD tasks keep their ids
