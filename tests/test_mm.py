"""mmdet / mmseg tasks and pruning inside mmengine's Runner (bench/tasks/{detection,segmentation,mm_common}.py,
bench/training/mm_hook.py). End-to-end tests use micro budgets: 8..16 scenes, 1 epoch per stage."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from mm_micro import MICRO, MICRO_BUDGET, MICRO_SPEC, MicroDet, MicroSeg, no_flip  # noqa: E402,F401

from bench.core.errors import ConfigError, DataError  # noqa: E402
from bench.core.masks import Masker, find_prunable  # noqa: E402
from bench.core.pruner import load_pruners  # noqa: E402
from bench.core.sparsity import parse_pattern  # noqa: E402
from bench.runs.record import ResultStore  # noqa: E402
from bench.runs.run import RunSpec, execute, resolve  # noqa: E402
from bench.tasks import base as tasks_base  # noqa: E402
from bench.tasks import registry as tasks_registry  # noqa: E402
from bench.tasks.segmentation import CITYSCAPES_TRAIN_IDS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """mm models run many small ops: on a shared 2-core machine one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def micro_tasks(monkeypatch, tmp_path_factory):
    """Register the micro tasks; scenes go to a session-wide cache folder."""
    monkeypatch.setenv("SMARTBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    tasks_registry.load_tasks()
    for cls in MICRO.values():
        monkeypatch.setitem(tasks_base.TASKS, cls.name, cls)


def run_row(
    family: str,
    pruner: str,
    pattern: str,
    runs: Path,
    monkeypatch,
    sparsity=0.5,
    options=None,
    log=None,
    store: Path | None = None,
    budget=None,
):
    monkeypatch.setenv("SMARTBENCH_RUNS", str(runs))
    run = resolve(
        RunSpec(
            task=MICRO[family].name,
            pruner=pruner,
            pattern=pattern,
            sparsity=sparsity,
            pruner_options=options or {},
            budget=budget or {},
        )
    )
    store = ResultStore(store or runs / "results.jsonl")
    return execute(run, log=log or (lambda _msg: None), store=store), run


# -- import, configs, layers ----------------------------------------------------------------


def test_task_modules_import_without_mm():
    """load_tasks() imports detection/segmentation even when mm* cannot be imported."""
    code = (
        "import sys\n"
        "for name in ('mmdet', 'mmseg', 'mmengine', 'mmcv'): sys.modules[name] = None\n"
        "from bench.tasks.registry import load_tasks\n"
        "print(sorted(load_tasks()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (
        "scenes-det",
        "scenes-det-tiny",
        "scenes-seg",
        "scenes-seg-tiny",
        "coco-det",
        "ade20k-seg",
        "cityscapes-seg",
    ):
        assert f"'{name}'" in out


def test_merged_configs_are_offline_and_sized():
    det = tasks_registry.get_task("scenes-det-tiny").config
    assert det.model.bbox_head.num_classes == 10
    assert det.model.backbone.init_cfg is None and det.model.backbone.frozen_stages == -1
    assert "batch_augments" not in det.model.data_preprocessor  # no BatchFixedSizePad / LSJ padding
    seg = tasks_registry.get_task("scenes-seg-tiny").config
    assert seg.model.pretrained is None and seg.model.backbone.init_cfg is None
    assert seg.model.decode_head.num_classes == seg.model.auxiliary_head.num_classes == 11
    assert "SyncBN" not in json.dumps(seg.model.to_dict(), default=str)
    assert seg.model.data_preprocessor.size == (64, 64)


def test_scenes_seg_model_is_the_half_width_fcn():
    task = tasks_registry.get_task("scenes-seg-tiny")
    model = task.build_model()
    assert task.model_name == "fcn_r18-d8-half"
    assert model.backbone.layer4[-1].conv2.out_channels == 256  # 512 at full width
    assert 3.0e6 < sum(p.numel() for p in model.parameters()) < 3.5e6
    with torch.no_grad():
        logits = model(**task.example_input())
    assert logits.shape == (2, 11, 8, 8)  # output stride 8 on 64x64 images


@pytest.mark.parametrize(
    ("lite", "base", "probe", "widths"),
    [
        ("scenes-det-lite", "scenes-det", lambda m: m.backbone.layer4[-1].conv2.out_channels, (256, 512)),
        ("scenes-seg-lite", "scenes-seg", lambda m: m.backbone.layer4[-1].conv2.out_channels, (128, 256)),
    ],
)
def test_lite_tasks_narrow_the_model_and_say_so_in_their_identity(lite, base, probe, widths):
    lite_task, base_task = tasks_registry.get_task(lite), tasks_registry.get_task(base)
    lite_model, base_model = lite_task.build_model(), base_task.build_model()
    assert (probe(lite_model), probe(base_model)) == widths
    assert lite_task.identity()["config"]["model_overrides"] == lite_task.model_overrides
    assert "model_overrides" not in base_task.identity()["config"]  # ids of the other tasks unchanged
    with torch.no_grad():
        out = lite_model(**lite_task.example_input())
    assert len(out) > 0  # the narrowed model still runs end to end


@pytest.mark.parametrize("task_name", ["scenes-det-tiny", "scenes-seg-tiny"])
def test_default_prunable_layers(task_name):
    task = tasks_registry.get_task(task_name)
    model = task.build_model()
    names = find_prunable(model, task.include, task.exclude, task.keep_first_last)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert names and set(names) <= set(convs)
    assert convs[0] not in names  # the stem sees raw pixels
    if task.family == "detection":
        assert any(n.startswith("neck.") for n in names) and not any(n.startswith("bbox_head") for n in names)
    else:
        assert "decode_head.conv_seg" not in names and not any(n.startswith("auxiliary_head") for n in names)
    for pattern in ("channel", "block:1x8"):
        for name in names:  # resolve() checks exactly this
            parse_pattern(pattern).check(dict(model.named_modules())[name].weight.shape, name)


def test_resolve_checks_model_option():
    with pytest.raises(ConfigError, match="model"):
        resolve(RunSpec(task="scenes-det-tiny", pruner="magnitude", pattern="channel", sparsity=0.5, model="resnet50"))


# -- real datasets by path -----------------------------------------------------------------


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def fake_coco(root: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True)
        images = []
        for i in (1, 2):
            Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(folder / f"{i:012d}.jpg")
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 48, "height": 40})
        anns = [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 16], "area": 320, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [10, 8, 12, 12], "area": 144, "iscrowd": 0},
        ]
        cats = [{"id": c, "name": n} for c, n in ((1, "person"), (2, "bicycle"), (3, "car"))]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )


