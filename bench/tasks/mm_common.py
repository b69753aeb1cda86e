"""Shared code of the mmdet / mmsegmentation tasks: configs, Runner training, evaluation, one run.

Configs: each task names one file in ``bench/configs/mm/``. That file holds a ``base`` key naming a
config shipped inside the mmdet / mmseg package (``"mmdet::retinanet/retinanet_r18_fpn_1x_coco.py"``
is ``<mmdet>/.mim/configs/retinanet/retinanet_r18_fpn_1x_coco.py``) and our overrides, merged on top
with mmengine's ``Config.merge_from_dict`` (``_delete_=True`` replaces a dict). Only the model,
the dataloaders and the evaluators are taken from the merged config; optimizer, LR schedule and
epochs come from the task's ``Budget`` (SGD with momentum, as in the native loop). Data roots are
bound at run time (:meth:`MMTask.data_root`): relative ``ann_file`` of evaluators are joined to it.

One run goes through the same pipeline as every task (``bench.runs.run.prune_and_measure``); this
task brings its loop (``loop = "mmengine"``): the dense model is trained once per (task, seed) by
mmengine's Runner and cached with its val/test metrics (:meth:`MMTask.train_dense`); every
pruner starts from that checkpoint and gets ``prune_epochs`` + ``finetune_epochs`` epochs of the
same Runner with :class:`bench.training.mm_hook.PruningHook` around the shared stage driver
(:meth:`MMTask.train_stages`), then is evaluated by the package's own metric.

This module imports no mm* package at import time (``bench.tasks.registry.load_tasks`` imports the
task modules even where mmdet is not installed).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import multiprocessing
import numbers
import shutil
import sys
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bench.core.artifacts import atomic_save, load_or_discard
from bench.core.errors import ConfigError, DataError
from bench.tasks.base import DenseModel, Task

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "mm"  # package data
SPLITS = ("train", "val", "test")


def quiet_stdout():
    """mm* and pycocotools print to stdout; keep stdout clean for ``smartbench run --json``."""
    return contextlib.redirect_stdout(sys.stderr)


def register_mm(scope: str) -> None:
    """Fill the mmdet / mmseg registries (and ours: transforms, hook, optim wrapper)."""
    if scope == "mmdet":
        from mmdet.utils import register_all_modules
    elif scope == "mmseg":
        from mmseg.utils import register_all_modules
    else:
        raise ValueError(scope)
    register_all_modules(init_default_scope=False)
    from mmengine.logging import MMLogger

    if not MMLogger.check_instance_created("smartbench"):  # current logger: INFO chatter (init_weights...) off
        with quiet_stdout():
            MMLogger.get_instance("smartbench", log_level="ERROR")
    from mmengine.registry import DATA_SAMPLERS, MODEL_WRAPPERS

    import bench.training.mm_hook  # noqa: F401  (registers PruningHook, EpochLogHook, PenaltyOptimWrapper)

    for registry, module in ((DATA_SAMPLERS, WholeSampler), (MODEL_WRAPPERS, RankDDP)):  # defined below
        if registry.get(module.__name__) is None:
            registry.register_module(module=module)


def init_weights(model: nn.Module) -> None:
    """``model.init_weights()``, safe after a Runner has finished in this process: mmengine dumps the
    init info to every FileHandler of the *current* logger, which is then the finished Runner's,
    whose log file is closed (``stream`` None: AttributeError). Closed file handlers are dropped
    from it first; they write nothing more anyway."""
    from logging import FileHandler

    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    for handler in list(logger.handlers):
        if isinstance(handler, FileHandler) and handler.stream is None:
            logger.removeHandler(handler)
    model.init_weights()


def package_config(ref: str) -> Path:
    """``"mmdet::retinanet/x.py"`` -> the file shipped in the installed package."""
    package, sep, relative = ref.partition("::")
    spec = importlib.util.find_spec(package) if sep else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("base", f"expected '<mmdet|mmseg>::<path in the package's configs>', got {ref!r}")
    path = Path(spec.submodule_search_locations[0]) / ".mim" / "configs" / relative
    if not path.is_file():
        raise ConfigError("base", f"{ref!r}: no such config in the installed {package} ({path})")
    return path


def load_config(name: str):
    """Our ``bench/configs/mm/<name>`` merged onto the package config it names as ``base``."""
    from mmengine.config import Config

    ours = Config.fromfile(CONFIG_DIR / name).to_dict()
    cfg = Config.fromfile(package_config(ours.pop("base")))
    cfg.merge_from_dict(ours)
    return cfg


def bind_data_root(cfg, root: Path) -> None:
    """Point every dataloader at ``root`` and make evaluator ``ann_file`` paths absolute."""
    for split in SPLITS:
        cfg[f"{split}_dataloader"]["dataset"]["data_root"] = str(root)
    for split in ("val", "test"):
        evaluator = cfg[f"{split}_evaluator"]
        if evaluator.get("ann_file"):
            evaluator["ann_file"] = str(root / evaluator["ann_file"])


def check_epoch_sampler(cfg, scope: str, config_name: str) -> None:
    """ConfigError for a train sampler that never ends an epoch (mmengine's ``InfiniteSampler``, as in
    mmseg's packaged iteration-based configs): our Runner counts epochs (``EpochBasedTrainLoop``),
    so an infinite sampler would train the first epoch until the job is killed."""
    from mmengine.dataset import InfiniteSampler
    from mmengine.registry import DATA_SAMPLERS, DefaultScope

    sampler = cfg.train_dataloader.get("sampler") or {}
    kind = sampler.get("type", "DefaultSampler")
    with DefaultScope.overwrite_default_scope(scope):
        cls = kind if isinstance(kind, type) else DATA_SAMPLERS.get(kind)
    if cls is None:
        raise ConfigError(f"{config_name}: train_dataloader.sampler.type", f"unknown sampler {kind!r}")
    if issubclass(cls, InfiniteSampler) or "Infinite" in cls.__name__:
        raise ConfigError(
            f"{config_name}: train_dataloader.sampler",
            f"{cls.__name__} never ends an epoch and the training loop is epoch-based; "
            "use dict(type='DefaultSampler', shuffle=True)",
        )


class MMTask(Task):
    """A task trained by mmengine's Runner on a config from ``bench/configs/mm``."""

    scope: ClassVar[str] = ""  # "mmdet" | "mmseg"
    config_name: ClassVar[str] = ""  # file in bench/configs/mm
    metric_key: ClassVar[str] = ""  # key in the mm evaluator's result dict
    metric_scale: ClassVar[float] = 1.0  # applied to metric_key's value (det: x100 -> percent)
    image_size: ClassVar[tuple[int, int]] = (64, 64)  # (H, W) of example_input
    warmup_iters: ClassVar[int] = 100  # linear LR warm-up of dense training
    clip_grad: ClassVar[dict | None] = dict(max_norm=35, norm_type=2)  # dense training only
    loop: ClassVar[str] = "mmengine"
    # DDP ranks (bench.suites.launch under torchrun sets it): > 1, the Runner trains distributed in the
    # process group the launcher made, each rank on its DefaultSampler shard at batch_size / world
    # (the same global batch as one process), the model in MMDistributedDataParallel
    world: int = 1
    reports_all_metrics: ClassVar[bool] = True
    # changes of the config's model made by a task variant (dotted keys, e.g. a narrower backbone);
    # part of the identity when not empty
    model_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: str | None = None, data: str | None = None):
        super().__init__(model, data)
        if self.model_name != self.default_model:
            raise ConfigError(
                "model",
                f"task '{self.name}' has one model, '{self.default_model}' (bench/configs/mm/{self.config_name})",
            )

    # -- data (subclasses) -----------------------------------------------------------------
    def data_root(self) -> Path:
        raise NotImplementedError

    def data_identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def adjust_config(self, cfg) -> None:
        """Task-specific changes of the merged config that need no data (e.g. image size)."""

    def bind_data(self, cfg) -> None:
        """Fill the data-dependent parts of the merged config (roots; subclasses add class names)."""
        bind_data_root(cfg, self.data_root())

    def register(self) -> None:
        """Fill the registries this task's config needs."""
        register_mm(self.scope)

    # -- config and model --------------------------------------------------------------------
    @cached_property
    def config(self):
        """The merged config without data roots (enough to build the model)."""
        with quiet_stdout():
            self.register()
            cfg = load_config(self.config_name)
            if self.model_overrides:
                cfg.merge_from_dict({f"model.{key}": value for key, value in self.model_overrides.items()})
            self.adjust_config(cfg)
            check_epoch_sampler(cfg, self.scope, self.config_name)
            return cfg

    @cached_property
    def data_config(self):
        """The merged config bound to the data root, with the task's batch size."""
        cfg = copy.deepcopy(self.config)
        self.bind_data(cfg)
        cfg.train_dataloader.batch_size = self.budget.batch_size
        return cfg

    def identity(self) -> dict[str, Any]:
        text = (CONFIG_DIR / self.config_name).read_bytes()
        config = {"file": self.config_name, "sha256": hashlib.sha256(text).hexdigest()[:16]}
        dense = {"warmup_iters": self.warmup_iters, "clip_grad": self.clip_grad}  # the optimizer: Task.identity
        if self.model_overrides:
            config["model_overrides"] = self.model_overrides
        return {**super().identity(), "config": config, "data": self.data_identity(), "dense": dense}

    def classes(self) -> tuple[str, ...]:
        """The class names of the train dataset: its config's ``metainfo``, else its class's METAINFO."""
        from mmengine.registry import DefaultScope

        dataset = self.config.train_dataloader.dataset
        if dataset.get("metainfo") and dataset.metainfo.get("classes"):
            return tuple(dataset.metainfo["classes"])
        registry = importlib.import_module(f"{self.scope}.registry")
        with DefaultScope.overwrite_default_scope(self.scope):
            return tuple(registry.DATASETS.get(dataset.type).METAINFO["classes"])

    def build_model(self) -> nn.Module:
        from mmengine.registry import DefaultScope

        registry = importlib.import_module(f"{self.scope}.registry")
        with quiet_stdout(), DefaultScope.overwrite_default_scope(self.scope):
            return registry.MODELS.build(copy.deepcopy(self.config.model))

    def example_input(self) -> dict:
        """Keyword arguments of ``model(**x)`` for one preprocessed batch of two blank images."""
        return {"inputs": torch.zeros(2, 3, *self.image_size), "mode": "tensor"}

    def quiet(self):
        return quiet_stdout()

    def load_dense(self, model: nn.Module, state: dict) -> None:
        init_weights(model)  # marks the model initialised, so the Runner does not re-initialise it
        model.load_state_dict(state)

    def initialise(self, model: nn.Module) -> None:
        with quiet_stdout():
            init_weights(model)  # what the Runner would do at its first train(); it then skips it

    def masker_example(self, model: nn.Module, calibration: list) -> dict:
        return {**self.preprocess(model, calibration[0]), "mode": "tensor"}

    # -- data loading ---------------------------------------------------------------------------
    def dataloader(self, split: str, seed: int = 0, calibration: bool = False):
        """mmengine dataloader of ``split``; ``calibration``: train images, test pipeline, no shuffle,
        and the same batches on every DDP rank (:class:`WholeSampler`: a pruner's calibration statistics
        must not depend on the rank). Evaluation keeps the config's sampler: under DDP each rank reads
        its shard and mmengine's Evaluator gathers the results in order, as in its own distributed test."""
        from mmengine.registry import DefaultScope
        from mmengine.runner import Runner

        cfg = copy.deepcopy(self.data_config[f"{split}_dataloader"])
        if calibration:
            cfg.dataset.pipeline = copy.deepcopy(self.data_config.test_dataloader.dataset.pipeline)
            cfg.sampler = dict(type="WholeSampler")  # in order; on one process what DefaultSampler(shuffle=False) gives
            cfg.pop("batch_sampler", None)
        with DefaultScope.overwrite_default_scope(self.scope):
            return Runner.build_dataloader(cfg, seed=seed)

    def calibration_batches(self) -> list:
        batches = []
        for batch in self.dataloader("train", calibration=True):
            batches.append(batch)
            if len(batches) == self.budget.calib_batches:
                break
        return batches

    @staticmethod
    def preprocess(model: nn.Module, batch) -> dict:
        return model.data_preprocessor(batch, False)

    def forward(self, model: nn.Module, batch):
        return model(**self.preprocess(model, batch), mode="tensor")

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_all(self, model: nn.Module, split: str) -> dict[str, float]:
        """Every number the split's mm evaluator reports."""
        from mmengine.evaluator import Evaluator
        from mmengine.registry import DefaultScope

        loader = self.dataloader(split)
        was_training = model.training
        model.eval()
        with quiet_stdout(), DefaultScope.overwrite_default_scope(self.scope):
            evaluator = Evaluator(copy.deepcopy(self.data_config[f"{split}_evaluator"]))
            evaluator.dataset_meta = loader.dataset.metainfo
            for batch in loader:
                evaluator.process(data_samples=model.test_step(batch), data_batch=batch)
            results = evaluator.evaluate(len(loader.dataset))
        model.train(was_training)
        return {k: round(float(v), 4) for k, v in results.items() if isinstance(v, numbers.Real)}  # numpy floats too

    def evaluate(self, model: nn.Module, split: str = "test") -> float:
        return self.metric_of(self.evaluate_all(model, split))

    def metric_of(self, results: dict[str, float]) -> float:
        return round(results[self.metric_key] * self.metric_scale, 4)

    # -- training ---------------------------------------------------------------------------------
    def runner(
        self,
        model: nn.Module,
        work_dir: Path,
        epochs: int,
        optim_wrapper,
        param_scheduler: list[dict],
        seed: int,
        hooks: list,
        resume: bool,
        checkpoints: bool,
        name: str,
    ):
        from mmengine.runner import Runner

        # keep the process's multiprocessing start method (mmengine would force "fork", with a warning,
        # inside the suite's spawned workers); dist_cfg is mmengine's default
        start_method = multiprocessing.get_start_method(allow_none=True) or "fork"
        env_cfg = dict(mp_cfg=dict(mp_start_method=start_method), dist_cfg=dict(backend="nccl"))
        train_dataloader = copy.deepcopy(self.data_config.train_dataloader)
        distributed = self.world > 1
        if distributed:  # the process group exists (bench.suites.launch); mmengine does not init it again
            if train_dataloader.batch_size % self.world:
                raise ConfigError(
                    "--nproc",
                    f"task {self.name}'s batch size {train_dataloader.batch_size} does not split over "
                    f"{self.world} ranks; allowed: a divisor of it",
                )
            train_dataloader.batch_size //= self.world
        default_hooks = dict(
            logger=dict(type="LoggerHook", interval=50),
            checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=1) if checkpoints else None,
        )
        runner = Runner(
            model=model,
            work_dir=str(work_dir),
            experiment_name=name,
            train_dataloader=train_dataloader,
            train_cfg=dict(by_epoch=True, max_epochs=epochs, val_interval=epochs + 1),
            optim_wrapper=optim_wrapper,
            param_scheduler=param_scheduler,
            default_hooks=default_hooks,
            custom_hooks=hooks,
            randomness=dict(seed=seed),
            default_scope=self.scope,
            log_level="ERROR",
            resume=resume,
            env_cfg=env_cfg,
            launcher="pytorch" if distributed else "none",
            cfg=dict(model_wrapper_cfg=dict(type="RankDDP")) if distributed else None,  # read in wrap_model
        )
        runner.model.to(self.device)  # mmengine moves it to its own default (CUDA when present)
        return runner

    def dense_optimizer_cfg(self, lr: float | None = None) -> dict:
        b = self.budget
        lr = b.lr if lr is None else lr
        if self.dense_optimizer == "SGD":
            return dict(type="SGD", lr=lr, momentum=b.momentum, weight_decay=b.weight_decay)
        return dict(type=self.dense_optimizer, lr=lr, weight_decay=self.dense_weight_decay)

    def train_dense(self, seed: int, path: Path, log: Callable[[str], None]) -> DenseModel:
        """Train (or load) the dense model of (task, seed); the cache holds ``{"model", "val", "test", "train_s"}``."""
        from bench.training.train import cpu_state, seed_everything

        cached = load_or_discard(path, "dense checkpoint", log)
        if cached is not None:
            return DenseModel(cached["model"], {"val": cached["val"], "test": cached["test"]})
        seed_everything(seed)
        model = self.build_model()
        work_dir = path.with_suffix(".work")
        started = time.perf_counter()
        self.fit_dense(model, self.budget.dense_epochs, seed, work_dir, log, resume=True)  # epoch checkpoints
        train_s = round(time.perf_counter() - started, 1)
        log(f"dense training of {self.name} (seed {seed}): {train_s} s")
        dense = {
            "model": cpu_state(model),
            "val": self.evaluate_all(model, "val"),
            "test": self.evaluate_all(model, "test"),
            "train_s": train_s,
        }
        atomic_save(dense, path)
        shutil.rmtree(work_dir, ignore_errors=True)
        return DenseModel(dense["model"], {"val": dense["val"], "test": dense["test"]})

    def fit_dense(
        self,
        model: nn.Module,
        epochs: int,
        seed: int,
        work_dir: Path,
        log: Callable[[str], None],
        lr: float | None = None,
        resume: bool = False,
        stage: str = "dense",
        on_epoch: Callable[[int], None] | None = None,
    ) -> None:
        """Train ``model`` with the task's dense recipe (its optimizer at peak ``lr``, default
        Budget.lr; linear warm-up; cosine over ``epochs``; gradient clipping) in mmengine's Runner,
        resumable from ``work_dir`` when ``resume``. Masks installed in the model stay applied
        (the from-scratch control, bench.runs.run). ``on_epoch(epochs_done)`` is called after every
        epoch (the Runner puts the model back in train mode at the next epoch's start)."""
        from bench.training.mm_hook import EpochLogHook, SafeCheckpointHook

        optim_wrapper = dict(
            type="PenaltyOptimWrapper",  # no penalty in dense training: the bf16 autocast of --amp
            clip_grad=self.clip_grad,
            optimizer=self.dense_optimizer_cfg(lr),
            autocast_device=str(self.device) if self.amp else None,
        )
        schedule = [
            dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=self.warmup_iters),
            cosine_schedule(epochs),
        ]
        if resume:
            from bench.training.mm_hook import discard_unreadable_checkpoint

            discard_unreadable_checkpoint(work_dir, log)
        with quiet_stdout():
            runner = self.runner(
                model,
                work_dir,
                epochs,
                optim_wrapper,
                schedule,
                seed,
                [EpochLogHook(log, stage, epochs, on_epoch)] + ([SafeCheckpointHook(log)] if resume else []),
                resume=resume,
                checkpoints=resume,
                name=f"{self.name}-{stage}-{seed}-{time.time_ns()}",
            )
            runner.train()

    def train_stages(self, model: nn.Module, driver, seed: int, work_dir: Path, log: Callable[[str], None]) -> dict:
        """The pruning + fine-tuning stages in mmengine's Runner (resumable from ``work_dir``); returns the hard masks."""
        from bench.training.mm_hook import PruningHook, discard_unreadable_checkpoint

        b = self.budget
        own = b.finetune_schedule != "shared"  # the hook sets the lr (set_stage_lr, as native)
        hook = PruningHook(driver, b if own else None)
        autocast_device = str(self.device) if self.amp else None
        optim_wrapper = hook.optim_wrapper(model, self, autocast_device=autocast_device)  # no clipping, as native
        discard_unreadable_checkpoint(work_dir, log)
        with quiet_stdout():
            runner = self.runner(
                model,
                work_dir,
                driver.epochs,
                optim_wrapper,
                [] if own else [cosine_schedule(driver.epochs)],
                seed,
                [hook],
                resume=True,
                checkpoints=True,
                name=f"{work_dir.name}-{time.time_ns()}",
            )
            runner.train()
        return driver.finish()


