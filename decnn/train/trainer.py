"""Training: config -> data -> model -> optimizer -> loop -> checkpoints, one process per device.

Under ``torchrun`` every process joins the process group (gloo on CPU, NCCL on CUDA), trains on its shard
of each epoch through DDP, and only rank 0 writes: the run folder, checkpoints and TensorBoard logs.
Resuming from ``last.pt`` continues exactly: weights, optimizer, schedule, epoch and every RNG.
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from timm.utils import distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from decnn.common.checkpoint import (
    check_architecture,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from decnn.common.errors import ConfigError
from decnn.common.logger import experiment_root, make_logger
from decnn.common.meters import Progress
from decnn.common.record import ACCURACY_TRAINING, architecture
from decnn.data import dataset_class
from decnn.models import count_flops, count_params
from decnn.train.builders import (
    amp_dtype,
    build_dataset,
    build_optimizer,
    build_scheduler,
    build_val_set,
    dataset_root,
    init_distributed,
    model_kwargs,
    seed_everything,
)
from decnn.train.config import TrainingConfig
from decnn.train.evaluate import autocast, evaluate
from decnn.train.transforms import batch_mixer, train_transform


def lock_run_dir(run_dir: Path):
    """An open file holding an exclusive lock on ``run_dir`` (released when it is closed or the process ends,
    even by SIGKILL); FileExistsError if a live training holds it."""
    lock = open(run_dir / ".lock", "a+")  # kept open: the lock lives as long as the file
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise FileExistsError(f"run folder {run_dir} is in use by a live training (pid {owner}); wait for it to "
                              "end, or choose another run.name") from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


class Trainer:
    """Everything one training process holds. ``fit()`` runs the remaining epochs; ``step_epoch()`` runs one."""

    def __init__(self, cfg: TrainingConfig):
        self.cfg = cfg
        self.rank, self.world_size, self.device = init_distributed(cfg.train.device)
        self.is_main = self.rank == 0
        seed_everything(cfg.train.seed + self.rank, cfg.train.deterministic)
        cuda = self.device.type == "cuda"
        self.amp_dtype = amp_dtype(cfg.train.amp, self.device)
        self.memory_format = torch.channels_last if cfg.train.channels_last and cuda else torch.preserve_format
        if not cuda and (cfg.train.amp != "none" or cfg.train.channels_last):
            self._say("note: train.amp and train.channels_last apply on CUDA only; this run is fp32 on the CPU")

        # Everything that can fail on bad input comes before anything is written.
        ckpt = load_checkpoint(cfg.train.resume) if cfg.train.resume else None
        d, root = cfg.data, dataset_root(cfg.data)
        stats = dataset_class(root)
        train_tf = train_transform(cfg.augment, d.image_size, stats.mean, stats.std)
        self.train_set, num_classes = build_dataset(root, "train", train_tf, d.max_train_images)
        self.val_set, _ = build_val_set(d)
        m = cfg.model
        self.model_kwargs = model_kwargs(m, num_classes, (stats.mean, stats.std))
        if ckpt is not None:
            check_architecture(ckpt, m.name, self.model_kwargs, where=cfg.train.resume)
        try:
            model = timm.create_model(m.name, **self.model_kwargs)
        except (TypeError, ValueError) as e:  # TypeError: an argument the model does not take, e.g. a stem
            raise ConfigError(f"model: {m.name} with {self.model_kwargs}: {e}") from e
        self.params = count_params(model)
        self.flops = count_flops(model, (1, 3, cfg.data.image_size, cfg.data.image_size))
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ddp_model = self.model
        self.train_loader, self.val_loader = self._loaders()
        self.mixer = batch_mixer(cfg.augment, num_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.augment.label_smoothing)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer, len(self.train_loader))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.epoch, self.best_top1, self.best_top5 = 0, -math.inf, -math.inf
        if ckpt is not None:
            self._restore(ckpt)
        if self.world_size > 1:
            self.ddp_model = DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None)

        self._run_lock = None  # rank 0's lock on the run folder, held until close()
        self.run_dir = self._make_run_dir() if self.is_main else None
        self.log = make_logger(self.run_dir, enabled=self.is_main,
                               log_root=experiment_root(self.run_dir.parent) if self.is_main else None)
        self.log.text("config", f"```yaml\n{cfg.to_yaml()}```")
        self._say(
            f"run folder {self.run_dir} | {m.name} (groups {m.groups}, width {m.width:g}, stem {m.stem}): "
            f"{self.params / 1e6:.2f}M params, {self.flops / 1e9:.2f} GFLOPs at {cfg.data.image_size}px | "
            f"{len(self.train_set)} train / {len(self.val_set)} val images, {num_classes} classes | "
            f"{self.world_size} x {self.device.type}, epoch {self.epoch}/{cfg.schedule.epochs}"
        )

    def _loaders(self) -> tuple[DataLoader, DataLoader]:
        d = self.cfg.data
        pin = self.device.type == "cuda"
        # Order depends on (seed, epoch) only, so a resumed run sees the batches a continuous one would.
        sampler = DistributedSampler(self.train_set, self.world_size, self.rank, shuffle=True,
                                     seed=self.cfg.train.seed, drop_last=True)
        train = DataLoader(self.train_set, d.batch_size, sampler=sampler, num_workers=d.workers,
                           pin_memory=pin, drop_last=True)
        if len(train) == 0:
            raise ConfigError(f"{len(self.train_set)} training images do not fill one batch of data.batch_size="
                              f"{d.batch_size} in each of {self.world_size} processes")
        # Each process evaluates every world_size-th image: no padding, so the summed counts are exact.
        shard = Subset(self.val_set, range(self.rank, len(self.val_set), self.world_size))
        val = DataLoader(shard, d.batch_size, num_workers=d.workers, pin_memory=pin)
        return train, val

    def _make_run_dir(self) -> Path:
        """Create (or, resuming, reuse) the run folder and hold its lock for as long as this process lives."""
        cfg, m = self.cfg, self.cfg.model
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if cfg.train.resume:
            run_dir = Path(cfg.train.resume).parent
            self._run_lock = lock_run_dir(run_dir)
            (run_dir / f"config.resumed-{stamp}.yaml").write_text(cfg.to_yaml())
            return run_dir
        run_dir = Path(cfg.run.out_dir) / (cfg.run.name or f"{m.name}_g{m.groups}_x{m.width:g}_{m.stem}_{stamp}")
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            lock_run_dir(run_dir).close()  # says so if a live training holds it
            raise FileExistsError(
                f"run folder {run_dir} already exists: choose another run.name, "
                f"or continue it with train.resume={run_dir / 'last.pt'}"
            ) from None
        self._run_lock = lock_run_dir(run_dir)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        return run_dir

    def _restore(self, ckpt: dict) -> None:
        load_weights(self.model, ckpt["model"], where=self.cfg.train.resume)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best_top1, self.best_top5 = ckpt["epoch"], ckpt["best_top1"], ckpt["best_top5"]
        if len(ckpt["rng"]) == self.world_size:
            set_rng_state(ckpt["rng"][self.rank])
        else:
            self._say(f"note: the checkpoint was written by {len(ckpt['rng'])} processes, this run has "
                      f"{self.world_size}; augmentations will not repeat those of an uninterrupted run")

    def _say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def fit(self) -> dict:
        """Train the remaining epochs; return the best val top-1/top-5 and the run folder."""
        try:
            with self.log:
                while self.epoch < self.cfg.schedule.epochs:
                    self.step_epoch()
                self.log.hparams(self.hparams(),
                                 {"hparam/best_top1": self.best_top1, "hparam/best_top5": self.best_top5})
        finally:
            self.close()
        self._say(f"best val top-1 {self.best_top1:.2f}% top-5 {self.best_top5:.2f}% (run folder {self.run_dir})")
        return {"best_top1": self.best_top1, "best_top5": self.best_top5, "run_dir": self.run_dir}

    def close(self) -> None:
        """Close the logger and release the run folder (another process, or this one, may then resume it)."""
        self.log.close()
        if self._run_lock is not None:
            self._run_lock.close()
            self._run_lock = None

    def step_epoch(self) -> dict[str, float]:
        """Train one epoch, evaluate, log, and save last.pt (and best.pt when val top-1 improves)."""
        start = time.perf_counter()
        train_loss, images_per_s = self.train_epoch()
        if self.world_size > 1:
            distribute_bn(self.model, self.world_size, reduce=True)  # ranks' BN statistics differ: average them
        metrics = evaluate(self.model, self.val_loader, self.device, self.amp_dtype, self.memory_format)
        self.epoch += 1
        is_best = metrics["top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_top5 = metrics["top1"], metrics["top5"]
        epoch_time = time.perf_counter() - start
        self.log.scalars({
            "val/loss": metrics["loss"], "val/top1": metrics["top1"], "val/top5": metrics["top5"],
            "perf/images_per_s": images_per_s, "perf/epoch_time_s": epoch_time,
        }, self.epoch)
        state = self.state_dict()  # a collective (RNG states of all ranks): every rank calls it
        if self.is_main:
            save_checkpoint(self.run_dir / "last.pt", state)
            if is_best:
                save_checkpoint(self.run_dir / "best.pt", state)
        self._say(
            f"epoch {self.epoch}/{self.cfg.schedule.epochs}  train loss {train_loss:.4f}  "
            f"val loss {metrics['loss']:.4f} top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%  "
            f"{images_per_s:.0f} img/s  {epoch_time:.1f} s  best top-1 {self.best_top1:.2f}%"
        )
        return metrics

    def train_epoch(self) -> tuple[float, float]:
        """One pass over this process's shard; return rank 0's mean loss and the images/s of all ranks."""
        cfg, loader = self.cfg, self.train_loader
        self.ddp_model.train()
        loader.sampler.set_epoch(self.epoch)
        progress = Progress(len(loader), f"epoch {self.epoch + 1}/{cfg.schedule.epochs}", enabled=self.is_main)
        epoch_loss = torch.zeros((), device=self.device)
        window_loss, window = torch.zeros((), device=self.device), 0
        start = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            images, labels = self.mixer(images, labels)
            with autocast(self.device, self.amp_dtype):
                loss = self.criterion(self.ddp_model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
            lr = self.scheduler.get_last_lr()[0]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            epoch_loss += loss.detach()
            window_loss += loss.detach()
            window += 1
            step = self.epoch * len(loader) + i + 1
            if step % cfg.run.log_every and i + 1 < len(loader):
                progress.update()
                continue
            mean = window_loss.item() / window  # a sync point on CUDA: only every log_every steps
            window_loss.zero_()
            window = 0
            self.log.scalars({"train/loss": mean, "train/lr": lr}, step)
            progress.update({"loss": f"{mean:.4f}", "lr": f"{lr:.4g}"})
        progress.close()
        elapsed = time.perf_counter() - start
        images = len(loader) * cfg.data.batch_size * self.world_size
        return epoch_loss.item() / len(loader), images / elapsed

    def state_dict(self) -> dict:
        rng = [rng_state()]
        if self.world_size > 1:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, rng_state())
        return {
            "model": self.model.state_dict(),
            "model_name": self.cfg.model.name,
            "model_kwargs": self.model_kwargs,
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_top1": self.best_top1,
            "best_top5": self.best_top5,
            "rng": rng,
        }

    def hparams(self) -> dict:
        """What tells runs apart in TensorBoard's HPARAMS tab (columns of decnn.common.record.EXPERIMENT_HPARAMS)."""
        c = self.cfg
        return {
            "architecture": architecture(c.model.name, c.model.groups, c.model.width), "mode": "train",
            "split": "train",
            "accuracy": ACCURACY_TRAINING, "model": c.model.name, "groups": c.model.groups, "width": c.model.width,
            "stem": c.model.stem,
            "params": self.params, "flops": self.flops, "image_size": c.data.image_size,
            "batch_size": c.data.batch_size * self.world_size, "optimizer": c.optim.name, "lr": c.optim.lr,
            "epochs": c.schedule.epochs,
        }


def train(cfg: TrainingConfig) -> dict:
    """Train as ``cfg`` says (under torchrun: this process's share); return the best val metrics."""
    try:
        return Trainer(cfg).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