def fake_cityscapes(root: Path) -> np.ndarray:
    label_ids = np.array([[7, 26, 0, 33]] * 4, np.uint8).repeat(8, 0).repeat(8, 1)  # (32, 32)
    for split in ("train", "val"):
        write_png(
            root / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png",
            np.zeros((32, 32, 3), np.uint8),
        )
        write_png(root / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", label_ids)
    return label_ids


def fake_ade20k(root: Path) -> np.ndarray:
    labels = np.array([[0, 1, 150, 2]], np.uint8).repeat(32, 0).repeat(8, 1)  # (32, 32)
    for sub in ("training", "validation"):
        from PIL import Image

        (root / "images" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / sub / "ADE_x_00000001.jpg")
        write_png(root / "annotations" / sub / "ADE_x_00000001.png", labels)
    return labels


@pytest.mark.parametrize(
    "task_name,env",
    [("coco-det", "SMARTBENCH_COCO"), ("ade20k-seg", "SMARTBENCH_ADE20K"), ("cityscapes-seg", "SMARTBENCH_CITYSCAPES")],
)
def test_missing_real_dataset_is_one_data_error(task_name, env, monkeypatch, tmp_path):
    monkeypatch.delenv("SMARTBENCH_DATA", raising=False)
    monkeypatch.delenv(env, raising=False)
    spec = RunSpec(task=task_name, pruner="magnitude", pattern="channel", sparsity=0.5)
    with pytest.raises(DataError, match=f"(?s){env}.*Expected layout"):
        resolve(spec)
    monkeypatch.setenv(env, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="(?s)missing .*Expected layout"):
        resolve(spec)


def first_train_sample(task):
    loader = task.dataloader("train", calibration=True)
    return loader.dataset[0]


def test_coco_by_path(monkeypatch, tmp_path):
    fake_coco(tmp_path / "coco")
    monkeypatch.delenv("SMARTBENCH_COCO", raising=False)
    monkeypatch.setenv("SMARTBENCH_DATA", str(tmp_path))  # found as $SMARTBENCH_DATA/coco
    task = tasks_registry.get_task("coco-det")
    assert task.data_root() == (tmp_path / "coco").resolve()
    cfg = task.data_config
    assert cfg.test_evaluator.ann_file == str((tmp_path / "coco" / "annotations" / "instances_val2017.json").resolve())
    sample = first_train_sample(task)
    assert sample["inputs"].shape[0] == 3
    assert sample["data_samples"].gt_instances.labels.tolist() == [0]  # category id 1 -> label 0


def test_cityscapes_label_ids_become_train_ids(monkeypatch, tmp_path):
    label_ids = fake_cityscapes(tmp_path / "cs")
    monkeypatch.setenv("SMARTBENCH_CITYSCAPES", str(tmp_path / "cs"))
    task = tasks_registry.get_task("cityscapes-seg")
    loader = task.dataloader("val")
    gt = loader.dataset[0]["data_samples"].gt_sem_seg.data[0].numpy()
    expected = np.vectorize(lambda i: CITYSCAPES_TRAIN_IDS.get(int(i), 255))(label_ids)
    from PIL import Image

    expected = np.asarray(Image.fromarray(expected.astype(np.uint8)).resize(gt.shape[::-1], Image.NEAREST))
    assert np.array_equal(gt, expected) and set(np.unique(gt)) == {0, 13, 18, 255}


def test_ade20k_by_path_reduces_zero_label(monkeypatch, tmp_path):
    fake_ade20k(tmp_path / "ADEChallengeData2016")
    monkeypatch.setenv("SMARTBENCH_ADE20K", str(tmp_path))  # parent of ADEChallengeData2016/ is accepted
    task = tasks_registry.get_task("ade20k-seg")
    gt = task.dataloader("val").dataset[0]["data_samples"].gt_sem_seg.data
    assert set(gt.unique().tolist()) == {0, 1, 149, 255}


# -- masks on mm models ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["det", "seg"])
def test_channel_mask_equals_bn_zeroed_model(family):
    """Masked model == dense copy with pruned output channels (weights, bias, BN affine) zeroed."""
    task = MICRO[family]()
    torch.manual_seed(0)
    model = task.build_model()
    model.init_weights()
    batch = task.calibration_batches()[0]
    example = {**task.preprocess(model, batch), "mode": "tensor"}
    names = find_prunable(model, task.include, task.exclude, task.keep_first_last)
    for module in model.modules():  # non-trivial BN statistics and affine terms
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.uniform_(-0.5, 0.5)
    reference = copy.deepcopy(model).eval()
    masker = Masker(model, names, parse_pattern("channel"), example)
    backbone = [layer for layer in masker.layers if layer.name.startswith("backbone.")]
    assert backbone and all(layer.batchnorm is not None for layer in backbone)
    generator = torch.Generator().manual_seed(1)
    hard = {layer.name: torch.rand(layer.unit_shape, generator=generator) < 0.5 for layer in masker.layers}
    masker.set_masks({n: m.float() for n, m in hard.items()})
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for layer in masker.layers:
            keep = hard[layer.name].float().reshape(-1)
            conv = modules[layer.name]
            conv.weight.mul_(keep[:, None, None, None])
            if conv.bias is not None:
                conv.bias.mul_(keep)
            if layer.batchnorm is not None:
                bn = modules[[n for n, m in model.named_modules() if m is layer.batchnorm][0]]
                bn.weight.mul_(keep), bn.bias.mul_(keep)
    model.eval()
    with torch.no_grad():
        got, want = model(**example), reference(**example)
    flat_got, flat_want = _flatten(got), _flatten(want)
    assert len(flat_got) == len(flat_want) > 0
    for a, b in zip(flat_got, flat_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    audit = masker.audit(hard)
    assert audit["pattern_valid"]


def _flatten(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in _flatten(item)]


# -- pruning inside the Runner ------------------------------------------------------------------


@pytest.mark.parametrize("family,pattern", [("det", "channel"), ("seg", "block:1x8")])
def test_end_to_end_row_exact_sparsity(family, pattern, shared_runs_dir, monkeypatch):
    row, run = run_row(family, "smart", pattern, shared_runs_dir, monkeypatch)
    assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"]
    assert row["metric_name"] == ("bbox_mAP" if family == "det" else "mIoU")
    for key in ("metric", "val_metric", "dense_metric", "dense_val_metric", "prune_wall_s", "weight_sparsity"):
        assert isinstance(row[key], float)
    assert 0 <= row["metric"] <= 100 and row["audit"]["total_units"] > 0
    assert not (shared_runs_dir / "mm" / run.run_id).exists()  # work dir removed after a finished run


class Recorder:
    """Wraps a pruner's hooks to record the order in which the trainer calls them."""

    HOOKS = ("attach", "param_groups", "on_step", "masks", "penalty", "after_optimizer_step", "finalize")

    def __init__(self, pruner):
        self.calls: list[str] = []
        self.results: dict[str, object] = {}
        for hook in self.HOOKS:
            original = getattr(pruner, hook)

            def wrapped(*args, _hook=hook, _original=original, **kwargs):
                self.calls.append(_hook)
                result = _original(*args, **kwargs)
                # snapshot: the optimizer's LR scheduler later edits the returned group dicts in place
                self.results[_hook] = [dict(g) for g in result] if _hook == "param_groups" else result
                if _hook == "attach":
                    self.results["initial"] = [p.detach().clone() for p in pruner.parameters()]
                return result

            setattr(pruner, hook, wrapped)


def test_hooks_called_in_order_and_scores_trained(shared_runs_dir, monkeypatch):
    monkeypatch.setenv("SMARTBENCH_RUNS", str(shared_runs_dir))
    run = resolve(
        RunSpec(task="micro-seg", pruner="smart", pattern="channel", sparsity=0.5, budget={"prune_epochs": 2})
    )
    recorder = Recorder(run.pruner)
    row = execute(run, log=lambda _m: None, store=ResultStore(shared_runs_dir / "order.jsonl"))
    iters = 2 * 2  # 16 images / batch 8, 2 pruning epochs; the fine-tune epoch calls no pruner hook
    assert recorder.calls == ["attach", "param_groups"] + [
        "on_step",
        "masks",
        "penalty",
        "after_optimizer_step",
    ] * iters + ["finalize"]
    assert row["achieved_sparsity"] == 0.5
    groups = recorder.results["param_groups"]  # the pruner's own optimizer group, trained with the weights
    assert len(groups) == 1 and groups[0]["lr"] == run.pruner.config.score_lr
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in run.pruner.parameters()]
    scores = torch.cat([p.detach().reshape(-1) for p in run.pruner.parameters()])
    initial = torch.cat([p.reshape(-1) for p in recorder.results["initial"]])
    assert scores.numel() == row["audit"]["total_units"] and torch.isfinite(scores).all()
    assert (scores - initial).abs().max() > 0


def test_resume_from_mmengine_checkpoint_weights_only(shared_runs_dir, monkeypatch):
    """Kill after the first epoch's checkpoint; the rerun resumes (weights_only=True) and ends identical,
    in the same process, with the pipeline's RandomFlip drawing from numpy's global RNG."""
    from bench.training.mm_hook import PruningHook

    options = {"update_every": 1}
    pipeline = MICRO["seg-flip"]().data_config.train_dataloader.dataset.pipeline
    assert "RandomFlip" in [t["type"] for t in pipeline]
    clean, run = run_row("seg-flip", "gmp", "channel", shared_runs_dir, monkeypatch, options=options)
    work_dir = shared_runs_dir / "mm" / run.run_id
    assert not work_dir.exists()
    original = PruningHook.before_train_epoch

    def crash(self, runner):
        if runner.epoch == 1:
            raise KeyboardInterrupt("killed")
        original(self, runner)

    store = shared_runs_dir / "killed.jsonl"
    monkeypatch.setattr(PruningHook, "before_train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        run_row("seg-flip", "gmp", "channel", shared_runs_dir, monkeypatch, options=options, store=store)
    monkeypatch.setattr(PruningHook, "before_train_epoch", original)
    checkpoint = Path((work_dir / "last_checkpoint").read_text().strip())
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint))
    assert "builtins.getattr" not in unsafe and unsafe <= {
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy._core.multiarray.scalar",
    }
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # allow-listed, not disabled
    assert state["meta"]["epoch"] == 1 and state["smartbench"]["hard"] is None
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    lines: list[str] = []
    resumed, _ = run_row(
        "seg-flip", "gmp", "channel", shared_runs_dir, monkeypatch, options=options, store=store, log=lines.append
    )
    assert "resumed after epoch 1" in lines and not any(line.startswith("prune epoch 1/") for line in lines)
    for key in ("metric", "val_metric", "achieved_sparsity", "weight_sparsity"):
        assert resumed[key] == clean[key]
    assert [r["kept_units"] for r in resumed["audit"]["layers"]] == [r["kept_units"] for r in clean["audit"]["layers"]]


