"""The training loop: mixed data, masked multi-task losses, task weighting, checkpoints and exact resume.

Reproducibility is by construction: batches depend on (seed, epoch), each sample's augmentation on
(seed, epoch, step, slot), the learning rate on the global step, and a checkpoint holds everything else
(weights, optimiser, weighting, early stopping, torch RNG), so a run killed at any point and restarted
ends with the same weights as an uninterrupted one (on the CPU, same thread count). Checkpoints are
atomic, checksummed, and the previous one is kept: a corrupt or partial file falls back to it. Under
``torchrun`` it runs DistributedDataParallel (gloo on the CPU, nccl on GPUs), each rank on its own shard;
rank 0 alone validates, logs and writes files. On CUDA it trains in mixed precision.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data import data_root
from ..data.landmark_cache import default_cache_dir
from ..data.mixed import SOURCES, FaceTable, MultiTaskDataset, TableSpec, attribute_balance, build_table, collate
from ..data.pairs import MultiTaskBatchSampler
from ..data.transforms import AugmentConfig
from ..device import resolve_device
from ..errors import CheckpointError, ConfigError, FacemtlError, WeightsError
from .gradients import flat_task_grads, gradient_cosines, pcgrad_backward
from ..model.multitask import TASK_OUTPUT, MultiTaskNet
from ..model.transfer import Transfer, init_from
from ..serialization import atomic_write_bytes, load_file, save_file
from .weighting import TaskEarlyStopping, build_weighting
from .config import RunConfig
from .losses import KEPT_OUTPUTS, keep_loss, task_losses
from .teacher import training_targets
from .validation import ValidationSet, validate, with_features

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "facemtl-checkpoint"
CHECKPOINT_VERSION = 1
PAIR_ID_OFFSET = 10_000_000
RUNTIME_SETTINGS = frozenset({"threads", "num_workers", "device", "nan_patience", "checkpoint_every"})
"""Train settings that do not change the result, so a run may resume with different values."""


class TrainingError(FacemtlError):
    """Training cannot go on (e.g. the loss stayed NaN for too many steps)."""


def table_specs(cfg: RunConfig) -> dict[str, TableSpec | None]:
    """The crop tables a run trains ("train") and validates on ("val": CelebA val, None without CelebA; "age":
    UTKFace val, None without UTKFace)."""
    d, m = cfg.data, cfg.model
    root = d.root or str(data_root())
    return {"train": TableSpec(root, "train" if d.celeba else None, "train" if d.wild else None,
                               "training" if d.mtfl else None, m.input_size, d.padding, d.limit,
                               "train" if d.utkface else None),
            "val": TableSpec(root, "val", None, None, m.input_size, d.padding, d.limit) if d.celeba else None,
            "age": TableSpec(root, None, None, None, m.input_size, d.padding, d.limit, "val") if d.utkface else None}


def sample_seed(seed: int, epoch: int, step: int, slot: int) -> int:
    """The augmentation seed of one sample of one batch: a pure function of its position in the run."""
    return int(np.random.SeedSequence([seed, epoch, step, slot]).generate_state(1)[0])


class BatchList(torch.utils.data.Dataset):
    """The batches of one epoch as a dataset of collated batches (so a DataLoader can prefetch them)."""

    def __init__(self, dataset: MultiTaskDataset, batches: list[np.ndarray], seed: int, epoch: int,
                 table: FaceTable, mtfl_verification: str) -> None:
        self.dataset, self.batches, self.seed, self.epoch = dataset, batches, seed, epoch
        self.table, self.mode = table, mtfl_verification

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = self.batches[step]
        images, tg = collate([self.dataset.get(int(i), sample_seed(self.seed, self.epoch, step, k))
                              for k, i in enumerate(idx)])
        has_id = tg["identity_mask"]
        if self.mode == "off":
            tg["pair_id"], tg["pair_mask"] = tg["identity"], has_id
        else:
            tg["pair_id"] = torch.where(has_id, tg["identity"], PAIR_ID_OFFSET + tg["index"])
            tg["pair_mask"] = torch.ones_like(has_id)
        return images, tg


def _worker_init(_: int) -> None:
    """Keep data workers on one torch thread (OpenCV's pool is left alone: it is not fork-safe)."""
    torch.set_num_threads(1)


class Trainer:
    """One training run described by a RunConfig; ``run()`` trains, resuming if a checkpoint exists."""

    def __init__(self, cfg: RunConfig, reschedule: bool = False) -> None:
        self.cfg = cfg
        self.reschedule = reschedule
        self.reschedules: list[dict[str, int]] = []
        self.out = Path(cfg.out_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = self.world > 1
        self.device = self._setup_device()
        self.rank = dist.get_rank() if self.distributed else 0
        self.main = self.rank == 0
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self._setup_data()
        self._setup_model()
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.cosines: list[dict[str, Any]] = []
        self.nan_streak = 0
        self.wall = 0.0
        self.feature_cache: dict[int, list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]] = {}

    # ---------------------------------------------------------------- setup
    def _setup_device(self) -> torch.device:
        device = resolve_device(self.cfg.train.device)
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        if device.type == "cuda" and self.distributed:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        return device

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _setup_data(self) -> None:
        d, m = self.cfg.data, self.cfg.model
        cache = default_cache_dir(d.cache_dir)
        specs = table_specs(self.cfg)
        tables = {}
        for turn in ("main", "others"):  # rank 0 builds the caches, the others then read them
            if (turn == "main") == self.main:
                tables = {name: build_table(spec, cache, progress=self.main) if spec else None
                          for name, spec in specs.items()}
            self._barrier()
        full = tables["train"]
        train_idx, holdout = holdout_split(full, d.mtfl_val_fraction, d.identity_val_per_id, self.cfg.train.seed)
        self.table = full
        self.train_idx = train_idx
        self.num_identities = len(full.identity_names)
        targets = training_targets(specs["train"], cache, full, d.teacher, d.teacher_sources) if d.teacher else None
        weights = (attribute_balance(full, train_idx, m.attribute_names, self.cfg.train.balanced_attributes)
                   if self.cfg.train.balanced_attributes else None)
        self.dataset = MultiTaskDataset(full, m.input_size, self.cfg.augment, targets, weights)
        plan = replace(self.cfg.train.plan, views=2 if d.mtfl_verification == "views" else 1)
        self.sampler = MultiTaskBatchSampler(full.identity, plan, self.cfg.train.seed, self.rank, self.world,
                                             indices=train_idx)
        jitter = AugmentConfig(rotate=self.cfg.augment.rotate, scale=self.cfg.augment.scale,
                               shift=self.cfg.augment.shift, flip=0.0, color=0.0, gray=0.0, degrade=0.0)
        plain = MultiTaskDataset(full, m.input_size, None)
        self.val_sets: dict[str, ValidationSet] = {}
        if len(holdout["identity"]):
            self.val_sets["identity"] = ValidationSet(plain, holdout["identity"])
        if len(holdout["mtfl"]):
            self.val_sets["landmarks"] = ValidationSet(MultiTaskDataset(full, m.input_size, jitter),
                                                       holdout["mtfl"])
        if tables["val"] is not None:
            val = tables["val"]
            vset = ValidationSet(MultiTaskDataset(val, m.input_size, None), np.arange(len(val)))
            self.val_sets["verification"] = vset
            self.val_sets["attributes"] = vset
        if tables["age"] is not None:
            self.val_sets["age"] = ValidationSet(MultiTaskDataset(tables["age"], m.input_size, None),
                                                 np.arange(len(tables["age"])))

    def _setup_model(self) -> None:
        cfg = self.cfg
        mcfg = cfg.model
        if "identity" in mcfg.tasks:
            mcfg.num_identities = self.num_identities
        torch.manual_seed(cfg.train.seed)   # here, not earlier: building the tables may draw from torch's RNG
        self.model = MultiTaskNet(mcfg).to(self.device)
        self.init_record: dict[str, Any] | None = None
        self.weighting = build_weighting(cfg.train.weighting, cfg.weighted_tasks(),
                                         **cfg.train.weighting_options).to(self.device)
        self.stopper = (TaskEarlyStopping(cfg.train.task_early_stopping) if cfg.train.task_early_stopping else None)
        if cfg.train.train_only:
            self.model.requires_grad_(False)
            for head in self._learning_heads():
                head.requires_grad_(True)
        special = [p for p in self.model.sharing.special_parameters() if p.requires_grad]
        special_ids = {id(p) for p in special}
        decay, no_decay = [], []
        for p in self.model.parameters():
            if id(p) in special_ids or not p.requires_grad:
                continue
            (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.train.weight_decay, "lr_scale": 1.0},
                  {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
        if special:
            scale = cfg.train.cross_stitch_lr / cfg.train.lr if cfg.train.cross_stitch_lr > 0 else 1.0
            groups.append({"params": special, "weight_decay": 0.0, "lr_scale": scale})
        weighting_params = list(self.weighting.parameters())
        if weighting_params:
            groups.append({"params": weighting_params, "weight_decay": 0.0, "lr_scale": 1.0})
        if cfg.train.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr)
        self.amp = cfg.train.amp == "on" or (cfg.train.amp == "auto" and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")
        wrap = self.distributed and not cfg.train.feature_epochs      # cached features: gradients averaged by hand
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                            else None) if wrap else self.model)
        self.pcgrad_gen = torch.Generator().manual_seed(cfg.train.seed)

    # ---------------------------------------------------------------- schedule
    @property
    def steps_per_epoch(self) -> int:
        n = len(self.sampler)
        return min(n, self.cfg.train.steps_per_epoch) if self.cfg.train.steps_per_epoch > 0 else n

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 1% of the base rate (a pure function of the step)."""
        t = self.cfg.train
        total = max(1, t.epochs * self.steps_per_epoch)
        warm = max(1, int(t.warmup_epochs * self.steps_per_epoch))
        if step < warm:
            return t.lr * (0.1 + 0.9 * step / warm)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return t.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "weighting": self.weighting.state_dict(),
            "stopper": self.stopper.state_dict() if self.stopper else {},
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
            "global_step": self.global_step, "torch_rng": torch.get_rng_state(),
            "pcgrad_rng": self.pcgrad_gen.get_state(), "history": json.dumps(self.history),
            "cosines": json.dumps(self.cosines), "nan_streak": self.nan_streak, "wall": self.wall,
            "world": self.world, "reschedules": json.dumps(self.reschedules),
            "init": json.dumps(self.init_record),
        }

    def save_checkpoint(self) -> None:
        """Atomically write the checkpoint, keeping the previous one as ``checkpoint.prev.pt``."""
        if not self.main:
            return
        buf_path = self.out / "checkpoint.next.pt"
        save_file(self._state(), buf_path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
        if self.checkpoint_path.exists():
            os.replace(self.checkpoint_path, self.out / "checkpoint.prev.pt")
        os.replace(buf_path, self.checkpoint_path)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        """The newest intact checkpoint (current, else previous, else None); corrupt ones are reported."""
        for path in (self.checkpoint_path, self.out / "checkpoint.next.pt", self.out / "checkpoint.prev.pt"):
            if not path.exists():
                continue
            try:
                state = load_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
            except WeightsError as exc:
                log.warning("ignoring unusable checkpoint %s: %s", path, exc)
                if self.main:
                    print(f"warning: {exc}; trying an older checkpoint", flush=True)
                continue
            return state
        return None

    def resume(self) -> bool:
        """Restore the newest intact checkpoint; False when starting fresh."""
        state = self._load_checkpoint()
        if state is None:
            return False
        if state.get("world", 1) != self.world:
            raise CheckpointError(f"{self.out}: checkpoint was written by a run of {state['world']} process(es); "
                                  f"resume it with the same number")
        saved = state["config"]
        ignore = {"epochs"} if self.reschedule else set()
        if saved["model"] != asdict(self.cfg.model) or _result_settings(saved["train"], ignore) != _result_settings(
                asdict(self.cfg.train), ignore):
            raise CheckpointError(f"{self.out}: the checkpoint belongs to a run with a different config; "
                                  "use another out_dir or the original config")
        self.reschedules = json.loads(state.get("reschedules", "[]"))
        self.init_record = json.loads(state.get("init", "null"))
        if saved["train"]["epochs"] != self.cfg.train.epochs:
            self.reschedules.append({"at_epoch": int(state["epoch"]), "from_epochs": int(saved["train"]["epochs"]),
                                     "to_epochs": self.cfg.train.epochs})
            if self.main:
                print(f"rescheduled: {saved['train']['epochs']} -> {self.cfg.train.epochs} epochs at epoch "
                      f"{state['epoch']} (the cosine learning rate follows the new length from here)", flush=True)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.weighting.load_state_dict(state["weighting"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.out}: checkpoint does not fit this model: {exc}") from None
        if self.stopper:
            self.stopper.load_state_dict(state["stopper"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        torch.set_rng_state(state["torch_rng"])
        self.pcgrad_gen.set_state(state["pcgrad_rng"])
        self.history = json.loads(state["history"])
        self.cosines = json.loads(state["cosines"])
        self.nan_streak, self.wall = state["nan_streak"], state["wall"]
        return True

    def _start_from(self, path: str) -> Transfer:
        """Fine-tuning: copy a model file's weights into the fresh network (every process alike, in place, so
        the optimiser and DDP keep the same tensors) and remember what was done for the model's metadata."""
        transfer = init_from(self.model, path, self.table.identity_names)
        self.init_record = transfer.to_dict()
        return transfer

    def _set_keeper(self) -> None:
        """The frozen init model whose landmark, attribute and pose outputs the ``keep`` task holds (only the
        heads it really had: a head left fresh by the transfer has nothing to keep)."""
        keeper = MultiTaskNet(self.cfg.model).to(self.device)
        fresh = init_from(keeper, self.cfg.train.init, self.table.identity_names).fresh
        self.kept = [h for h in KEPT_OUTPUTS if h in self.cfg.model.tasks
                     and not any(name.startswith(f"heads.{h}.") for name in fresh)]
        if not self.kept:
            raise ConfigError(f"train.keep_init: {self.cfg.train.init} has none of {KEPT_OUTPUTS} to keep")
        keeper.requires_grad_(False)
        self.keeper = batch_statistics_mode(keeper).to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------- training
    def run(self) -> Path | None:
        """Train to the configured number of epochs; returns the final model path (None on the processes
        other than the first under torchrun, which write nothing)."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        resumed = self.resume()
        transfer = None if resumed or not self.cfg.train.init else self._start_from(self.cfg.train.init)
        if self.cfg.train.keep_init:
            self._set_keeper()
        if self.cfg.train.feature_epochs and self.main:
            self._train_mode()
            self.val_sets = self._cached_val_sets()
        if self.main:
            print(f"facemtl train: {len(self.train_idx)} training samples "
                  f"({', '.join(f'{SOURCES[s]} {int((self.table.source[self.train_idx] == s).sum())}' for s in range(len(SOURCES)) if (self.table.source == s).any())}), "
                  f"{self.num_identities} identities, {self.steps_per_epoch} steps/epoch x {self.cfg.train.epochs}, "
                  f"batch {self.sampler.plan.batch_size} x {self.world} process(es), device {self.device}"
                  + (f"; resumed at epoch {self.epoch} step {self.step}" if resumed else ""), flush=True)
            if transfer:
                print(f"started from {self.cfg.train.init} ({transfer.source}): {len(transfer.copied)} "
                      f"tensors copied; fresh: {', '.join(transfer.fresh) or 'none'}", flush=True)
        if not resumed and self.main:
            metrics, vlosses = validate(self.model, self.val_sets, self.device, self.cfg.train.verification_margin)
            self.history.append({"epoch": 0, **{f"val_{k}": v for k, v in metrics.items()},
                                 **{f"valloss_{k}": v for k, v in vlosses.items()}})
            self._write_logs()
        while self.epoch < self.cfg.train.epochs:
            self._train_epoch()
        path = self.out / "model.pt"
        if self.main:
            self.model.save(path, meta=self._meta())
            self._write_logs(final=True)
        self._barrier()
        return path if self.main else None

    def _loader(self, batches: list[np.ndarray], epoch: int, start: int
                ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        data = BatchList(self.dataset, batches, self.cfg.train.seed, epoch, self.table,
                         self.cfg.data.mtfl_verification)
        steps = list(range(start, len(batches)))
        if self.cfg.train.num_workers == 0:
            return (data[s] for s in steps)
        return iter(torch.utils.data.DataLoader(data, batch_size=None, sampler=steps,
                                                num_workers=self.cfg.train.num_workers,
                                                worker_init_fn=_worker_init, prefetch_factor=4))

    def _train_epoch(self) -> None:
        batches = self.sampler.epoch_batches(self.epoch)[:self.steps_per_epoch]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        start_time, samples = time.perf_counter(), 0
        epoch_start = time.perf_counter()
        bar = tqdm(total=len(batches), initial=self.step, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.main, dynamic_ncols=True, unit="step")
        self._train_mode()
        inputs = (self._cached_batches(len(batches)) if self.cfg.train.feature_epochs
                  else self._loader(batches, self.epoch, self.step))
        for images, tg in inputs:
            losses = self._train_step(images, tg)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            samples += len(tg["pair_id"]) * self.world
            self.step += 1
            self.global_step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
            if self.global_step % self.cfg.train.checkpoint_every == 0:
                self.wall += time.perf_counter() - start_time
                start_time = time.perf_counter()
                self.save_checkpoint()
        bar.close()
        self.wall += time.perf_counter() - start_time
        elapsed = time.perf_counter() - epoch_start
        self._end_epoch({k: sums[k] / counts[k] for k in sums}, samples, elapsed)

    def _cached_batches(self, steps: int) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """This epoch's batches from the feature cache (``train.feature_epochs``), from the current step on."""
        slot = self.epoch % self.cfg.train.feature_epochs
        if slot not in self.feature_cache:
            self.feature_cache[slot] = self._batch_features(slot)
        return iter(self.feature_cache[slot][self.step:steps])

    @torch.no_grad()
    def _batch_features(self, epoch: int) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """The frozen network's features and the targets of every batch of ``epoch`` (its augmentation)."""
        batches = self.sampler.epoch_batches(epoch)[:self.steps_per_epoch]
        bar = tqdm(total=len(batches), desc=f"features of epoch {epoch + 1}/{self.cfg.train.feature_epochs}",
                   disable=not self.main, dynamic_ncols=True, unit="step")
        cached = []
        for images, tg in self._loader(batches, epoch, 0):
            cached.append(({k: v.float() for k, v in self.model.shared_features(self._on_device(images)).items()},
                           {k: v.to(self.device) for k, v in tg.items()}))
            bar.update(1)
        bar.close()
        return cached

    def _cached_val_sets(self) -> dict[str, ValidationSet]:
        """The validation sets with their features computed once (a set two tasks share, once)."""
        done: dict[int, ValidationSet] = {}
        for vset in self.val_sets.values():
            if id(vset) not in done:
                done[id(vset)] = with_features(self.model, vset, self.device)
        return {task: done[id(vset)] for task, vset in self.val_sets.items()}

    def _train_mode(self) -> None:
        """Training mode, except under ``train.train_only``: there only the learning heads are in it, so the
        frozen network's BatchNorm statistics do not move and its dropout does not disturb their inputs."""
        self.model.train(not self.cfg.train.train_only)
        for head in self._learning_heads():
            head.train()

    def _learning_heads(self) -> list[torch.nn.Module]:
        """The heads ``train.train_only`` leaves learning (none listed: the option is off)."""
        return [self.model.heads[TASK_OUTPUT[task]] for task in self.cfg.train.train_only]

    def _train_step(self, inputs: torch.Tensor | dict[str, torch.Tensor], tg: dict[str, torch.Tensor]
                    ) -> dict[str, float]:
        """One optimiser step on a batch of crops, or of cached features (the heads alone); returns the task
        losses (NaN/inf steps are skipped and counted)."""
        lr = self.lr_at(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        tg = {k: v.to(self.device, non_blocking=True) for k, v in tg.items()}
        half = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        autocast = torch.autocast(self.device.type, dtype=half) if self.amp else nullcontext()
        buffers = [b.detach().clone() for b in self.model.buffers()]
        if isinstance(inputs, dict):
            with autocast:
                out = self.model.head_outputs(inputs)
        else:
            images = self._on_device(inputs)
            with autocast:
                out = self.net(images)
        losses = task_losses(out, tg, self.model.config, self.cfg.train.verification_margin,
                             self.cfg.train.landmark_loss)
        if self.cfg.train.keep_init:
            with torch.no_grad(), autocast:
                old = self.keeper(images)
            losses["keep"] = keep_loss({k: out[k] for k in self.kept}, old)
        extra = self.model.sharing.extra_losses()
        if self.stopper:
            stopped = self.stopper.stopped
            losses = {k: (v * 0.0 if k in stopped else v) for k, v in losses.items()}
        values = {k: float(v.detach()) for k, v in losses.items()}
        if not all(math.isfinite(v) for v in values.values()):
            self.nan_streak += 1
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():                        # the forward pass fed the batch into BN running stats
                for b, old in zip(self.model.buffers(), buffers):
                    b.copy_(old)
            log.warning("step %d: non-finite loss %s; batch skipped (%d in a row)", self.global_step, values,
                        self.nan_streak)
            if self.nan_streak >= self.cfg.train.nan_patience:
                raise TrainingError(f"loss was NaN/inf for {self.nan_streak} steps in a row (last: {values}); "
                                    f"stopping; the last checkpoint in {self.out} holds the last good weights")
            return values
        self.nan_streak = 0
        self.optimizer.zero_grad(set_to_none=True)
        extra_total = sum((self.cfg.train.difference_loss_weight * v for v in extra.values()),
                          torch.zeros((), device=self.device))
        if self.cfg.train.gradient == "pcgrad":
            weights = self.weighting.weights()
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            weighted = {k: v * weights.get(k, 1.0) * scale for k, v in losses.items()}
            if extra:
                weighted["_extra"] = extra_total * scale
            pcgrad_backward(weighted, {k: 1.0 for k in weighted}, self.model.sharing.shared_parameters(),
                            generator=self.pcgrad_gen)
            if self.distributed:
                self._average_gradients(self.model.sharing.shared_parameters())
            weighting_params = list(self.weighting.parameters())
            if weighting_params:
                self.weighting({k: v.detach() for k, v in losses.items()}).backward(inputs=weighting_params)
        else:
            total = self.weighting(losses, shared_parameters=self.model.sharing.last_shared_parameters())
            self.scaler.scale(total + extra_total).backward()
            if self.distributed and isinstance(inputs, dict):    # the heads ran outside DDP: average by hand
                self._average_gradients(self.model.parameters())
        self.scaler.unscale_(self.optimizer)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values

    def _average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average these parameters' gradients over the processes (where DDP does not do it)."""
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def _on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 crop batch as the network takes it: float, on the device, channels-last."""
        return images.to(self.device, non_blocking=True).float().contiguous(memory_format=torch.channels_last)

    def _end_epoch(self, train_losses: dict[str, float], samples: int, elapsed: float) -> None:
        self.weighting.epoch_end(train_losses)
        row: dict[str, Any] = {"epoch": self.epoch + 1, "steps": self.global_step,
                               "samples_per_s": samples / max(elapsed, 1e-9), "wall_s": self.wall,
                               "lr": self.lr_at(self.global_step)}
        row.update({f"loss_{k}": v for k, v in train_losses.items()})
        row.update({f"weight_{k}": v for k, v in self.weighting.weights().items()})
        if self.main:
            metrics, vlosses = validate(self.model, self.val_sets, self.device, self.cfg.train.verification_margin)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            row.update({f"valloss_{k}": v for k, v in vlosses.items()})
            if self.stopper:
                stopped = self.stopper.update(train_losses, vlosses)
                row["stopped"] = " ".join(sorted(stopped))
            if self.cfg.train.grad_cosine_batches > 0 and not self.cfg.train.train_only:   # shared params frozen
                self.cosines.append({"epoch": self.epoch + 1, **self._gradient_cosines()})
            print(_format_row(row), flush=True)
        self.history.append(row)
        self.epoch += 1
        self.step = 0
        self._sync_stopper()
        if self.main:
            self._write_logs()
        self.save_checkpoint()
        self._barrier()

    def _sync_stopper(self) -> None:
        """Rank 0 decides task-wise early stopping; the other ranks follow."""
        if not (self.distributed and self.stopper):
            return
        state = [self.stopper.state_dict() if self.main else None]
        dist.broadcast_object_list(state, src=0)
        self.stopper.load_state_dict(state[0])

    def _gradient_cosines(self) -> dict[str, float]:
        """Mean pairwise cosine of the tasks' gradients on the shared parameters over a few batches."""
        batches = self.sampler.epoch_batches(self.epoch)[:self.cfg.train.grad_cosine_batches]
        data = BatchList(self.dataset, batches, self.cfg.train.seed + 1, self.epoch, self.table,
                         self.cfg.data.mtfl_verification)
        shared = self.model.sharing.shared_parameters()
        total: dict[str, float] = {}
        self.model.eval()
        for k in range(len(batches)):
            images, tg = data[k]
            tg = {key: v.to(self.device) for key, v in tg.items()}
            out = self.model(images.to(self.device).float())
            losses = task_losses(out, tg, self.model.config, self.cfg.train.verification_margin,
                                 self.cfg.train.landmark_loss)
            names, matrix = gradient_cosines(flat_task_grads(losses, shared))
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    if i < j:
                        total[f"{a}/{b}"] = total.get(f"{a}/{b}", 0.0) + float(matrix[i, j]) / len(batches)
        self._train_mode()
        self.model.zero_grad(set_to_none=True)
        return total

    # ---------------------------------------------------------------- logs
    def _meta(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {"trained_epochs": self.epoch, "steps": self.global_step, "wall_s": self.wall,
                "world": self.world, "device": str(self.device), "final_validation": json.dumps(last),
                "identity_names": json.dumps(self.table.identity_names),
                "reschedules": json.dumps(self.reschedules),
                "init": json.dumps(self.init_record)}

    def _write_logs(self, final: bool = False) -> None:
        """log.csv (one row per epoch), grad_cosines.csv, and at the end the curves / heat-map as PNG."""
        _write_csv(self.out / "log.csv", self.history)
        if self.cosines:
            _write_csv(self.out / "grad_cosines.csv", self.cosines)
        if final:
            from .plots import plot_training
            plot_training(self.history, self.cosines, self.out)


def _result_settings(train: dict[str, Any], ignore: set[str]) -> dict[str, Any]:
    """The train settings that a resumed run must share with the checkpoint."""
    return {k: v for k, v in train.items() if k not in RUNTIME_SETTINGS | ignore}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows with possibly different keys as one CSV (columns in order of first appearance), atomically."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _format_row(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}", f"{row['samples_per_s']:.0f} samples/s"]
    parts += [f"{k[4:]}={v:.4f}" for k, v in row.items() if k.startswith("val_")]
    return " | ".join(parts)


def batch_statistics_mode(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with BatchNorm on each batch's statistics, as a training student's, but dropout off: the outputs
    ``keep`` compares (equal to the student's at the start, and not noisy)."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    return model


def holdout_split(table: FaceTable, mtfl_fraction: float, per_identity: int, seed: int
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Training indices and held-out validation indices (CelebA images of training identities; MTFL faces)."""
    rng = np.random.default_rng([seed, 11])
    held_identity: list[int] = []
    celeba = np.flatnonzero(table.source == 0)
    for ident in np.unique(table.identity[celeba]):
        rows = celeba[table.identity[celeba] == ident]
        if len(rows) > per_identity + 4:
            held_identity += sorted(rng.choice(rows, per_identity, replace=False).tolist())
    mtfl = np.flatnonzero(table.source == 2)
    held_mtfl = np.sort(rng.choice(mtfl, int(round(len(mtfl) * mtfl_fraction)), replace=False)) if len(mtfl) else mtfl
    held = np.zeros(len(table), bool)
    held[held_identity] = True
    held[held_mtfl] = True
    return np.flatnonzero(~held), {"identity": np.array(held_identity, dtype=np.int64), "mtfl": held_mtfl}


def train(cfg: RunConfig, reschedule: bool = False) -> Path | None:
    """Train (resuming when ``cfg.out_dir`` holds a checkpoint); returns the final model file, or None on the
    processes other than the first under torchrun (the first alone writes it).

    ``reschedule`` lets a resumed run change its number of epochs (shorten or extend it); the change is
    recorded in the checkpoint and the model's metadata."""
    if cfg.train.gradient == "pcgrad" and cfg.train.weighting == "gradnorm":
        raise ConfigError("PCGrad and GradNorm both rewrite the shared gradients; choose one")
    return Trainer(cfg, reschedule).run()
