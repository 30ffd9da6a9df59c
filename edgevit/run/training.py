"""Training runs: train or distill a model into a run directory, fine-tune a transformed one, and
train-then-export. Each returns the trained model and the spec that rebuilds it (its weights file);
the caller's spec is never changed."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .. import __version__, transforms
from ..data import data_config, eval_transform, load_split
from ..errors import DataError
from ..manifest import (
    RUN_MANIFEST,
    atomic_path,
    command_line,
    create_run_dir,
    library_versions,
    now,
    remove_if_empty_run,
    write_json,
)
from ..models import ModelSpec, count_params, with_checkpoint_hash
from ..progress import say
from ..train.distill import check_student, load_teacher
from ..train.engine import TrainConfig, fit, seed_everything, train_transform
from .export import ExportOptions, check_export, recorded_source, run_export

WEIGHTS = Path("model") / "weights.safetensors"


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """A model's state dict as safetensors, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))


def trained_spec(spec: ModelSpec, weights: Path) -> ModelSpec:
    """``spec`` rebuilt from the weights a run saved."""
    return dataclasses.replace(spec, checkpoint=str(weights.resolve()), pretrained=False, checkpoint_sha256=None)


def run_training(spec: ModelSpec, cfg: TrainConfig, data: str, out: Path, split: str = "val",
                 val_fraction: float = 0.2, seed: int = 0, resume: bool = False,
                 exist_ok: bool = False) -> tuple[torch.nn.Module, ModelSpec]:
    """Train (or distill) ``spec`` on ``data`` into run directory ``out``: (trained model, its spec)."""
    out = Path(out)
    if cfg.drop_path:
        spec = dataclasses.replace(spec, extra={**spec.extra, "drop_path_rate": cfg.drop_path})
    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    model, spec, _ = transforms.build_model(spec)
    dcfg = data_config(model, spec.img_size)
    train_ds = load_split(data, "train", train_transform(dcfg, cfg), val_fraction, seed)
    val_ds = load_split(data, split, eval_transform(dcfg), val_fraction, seed)
    n_cls = _check_labels(train_ds, model, spec, data)
    check_student(model, cfg.distillation, spec.name)  # before the (possibly downloaded) teacher
    teacher, teacher_cfg = (load_teacher(cfg.teacher, cfg.teacher_checkpoint, n_cls)
                            if cfg.distillation != "none" else (None, None))
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 makes and writes the run directory
    made = False if resume or rank != 0 else create_run_dir(out, exist_ok)
    try:
        if rank == 0:
            write_json(out / RUN_MANIFEST, {
                "edgevit": __version__, "created": now(), "command": command_line(), "model": spec.to_dict(),
                "params": count_params(model), "data_config": dcfg, "data": recorded_source(data), "split": split,
                "train": dataclasses.asdict(cfg), "versions": library_versions(), "targets": []})
            say(f"training {spec.name} ({count_params(model) / 1e6:.2f} M params) on ", plain=(
                f"{data}: {len(train_ds)} train / {len(val_ds)} {split} images, {cfg.epochs} epoch(s), "
                f"distillation {cfg.distillation}"))
        fit(model, train_ds, val_ds, cfg, out, dcfg, n_cls, spec.name, teacher=teacher, resume=resume,
            spec=spec.to_dict(), teacher_data_config=teacher_cfg)
    except BaseException:
        if made:
            remove_if_empty_run(out, made)
        raise
    if rank == 0:
        save_weights(model, out / WEIGHTS)
    return model, trained_spec(spec, out / WEIGHTS)


def _check_labels(train_ds, model: torch.nn.Module, spec: ModelSpec, data: str) -> int:
    n_cls = int(getattr(model, "num_classes", 0) or 0)
    if train_ds.classes and len(train_ds.classes) != n_cls:
        raise DataError(f"{data} has {len(train_ds.classes)} classes but {spec.name} was built for {n_cls}",
                        f"pass --num-classes {len(train_ds.classes)}")
    if len(set(train_ds.targets)) == 1:
        label = (train_ds.classes or ["0"])[train_ds.targets[0]]
        say("[yellow]warning:[/] ", plain=f"the training images of {data} all have one label ({label}): the model "
            "can only learn to predict it. Check the folder layout (one sub-folder per class).")
    return n_cls