@pytest.mark.parametrize(
    "dies_at, resumed_after",
    [("scratch epoch 2/", "resumed after epoch 1"), ("finetune epoch 1/", "resumed after epoch 2")],
    ids=["in-the-from-scratch-part", "in-the-fine-tuning-stage"],
)
def test_scratch_control_resumes_in_mmengine_to_the_same_numbers(shared_runs_dir, monkeypatch, dies_at, resumed_after):
    """The from-scratch control on an mm task: the dense recipe for dense + prune epochs, then the
    fine-tuning stage, killed in either part and resumed to the same numbers (dropout and RandomFlip
    draws: the checkpoint restores the global random states; without numpy's, this gave 5.61 vs
    6.77 mIoU)."""
    budget = {"finetune_epochs": 1}
    clean, run = run_row("seg-flip", "scratch", "channel", shared_runs_dir, monkeypatch, budget=budget)
    recipe = {"epochs": 2, "lr": MICRO_BUDGET.lr, "optimizer": MicroSeg.dense_optimizer, "finetune_epochs": 1}
    assert clean["trained_from_scratch"] == recipe
    assert clean["achieved_sparsity"] == 0.5 and clean["pattern_valid"]

    def die_in_epoch_two(message: str) -> None:
        if message.startswith(dies_at):
            raise KeyboardInterrupt("killed")  # logged before that epoch's checkpoint is written

    store = shared_runs_dir / f"killed-scratch-{len(dies_at)}.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_row(
            "seg-flip",
            "scratch",
            "channel",
            shared_runs_dir,
            monkeypatch,
            budget=budget,
            store=store,
            log=die_in_epoch_two,
        )
    lines: list[str] = []
    resumed, _ = run_row(
        "seg-flip", "scratch", "channel", shared_runs_dir, monkeypatch, budget=budget, store=store, log=lines.append
    )
    assert resumed_after in lines and not any(line.startswith("scratch epoch 1/") for line in lines)
    for key in ("metric", "val_metric", "achieved_sparsity"):
        assert resumed[key] == clean[key]


