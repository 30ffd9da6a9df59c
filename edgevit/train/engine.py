"""The training engine behind ``edgevit train`` and ``edgevit distill``: DeiT's recipe from timm's parts.

AdamW, cosine schedule with warm-up, label smoothing, Mixup/CutMix, RandAugment, random erasing,
stochastic depth (a model option), EMA of weights, gradient clipping, mixed precision on CUDA,
repeated augmentation; distillation through :class:`~edgevit.train.distill.DistillationLoss`.

Every epoch re-seeds every RNG from ``(seed, epoch)`` and checkpoints atomically, so a run killed
mid-epoch resumes from the last finished epoch and reaches the same weights bit for bit (CPU).
One process or many (``torchrun``: DistributedDataParallel, only rank 0 writes).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import EdgeVitError, describe
from ..eval.validate import accuracy_row
from ..manifest import write_bytes
from ..progress import progress_bar, say
from .checkpoint import load_checkpoint, save_checkpoint
from .distill import KINDS, DistillationError, DistillationLoss, TeacherInput, check_student


class TrainingError(EdgeVitError):
    """Training cannot go on (diverged loss, bad options)."""


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64  # per process
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    warmup_lr: float = 1e-6
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    flip: bool = True  # random horizontal flips (off for digits and text)
    randaug: str | None = None  # timm auto_augment string, DeiT: rand-m9-mstd0.5-inc1
    reprob: float = 0.0  # random erasing probability (DeiT: 0.25)
    scale_min: float = 0.08  # RandomResizedCrop's smallest area when randaug/reprob are on
    mixup: float = 0.0  # DeiT: 0.8
    cutmix: float = 0.0  # DeiT: 1.0
    drop_path: float = 0.0  # stochastic depth, set when the model is built (DeiT-Ti: 0.1)
    ema_decay: float = 0.0  # 0 = off; DeiT: 0.99996
    amp: bool = True  # autocast on CUDA (bf16 where supported, else fp16 with a grad scaler)
    repeated_aug: bool = False  # DeiT's repeated augmentation (3 repeats) sampler
    distillation: str = "none"  # none | soft | hard
    teacher: str | None = None  # timm/zoo name of the teacher
    teacher_checkpoint: str | None = None
    alpha: float = 0.5  # weight of the distillation term (DeiT soft: 0.1, hard: 0.5)
    tau: float = 1.0  # soft-distillation temperature (DeiT: 3.0)


RUNTIME_ONLY = ("workers", "threads")  # may change between a run and its resume


def resume_config(run_dir: Path, model_name: str, explicit: dict[str, Any]) -> TrainConfig:
    """The training options of the run in ``run_dir`` (its last checkpoint), for ``--resume``.

    Options given again must equal the run's: the restored optimizer and schedule keep the run's
    length and rates, so another ``--epochs`` would be recorded but not obeyed."""
    from ..errors import CheckpointError

    ckpt = Path(run_dir) / "checkpoints" / "last.pt"
    saved = dict(load_checkpoint(ckpt, model_name).get("config") or {})
    changed = [f"{k} {v!r} (the run has {saved[k]!r})" for k, v in explicit.items()
               if k in saved and k not in RUNTIME_ONLY and saved[k] != v]
    if changed:
        raise CheckpointError(
            f"--resume continues {run_dir} with the options it started with, but these differ: "
            f"{'; '.join(changed)}",
            f"leave them out to continue the run, or start a new run from its weights: --out NEW "
            f"--checkpoint {Path(run_dir) / 'model' / 'weights.safetensors'}")
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in saved.items() if k in known}, **explicit})


def _posterize_compat() -> None:
    """Pillow ≥ 11 refuses ``posterize(img, 0)``, which timm's RandAugment 'inc1' asks for at the
    top magnitude (DeiT's rand-m9-mstd0.5-inc1 reaches it through the magnitude noise). Keeping 1 bit
    is the closest image Pillow still makes; the augmentation policy is otherwise unchanged."""
    from timm.data import auto_augment as aa

    if getattr(aa.posterize, "_edgevit", False):
        return
    original = aa.posterize

    def posterize(img, bits_to_keep, **kw):
        return original(img, max(1, int(bits_to_keep)), **kw)

    posterize._edgevit = True
    aa.posterize = posterize
    for name, fn in list(aa.NAME_TO_OP.items()):
        if fn is original:
            aa.NAME_TO_OP[name] = posterize


def train_transform(data_cfg: dict[str, Any], cfg: TrainConfig | None = None, flip: bool | None = None):
    """DeiT's augmentation when asked for (RandAugment, random erasing); else pad-and-crop for small images."""
    from torchvision import transforms as T

    cfg = cfg or TrainConfig()
    flip = cfg.flip if flip is None else flip
    size = data_cfg["input_size"][-1]
    if cfg.randaug or cfg.reprob:
        from timm.data import create_transform

        _posterize_compat()
        return create_transform(size, is_training=True, auto_augment=cfg.randaug, re_prob=cfg.reprob,
                                scale=(cfg.scale_min, 1.0), hflip=0.5 if flip else 0.0,
                                interpolation=data_cfg["interpolation"], mean=tuple(data_cfg["mean"]),
                                std=tuple(data_cfg["std"]))
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"),
        *([T.RandomHorizontalFlip()] if flip else []),
        T.ToTensor(),
        T.Normalize(data_cfg["mean"], data_cfg["std"]),
    ])


