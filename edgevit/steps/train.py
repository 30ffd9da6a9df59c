"""Supervised training from timm's parts: AdamW, cosine schedule with warm-up, label smoothing.

This is the small engine the quickstart and benchmarks use to make a float model offline; the
distillation stage builds on the same loop.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bench.validate import accuracy_row
from ..data import make_loader
from ..progress import progress_bar, say


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    flip: bool = True  # random horizontal flips (off for digits and text)


def train_transform(data_cfg: dict[str, Any], flip: bool = True):
    """Light augmentation fit for small images: random crop with padding (and flip), then normalize."""
    from torchvision import transforms as T

    size = data_cfg["input_size"][-1]
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"),
        *([T.RandomHorizontalFlip()] if flip else []),
        T.ToTensor(),
        T.Normalize(data_cfg["mean"], data_cfg["std"]),
    ])


def evaluate(model: torch.nn.Module, ds: Dataset, batch_size: int = 128) -> dict[str, float]:
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in make_loader(ds, batch_size):
            logits.append(model(x).float().numpy())
            labels.append(y.numpy())
    return accuracy_row(np.concatenate(logits), np.concatenate(labels))


def train(model: torch.nn.Module, train_ds: Dataset, val_ds: Dataset | None, cfg: TrainConfig,
          history_path: Path | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place; one JSON line per epoch goes to ``history_path``."""
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed, drop_last=True)
    steps = max(1, len(loader))
    opt = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs * steps, warmup_t=cfg.warmup_epochs * steps,
                              warmup_lr_init=cfg.lr * 0.01, lr_min=cfg.lr * 0.01, t_in_epochs=False)
    crit = LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing else torch.nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    if history_path:
        history_path.parent.mkdir(parents=True, exist_ok=True)
        history_path.write_text("")
    for epoch in range(cfg.epochs):
        row = _one_epoch(model, loader, opt, sched, crit, cfg, epoch, steps)
        if val_ds is not None:
            row.update({f"val_{k}": v for k, v in evaluate(model, val_ds).items()})
        history.append(row)
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.3f}"
            + (f", val top-1 {row['val_top1']:.2f} %" if "val_top1" in row else ""))
        if history_path:
            with open(history_path, "a") as f:
                f.write(json.dumps(row) + "\n")
    model.eval()
    return history


def _one_epoch(model, loader, opt, sched, crit, cfg: TrainConfig, epoch: int, steps: int) -> dict[str, Any]:
    import time

    model.train()
    total, seen, correct, t0 = 0.0, 0, 0, time.perf_counter()
    with progress_bar(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, unit="step") as advance:
        for i, (x, y) in enumerate(loader):
            out = model(x)
            loss = crit(out, y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1} step {i}: lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            sched.step_update(epoch * steps + i + 1)
            total += loss.item() * len(y)
            seen += len(y)
            correct += int((out.argmax(1) == y).sum())
            advance(1, loss=total / seen, acc=100.0 * correct / seen, ips=seen / (time.perf_counter() - t0))
    return {"epoch": epoch, "train_loss": total / max(1, seen), "train_top1": 100.0 * correct / max(1, seen),
            "lr": opt.param_groups[0]["lr"], "images_per_s": seen / (time.perf_counter() - t0)}


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