def test_checkpointed_random_states_load_weights_only_and_replay_the_same_draws(tmp_path):
    import random

    from bench.training.mm_hook import rng_states, set_rng_states

    random.gauss(0, 1)  # a cached second gaussian in Python's state
    np.random.randn(3)
    torch.save(rng_states(), tmp_path / "rng.pt")
    first = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), float(torch.rand(1)))
    np.random.rand(5), random.random(), torch.rand(3)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), float(torch.rand(1)))
    assert again == first


def test_every_pruner_runs_on_both_families(shared_runs_dir, monkeypatch):
    """Each registered pruner on detection and segmentation, channel and block:1x8 (one pattern per family,
    alternating), with no fine-tune epoch (finalize at the end of training)."""
    done = 0
    pruners = [(name, cls) for name, cls in sorted(load_pruners().items()) if not cls.keeps_all]  # nomask: kit
    for i, (name, cls) in enumerate(pruners):
        for j, family in enumerate(("det", "seg")):
            pattern = ("channel", "block:1x8")[(i + j) % 2]
            if parse_pattern(pattern).kind not in cls.patterns:
                continue
            row, _ = run_row(family, name, pattern, shared_runs_dir, monkeypatch, budget={"finetune_epochs": 0})
            assert row["achieved_sparsity"] == 0.5 and row["pattern_valid"], (name, family, pattern)
            done += 1
    assert done >= 4