# -- processes -------------------------------------------------------------------------------
def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# -- evaluation ------------------------------------------------------------------------------
def evaluate(model: torch.nn.Module, ds: Dataset, batch_size: int = 128, device=None,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """Top-1/top-5 on ``ds``; with several processes each takes a shard and the counts are summed."""
    device = device or torch.device("cpu")
    shard = Subset(ds, list(range(rank, len(ds), world))) if world > 1 else ds
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in DataLoader(shard, batch_size=batch_size):
            logits.append(model(x.to(device)).float().cpu().numpy())
            labels.append(y.numpy())
    if not logits:
        top = {"top1": 0.0, "top5": 0.0}
        n = 0
    else:
        top, n = accuracy_row(np.concatenate(logits), np.concatenate(labels)), sum(len(y) for y in labels)
    if world > 1:
        t = torch.tensor([top["top1"] * n, top["top5"] * n, n], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        top = {"top1": float(t[0] / t[2]), "top5": float(t[1] / t[2])}
    return top


# -- the loop --------------------------------------------------------------------------------
@dataclass
class Parts:
    """Everything one training run is made of (built once, restored on --resume)."""

    model: torch.nn.Module  # possibly DDP-wrapped
    loader: DataLoader
    sampler: Any
    opt: torch.optim.Optimizer
    sched: Any
    crit: DistillationLoss
    mixup: Any
    ema: Any
    scaler: Any
    autocast: Any
    device: torch.device


def _build(model, train_ds, cfg: TrainConfig, data_cfg, teacher, num_classes, rank, world, device,
           single_head_kd: bool = False, teacher_data_config: dict | None = None) -> Parts:
    from timm.data import Mixup
    from timm.data.distributed_sampler import RepeatAugSampler
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3
    from torch.utils.data.distributed import DistributedSampler

    if len(train_ds) < cfg.batch_size * world:
        raise TrainingError(f"{len(train_ds)} training images are fewer than one batch of {cfg.batch_size * world}",
                            "lower --batch-size or add images")
    model.to(device)
    if cfg.distillation != "none" and not single_head_kd:
        _unwrap(model).set_distilled_training(True)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    sampler = (RepeatAugSampler(train_ds, world, rank, shuffle=True) if cfg.repeated_aug
               else DistributedSampler(train_ds, world, rank, shuffle=True, seed=cfg.seed, drop_last=True))
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)
    steps = len(loader)
    opt = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs * steps, warmup_t=cfg.warmup_epochs * steps,
                              warmup_lr_init=cfg.warmup_lr, lr_min=cfg.min_lr, t_in_epochs=False)
    mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                   num_classes=num_classes) if cfg.mixup or cfg.cutmix else None)
    base = (SoftTargetCrossEntropy() if mixup else
            LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing else torch.nn.CrossEntropyLoss())
    t_in = None
    if teacher is not None:
        from ..data import data_config

        teacher.to(device)
        t_cfg = teacher_data_config or data_config(teacher)
        t_in = TeacherInput(data_cfg, t_cfg).to(device)
    crit = DistillationLoss(base, teacher, cfg.distillation, cfg.alpha, cfg.tau, t_in, single_head=single_head_kd)
    ema = ModelEmaV3(_unwrap(model), decay=cfg.ema_decay) if cfg.ema_decay else None
    amp = cfg.amp and device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp and dtype == torch.float16 else None
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if amp else (lambda: torch.autocast("cpu", enabled=False))
    return Parts(model, loader, sampler, opt, sched, crit, mixup, ema, scaler, autocast, device)


def _step(p: Parts, x, y, cfg: TrainConfig, global_step: int) -> tuple[float, torch.Tensor]:
    x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)
    target = y
    if p.mixup is not None:
        x, target = p.mixup(x, y)
    with p.autocast():
        out = p.model(x)
        loss = p.crit(x, out, target)
    if p.scaler is not None:
        p.scaler.scale(loss).backward()
        p.scaler.unscale_(p.opt)
    else:
        loss.backward()
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(p.model.parameters(), cfg.clip_grad)
    if p.scaler is not None:
        p.scaler.step(p.opt)
        p.scaler.update()
    else:
        p.opt.step()
    p.opt.zero_grad(set_to_none=True)
    p.sched.step_update(global_step)
    if p.ema is not None:
        p.ema.update(_unwrap(p.model), step=global_step)
    head = out[0] if isinstance(out, tuple) else out
    return loss.item(), head.detach()