def finetune_transformed(spec: ModelSpec, data: str, out: Path, epochs: int, lr: float = 1e-4,
                         batch_size: int = 64, split: str = "val", val_fraction: float = 0.2,
                         seed: int = 0, holdout: float | None = None) -> tuple[torch.nn.Module, ModelSpec]:
    """A short fine-tune of the transformed model (``spec.prune``) through the training engine,
    distilled (soft KD on the logits) from the model without transforms, same weights; saves
    ``out/model/weights.safetensors`` (in the transformed model's key layout) and, in
    ``out/model/finetune.json``, ``dense_model``: the spec of the dense model (validation compares with it).
    ``holdout``: the fraction of the training images left out (:func:`edgevit.data.train_part`)."""
    dense_spec = dense_spec_of(spec)
    dense, _, _ = transforms.build_model(dense_spec)
    model, spec, _ = transforms.build_model(spec)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_epochs=0, seed=seed,
                      distillation="soft", alpha=0.5, tau=1.0)
    dcfg = data_config(model, spec.img_size)
    train_ds = load_split(data, "train", train_transform(dcfg, cfg), val_fraction, seed, holdout=holdout)
    val_ds = load_split(data, split, eval_transform(dcfg), val_fraction, seed)
    out = Path(out)
    fit(model, train_ds, val_ds, cfg, out / "finetune", dcfg, int(model.num_classes), f"{spec.name}+{spec.prune}",
        teacher=dense.eval(), single_head_kd=True)
    save_weights(model, out / WEIGHTS)
    write_json(out / "model" / "finetune.json", {"prune": spec.prune, "epochs": epochs, "lr": lr,
                                                 "teacher": "the dense model (soft KD)", "from": spec.checkpoint,
                                                 "train_images": len(train_ds), "holdout": holdout,
                                                 "dense_model": dense_spec.to_dict()})
    return model, trained_spec(spec, out / WEIGHTS)


def dense_spec_of(spec: ModelSpec) -> ModelSpec:
    """``spec`` without its transforms (the dense model it came from), its checkpoint absolute (the record
    holds from any working directory) and hashed (validation checks the weights by it)."""
    ckpt = os.path.abspath(os.path.expanduser(spec.checkpoint)) if spec.checkpoint else None
    return with_checkpoint_hash(dataclasses.replace(spec, prune=None, checkpoint=ckpt))


def run_pruned(spec: ModelSpec, opts: ExportOptions, finetune_epochs: int = 0, finetune_lr: float = 1e-4) -> Path:
    """Transformed export: optionally fine-tune the transformed model first (distilled from the dense one).
    run.json records ``dense_model``: the spec of the dense model (no transforms, the dense weights), which
    validation scores beside the pruned artifacts and bench times beside them."""
    opts = dataclasses.replace(opts, extra={**opts.extra, "dense_model": dense_spec_of(spec).to_dict()})
    if not finetune_epochs:
        return run_export(spec, opts)
    if not opts.data:
        raise DataError("--finetune-epochs needs labelled images", "pass --data (its train split is used)")
    return train_then_export(spec, opts, lambda: finetune_transformed(
        spec, opts.data, opts.out, finetune_epochs, finetune_lr, val_fraction=opts.val_fraction, seed=opts.seed,
        holdout=opts.holdout))


def train_then_export(spec: ModelSpec, opts: ExportOptions,
                      train: Callable[[], tuple[torch.nn.Module, ModelSpec]]) -> Path:
    """``train()`` into the run directory, then export what it returns; a failure removes an empty run."""
    check_export(spec, opts)
    made = create_run_dir(opts.out, opts.exist_ok)
    try:
        model, trained = train()
        return run_export(trained, dataclasses.replace(opts, exist_ok=True), model=model)
    except BaseException:
        if made:
            remove_if_empty_run(opts.out, made)
        raise