class RankDDP:
    """mmengine model wrapper (``model_wrapper_cfg=dict(type="RankDDP")``): MMDistributedDataParallel
    on the model's own device -- ``device_ids`` of its CUDA device, None on the CPU (gloo). mmengine's
    default passes ``device_ids=[LOCAL_RANK]`` to every DDP subclass, which torch refuses for a CPU
    module; this is not a DDP subclass, so mmengine passes only the module."""

    def __new__(cls, module: nn.Module, **kwargs):
        from mmengine.model import MMDistributedDataParallel

        device = next(module.parameters()).device
        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        # broadcast_buffers (torch's default, mmengine's is False): every forward takes rank 0's BatchNorm
        # buffers, as the native loop's DDP does, so evaluation and the masks see one model on every rank
        return MMDistributedDataParallel(module=module, device_ids=ids, broadcast_buffers=True, **kwargs)


class WholeSampler(torch.utils.data.Sampler):
    """Every index of the dataset in order, on every DDP rank (mmengine ``DATA_SAMPLERS``: calibration
    batches). mmengine's ``DefaultSampler`` gives each rank its shard once a process group exists; on
    one process (``round_up``, world size 1) it yields exactly this."""

    def __init__(self, dataset, seed: int | None = None):
        super().__init__()
        self.size = len(dataset)

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