def _one_epoch(p: Parts, cfg: TrainConfig, epoch: int, show: bool) -> dict[str, Any]:
    p.model.train()
    p.sampler.set_epoch(epoch)
    steps = len(p.loader)
    total, seen, correct, t0 = 0.0, 0, 0, time.perf_counter()
    with progress_bar(f"epoch {epoch + 1}/{cfg.epochs}", total=steps if show else 0, unit="step") as advance:
        for i, (x, y) in enumerate(p.loader):
            loss, head = _step(p, x, y, cfg, epoch * steps + i + 1)
            if not math.isfinite(loss):
                raise TrainingError(f"loss became {loss} at epoch {epoch + 1}, step {i + 1}",
                                    "lower --lr (the last good checkpoint is kept; continue with --resume)")
            total += loss * len(y)
            seen += len(y)
            correct += int((head.argmax(1).cpu() == y).sum())
            if show:
                advance(1, loss=total / seen, acc=100.0 * correct / seen, ips=seen / (time.perf_counter() - t0))
    return {"epoch": epoch, "train_loss": total / max(1, seen), "train_top1": 100.0 * correct / max(1, seen),
            "lr": p.opt.param_groups[0]["lr"], "images_per_s": seen / (time.perf_counter() - t0)}


def fit(model: torch.nn.Module, train_ds: Dataset, val_ds: Dataset | None, cfg: TrainConfig, run_dir: Path,
        data_cfg: dict[str, Any], num_classes: int, model_name: str, teacher: torch.nn.Module | None = None,
        resume: bool = False, spec: dict[str, Any] | None = None, single_head_kd: bool = False,
        teacher_data_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place (the EMA weights when ``ema_decay``); returns one metrics row per epoch.

    Writes ``run_dir/checkpoints/last.pt`` after every epoch and ``run_dir/model/history.jsonl``
    (rank 0 only). ``resume`` continues from that checkpoint. ``single_head_kd`` distills into the
    model's one head (knowledge distillation without a distillation token, e.g. QAT from the float model).
    """
    if cfg.distillation not in KINDS:
        raise DistillationError(f"unknown distillation {cfg.distillation!r}", f"use one of {', '.join(KINDS)}")
    if not single_head_kd:
        check_student(model, cfg.distillation, model_name)
    rank, world, device = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    ckpt = Path(run_dir) / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt, model_name) if resume else None  # fail before any work
    p = _build(model, train_ds, cfg, data_cfg, teacher, num_classes, rank, world, device, single_head_kd,
               teacher_data_config)
    history: list[dict[str, Any]] = []
    start = 0
    if state is not None:
        _restore(p, state)
        history, start = list(state["history"]), int(state["epoch"]) + 1
        if rank == 0:
            say(f"resuming {model_name} after epoch {start} of {cfg.epochs} from {ckpt}")
    for epoch in range(start, cfg.epochs):
        seed_everything(cfg.seed * 100003 + epoch)  # each epoch's randomness depends on (seed, epoch) only
        row = _one_epoch(p, cfg, epoch, show=rank == 0)
        if val_ds is not None:
            row.update({f"val_{k}": v for k, v in evaluate(p.model, val_ds, device=device, rank=rank,
                                                           world=world).items()})
            if p.ema is not None:
                row.update({f"val_ema_{k}": v for k, v in evaluate(p.ema.module, val_ds, device=device, rank=rank,
                                                                   world=world).items()})
        history.append(row)
        if rank == 0:
            _save(p, ckpt, epoch, history, cfg, model_name, spec)
            _write_history(Path(run_dir) / "model" / "history.jsonl", history)
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.3f}"
                + (f", val top-1 {row['val_top1']:.2f} %" if "val_top1" in row else "")
                + (f" (EMA {row['val_ema_top1']:.2f} %)" if "val_ema_top1" in row else ""))
        if world > 1:
            dist.barrier()
    final = p.ema.module if p.ema is not None else _unwrap(p.model)
    if final is not model:
        model.load_state_dict(final.state_dict())
    if cfg.distillation != "none" and not single_head_kd:
        model.set_distilled_training(False)
    model.eval().cpu()
    return history


def _save(p: Parts, path: Path, epoch: int, history, cfg: TrainConfig, model_name: str, spec) -> None:
    save_checkpoint(path, {
        "epoch": epoch, "model_name": model_name, "model": _unwrap(p.model).state_dict(),
        "optimizer": p.opt.state_dict(), "scheduler": p.sched.state_dict(),
        "ema": p.ema.state_dict() if p.ema is not None else None,
        "scaler": p.scaler.state_dict() if p.scaler is not None else None,
        "history": history, "config": asdict(cfg), "spec": spec or {},
    })


def _restore(p: Parts, state: dict[str, Any]) -> None:
    from ..errors import CheckpointError

    try:
        _unwrap(p.model).load_state_dict(state["model"])
        p.opt.load_state_dict(state["optimizer"])
        p.sched.load_state_dict(state["scheduler"])
        if p.ema is not None and state.get("ema") is not None:
            p.ema.load_state_dict(state["ema"])
        if p.scaler is not None and state.get("scaler") is not None:
            p.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"the training checkpoint does not fit this run ({describe(e)})",
                              "resume with the options the run started with (model, --num-classes, sizes)") from e


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    write_bytes(path, "".join(json.dumps(r) + "\n" for r in history).encode())