def flat_outputs(out) -> list[torch.Tensor]:
    """Every tensor of a ``mode="tensor"`` forward (RetinaNet: per-level lists; FCN: one tensor)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in flat_outputs(item)]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["det", "seg"])
def test_mm_rows_carry_costs_and_export_and_speed_work(family, shared_runs_dir, monkeypatch, tmp_path, capsys):
    """det/seg rows come from the one pipeline: cost figures, pruner stats, a saved model; `export`
    shrinks RetinaNet / FCN physically and the shrunk model gives the masked model's outputs;
    `speed` measures the masked and shrunk variants."""
    from bench.cli.main import main
    from bench.deploy.shrink import random_like_input
    from bench.runs.export import export_run, load_exported, load_saved, pruned_model

    row, run = run_row(family, "magnitude", "channel", shared_runs_dir, monkeypatch, budget={"finetune_epochs": 0})
    assert row["achieved_sparsity"] == 0.5 and isinstance(row["pruner_stats"], dict)
    assert row["params_shrunk"] < row["params_dense"] and row["params_masked"] < row["params_dense"]
    assert 0 < row["flops_shrunk"] < row["flops_dense"] and row["flops_masked"] < row["flops_dense"]
    assert set(row["mm_metrics"]) == {"test", "val", "dense_test", "dense_val"}
    saved = load_saved(row["run_id"])
    task, masked = pruned_model(row, saved)
    summary = export_run(row["run_id"], tmp_path / "pruned.pt")
    shrunk, meta = load_exported(tmp_path / "pruned.pt")
    assert summary["shrunk_groups"] > 0 and summary["params"] == row["params_shrunk"]
    x = random_like_input(task.example_input(), seed=3)
    with torch.no_grad():
        expected, got = flat_outputs(masked(**x)), flat_outputs(shrunk(**x))
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    capsys.readouterr()
    assert main(["speed", row["run_id"], "--repeats", "2", "--warmup", "0", "--batch-sizes", "1,2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["latency"]) == {"masked_dense", "shrunk"} and set(report["latency"]["shrunk"]) == {"1", "2"}
    assert report["costs"]["params_shrunk"] == row["params_shrunk"]


def test_a_dense_model_loads_after_a_runner_closed_its_log_file(tmp_path):
    """After a Runner finished in this process, mmengine's current logger is the Runner's, its log
    file closed (FileHandler.stream None); init_weights dumps to every FileHandler of the current
    logger, so loading a dense model crashed (AttributeError: 'NoneType' object has no attribute
    'write' -- seen when a test loaded a model after a suite ran an mm cell). Closed handlers are
    dropped first, open ones kept."""
    import logging

    from mmengine.logging import MMLogger

    from bench.tasks.registry import get_task

    task = get_task("scenes-seg-tiny")
    model = task.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logger = MMLogger.get_instance(f"finished-runner-{tmp_path.name}", log_file=str(tmp_path / "run.log"))
    (closed,) = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    closed.close()
    assert closed.stream is None and MMLogger.get_current_instance() is logger
    opened = logging.FileHandler(tmp_path / "open.log")
    logger.addHandler(opened)
    fresh = task.build_model()
    task.load_dense(fresh, state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    assert closed not in logger.handlers and opened in logger.handlers
    assert "Initialization information" in (tmp_path / "open.log").read_text()
    logger.removeHandler(opened)
    opened.close()