def cosine_schedule(epochs: int) -> dict:
    """Cosine from the optimizer's lr to 0 over ``epochs``, stepped every iteration."""
    return dict(
        type="CosineAnnealingLR",
        by_epoch=True,
        begin=0,
        end=epochs,
        T_max=epochs,
        eta_min=0.0,
        convert_to_iter_based=True,
    )


def require_path(env_var: str, data_env: str, subdir: str, name: str, tree: str) -> Path:
    """A user's dataset folder from ``$env_var`` or ``$data_env/<subdir>``; DataError if unset."""
    import os

    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    if os.environ.get(data_env) and (Path(os.environ[data_env]) / subdir).is_dir():
        return Path(os.environ[data_env]) / subdir
    raise DataError(
        f"{name} not found: set {env_var}=/path/to/{subdir} (or {data_env} to a folder holding {subdir}/).\n"
        f"Expected layout:\n{tree}"
    )


def layout_fingerprint(root: Path, paths: list[str]) -> str:
    """Cheap identity of a user's dataset copy: size of each named file, entry count of each folder."""
    import os

    def size(path: Path) -> int:
        return sum(1 for _ in os.scandir(path)) if path.is_dir() else path.stat().st_size

    listing = [f"{name}:{size(root / name)}" for name in paths]
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]
