"""Image-folder tasks on small trees written from Fashion-MNIST images: `imagefolder` (your data) and
`imagenet-resnet50` (layout, splits, carving, identity, errors, end-to-end runs, suite plan)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bench.cli.main import main
from bench.core.errors import ConfigError, DataError
from bench.core.paths import RunPaths
from bench.data.fmnist import load_fmnist
from bench.runs.export import load_exported
from bench.runs.run import RunSpec, execute, resolve
from bench.tasks import base
from bench.tasks.base import Budget
from bench.tasks.imagefolder import ImagenetResnet50
from bench.tasks.registry import get_task, load_tasks
from bench.tasks.vit import IMAGENET_ENV

CLASSES = ("tshirt", "trouser", "pullover")  # Fashion-MNIST labels 0, 1, 2


def write_tree(root, splits=None, ext="png"):
    """root/<split>/<class>/<i>.<ext>: 28x28 grey Fashion-MNIST images saved as RGB."""
    from PIL import Image

    splits = splits or {"train": 30, "test": 10}
    for split, per_class in splits.items():
        images, labels = load_fmnist("test" if split == "test" else "train")
        offset = 100 if split == "val" else 0  # val images differ from train's
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            picked = (labels == label).nonzero()[0][offset : offset + per_class]
            for i, index in enumerate(picked):
                Image.fromarray(images[index]).convert("RGB").save(folder / f"{name}_{i:03d}.{ext}")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("images") / "data")


def task_on(root, **attrs):
    task = get_task("imagefolder", "timm:resnet10t", str(root))
    for key, value in attrs.items():
        setattr(task, key, value)
    return task


def names(samples):
    return {path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for path, _ in samples}


# -- imagefolder -------------------------------------------------------------------------------


def test_val_is_carved_from_train_fixed_disjoint_and_stratified(tree):
    task = task_on(tree)
    train, val, test = (task.samples[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (81, 9, 30)
    assert not names(train) & names(val)
    assert names(train) | names(val) == {f"{c}/{c}_{i:03d}.png" for c in CLASSES for i in range(30)}
    assert sorted(label for _, label in val) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 10 % of every class
    assert all(path.startswith(str(tree.resolve() / "test")) for path, _ in test)
    assert task_on(tree).samples == task.samples  # the same carving for every instance and run seed
    assert task.classes == sorted(CLASSES) and task.build_model().num_classes == 3


def test_val_and_test_folders(tmp_path):
    both = write_tree(tmp_path / "both", {"train": 8, "val": 4, "test": 5})
    task = task_on(both)
    assert [len(task.samples[s]) for s in ("train", "val", "test")] == [24, 12, 15]
    assert all("/val/" in path for path, _ in task.samples["val"])
    assert task.steps_per_epoch() == 1  # fewer images than a batch (64): one smaller batch
    assert [len(labels) for _, labels in task.train_batches(0, 0)] == [24]
    only_val = write_tree(tmp_path / "only-val", {"train": 10, "val": 4})
    task = task_on(only_val)  # val/ becomes the test split, val is carved from train
    assert [len(task.samples[s]) for s in ("train", "val", "test")] == [27, 3, 12]
    assert all("/val/" in path for path, _ in task.samples["test"])
    assert all("/train/" in path for path, _ in task.samples["val"])


def test_batches_are_deterministic_per_seed_and_epoch(tree):
    task = task_on(tree, image_size=32)
    task.budget = Budget(dense_epochs=1, prune_epochs=1, finetune_epochs=0, batch_size=16, lr=0.1, prune_lr=0.02)
    assert task.steps_per_epoch() == 5
    first = list(task.train_batches(1, 0))
    assert len(first) == 5 and first[0][0].shape == (16, 3, 32, 32) and first[0][1].dtype == torch.int64
    again = list(task_on(tree, image_size=32, budget=task.budget).train_batches(1, 0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], next(iter(task.train_batches(2, 0)))[0])
    assert not torch.equal(first[0][0], next(iter(task.train_batches(1, 1)))[0])
    state = torch.get_rng_state()
    task.workers = 1  # augmentations run under per-image seeds: the same batches in a worker process
    in_worker = next(iter(task.train_batches(1, 0)))
    assert torch.equal(in_worker[0], first[0][0]) and torch.equal(torch.get_rng_state(), state)
    calibration = task.calibration_batches()
    fresh = task_on(tree, image_size=32, budget=task.budget).calibration_batches()
    assert len(calibration) == 4 and torch.equal(calibration[0][0], fresh[0][0])


def test_a_ddp_rank_decodes_only_its_slice_of_every_batch(tree, monkeypatch):
    """``shard_batches`` (a DDP rank's data, issue 34): the rank's ``[rank::world]`` images, equal
    to slicing the decoded global batch, and only those are decoded."""
    task = task_on(tree, image_size=32)
    task.budget = Budget(dense_epochs=1, prune_epochs=1, finetune_epochs=0, batch_size=16, lr=0.1, prune_lr=0.02)
    whole = list(task.train_batches(1, 0))
    dataset = type(task.dataset("train", train=True))
    decoded = []
    original = dataset.__getitem__
    monkeypatch.setattr(dataset, "__getitem__", lambda self, key: decoded.append(key) or original(self, key))
    for rank in (0, 1):
        decoded.clear()
        part = list(task.shard_batches(1, 0, rank, 2))
        assert len(part) == len(whole) and len(decoded) == sum(len(b[1]) for b in part) == 5 * 8
        for mine, batch in zip(part, whole):
            assert torch.equal(mine[0], batch[0][rank::2]) and torch.equal(mine[1], batch[1][rank::2])


def test_identity_follows_the_data_not_its_location(tree, tmp_path):
    moved = shutil.copytree(tree, tmp_path / "moved")
    assert task_on(moved).identity() == task_on(tree).identity()
    assert task_on(tree).identity()["data"] == task_on(tree).dataset_hash()
    (moved / "train" / "tshirt" / "tshirt_000.png").unlink()
    assert task_on(moved).identity() != task_on(tree).identity()
    renamed = shutil.copytree(tree, tmp_path / "renamed")
    (renamed / "train" / "tshirt").rename(renamed / "train" / "top")
    (renamed / "test" / "tshirt").rename(renamed / "test" / "top")
    assert task_on(renamed).identity() != task_on(tree).identity()
    assert task_on(tree, image_size=32).identity() != task_on(tree).identity()
    one, other = (
        resolve(RunSpec("imagefolder", "magnitude", "channel", 0.5, model="timm:resnet10t", data=str(root)))
        for root in (tree, renamed)
    )
    assert one.run_id != other.run_id


def test_clear_errors(tmp_path, runs_dir, capsys):
    with pytest.raises(ConfigError) as err:
        get_task("imagefolder")
    assert err.value.field == "data" and "train/<class>/" in str(err.value)
    args = ["run", "--task", "imagefolder", "--pruner", "magnitude", "--pattern", "channel", "--sparsity", "0.5"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: data: task 'imagefolder' reads your image folder")
    (tmp_path / "no-train" / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing folder .*no-train/train(.|\n)*Expected layout"):
        task_on(tmp_path / "no-train").identity()
    assert main([*args, "--data", str(tmp_path / "no-train")]) == 2
    assert "missing folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="no folder"):
        task_on(tmp_path / "absent").identity()
    only_train = write_tree(tmp_path / "only-train", {"train": 3})
    with pytest.raises(DataError, match="no val/ or test/ folder"):
        task_on(only_train).identity()
    write_tree(only_train, {"test": 1})
    empty = write_tree(tmp_path / "empty", {"train": 3, "test": 2})
    (empty / "train" / "sneaker").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/sneaker holds no images"):
        task_on(empty).build_model()
    stray = write_tree(tmp_path / "stray", {"train": 3, "test": 2})
    shutil.copytree(stray / "test" / "tshirt", stray / "test" / "bag")
    with pytest.raises(DataError, match="bag of .* are not in"):
        task_on(stray).identity()
    with pytest.raises(ConfigError, match="unknown timm model"):
        get_task("imagefolder", "timm:no_such_net", str(empty.parent / "only-train")).build_model()
    assert not runs_dir.exists()


@pytest.mark.slow
def test_cli_run_on_an_image_folder(tree, runs_dir, capsys):
    args = ["run", "--task", "imagefolder", "--data", str(tree), "--model", "timm:resnet10t", "--pruner", "gmp"]
    args += ["--pattern", "channel", "--sparsity", "0.5", "--prune-epochs", "1", "--finetune-epochs", "0", "--json"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["task"] == "imagefolder" and row["model"] == "timm:resnet10t" and row["family"] == "classification"
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"]
    assert 0 <= row["metric"] <= 100 and 0 <= row["val_metric"] <= 100 and 0 <= row["dense_metric"] <= 100
    assert row["provenance"]["dataset_hash"] == task_on(tree).dataset_hash()
    assert (runs_dir / "models" / f"{row['run_id']}.pt").is_file()
    assert row["data"] == str(tree)  # export and speed rebuild the model (its class count) from it
    assert main(["export", row["run_id"], "--out", str(runs_dir / "exported.pt")]) == 0
    model, meta = load_exported(runs_dir / "exported.pt")
    assert meta["data"] == str(tree) and model.num_classes == 3  # the tree's three class folders
    assert main(["speed", row["run_id"], "--repeats", "2", "--warmup", "0", "--batch-sizes", "1,2"]) == 0


# -- imagenet-resnet50 -------------------------------------------------------------------------


class TinyImagenetResnet50(ImagenetResnet50):
    """imagenet-resnet50 on a 3-class tree at 32x32 (the test's subclass, like the micro tasks)."""

    name = "tiny-imagenet-resnet50"
    expected_classes = 3
    image_size = 32
    eval_resize = 36
    holdout_per_class = 2
    workers = 0
    eval_batch = 64
    budget = Budget(dense_epochs=1, prune_epochs=1, finetune_epochs=0, batch_size=16, lr=0.1, prune_lr=0.01)


@pytest.fixture
def fake_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    write_tree(root, {"train": 10, "val": 4}, ext="JPEG")
    return root


def test_imagenet_resnet50_is_registered_and_needs_no_data_to_plan(monkeypatch, capsys):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    assert main(["list"]) == 0
    assert "imagenet-resnet50" in capsys.readouterr().out and "imagenet-resnet50" in load_tasks()
    task = get_task("imagenet-resnet50")
    model = task.build_model()
    assert model.num_classes == 1000 and model(task.example_input()).shape == (2, 1000)
    assert task.identity()["image_size"] == 224 and "data" not in task.identity()
    b = task.budget
    assert (b.dense_epochs, b.prune_epochs, b.finetune_epochs, b.batch_size, b.lr) == (90, 30, 15, 256, 0.1)
    assert (b.weight_decay, b.momentum) == (1e-4, 0.9)
    with pytest.raises(DataError, match=f"--data PATH or set \\${IMAGENET_ENV}"):
        task.steps_per_epoch()


def test_imagenet_resnet50_reads_the_tree_from_data_or_env(fake_imagenet, monkeypatch):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    task = TinyImagenetResnet50(data=str(fake_imagenet))
    assert [len(task.samples[s]) for s in ("train", "val", "test")] == [24, 6, 12]
    assert not names(task.samples["train"]) & names(task.samples["val"])
    assert all("/val/" in path for path, _ in task.samples["test"])  # test = the official val folder
    images, labels = next(iter(task.train_batches(0, 0)))
    assert images.shape == (16, 3, 32, 32) and labels.max() < 3
    monkeypatch.setenv(IMAGENET_ENV, str(fake_imagenet))
    from_env = TinyImagenetResnet50()
    assert from_env.samples == task.samples and from_env.dataset_hash() == task.dataset_hash()
    with pytest.raises(DataError, match="3 class folders .* expected 1000"):
        get_task("imagenet-resnet50").steps_per_epoch()
    for image in (fake_imagenet / "val").glob("*/*.JPEG"):
        image.unlink()
    with pytest.raises(DataError, match="Expected layout"):
        TinyImagenetResnet50().steps_per_epoch()


@pytest.mark.slow
def test_imagenet_resnet50_run_on_a_tiny_tree(fake_imagenet, runs_dir, monkeypatch):
    monkeypatch.setitem(base.TASKS, TinyImagenetResnet50.name, TinyImagenetResnet50)
    spec = RunSpec(TinyImagenetResnet50.name, "magnitude", "block:1x8", 0.5, data=str(fake_imagenet))
    run = resolve(spec)
    assert run.task.model_name == "resnet50"
    row = execute(run, log=lambda _m: None, paths=RunPaths(runs_dir), wandb=False)
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"] and 0 <= row["metric"] <= 100


def test_suite_plan_lists_the_real_imagenet_resnet50_cells(runs_dir, monkeypatch, capsys):
    from bench.suites.suite import load_and_expand

    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    suite = load_and_expand("paper-imagenet-resnet50")
    assert {c.spec.task for c in suite.cells} == {"imagenet-resnet50"}
    assert suite.cells and all(c.registered and len(c.run_id) == 12 for c in suite.cells)
    assert main(["suite", "plan", "paper-imagenet-resnet50"]) == 0
    out = capsys.readouterr().out
    assert "not registered" not in out and all(c.run_id in out for c in suite.cells)
    assert not runs_dir.exists()


def test_a_suite_block_carries_the_data_path(tree, tmp_path):
    """Suites can name the image folder (`data:`); the planned ids are those of resolve()."""
    import yaml

    from bench.suites.suite import expand, load_suite

    spec = {
        "tasks": ["imagefolder"],
        "model": "timm:resnet10t",
        "data": str(tree),
        "pruners": ["magnitude"],
        "patterns": ["channel"],
        "sparsities": [0.5],
        "seeds": [0],
    }
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    (cell,) = expand(load_suite(str(path))).cells
    assert cell.spec.data == str(tree)
    assert cell.run_id == resolve(cell.spec).run_id
