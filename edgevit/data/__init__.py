"""Data: where labelled images come from (``--data``) and how they are preprocessed.

``--data`` takes ``digits`` (the embedded default), a CIFAR-10/100 pickle folder, or an
ImageFolder tree. Preprocessing comes from the model's timm data config, stored in every manifest
so that validation reproduces it exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .readers import Cifar, Digits, ImageFolder, Transformed, is_cifar, load_image, read_cifar_batch

__all__ = [
    "Cifar", "Digits", "ImageFolder", "Transformed", "load_image", "read_cifar_batch",
    "open_source", "load_split", "train_part", "check_classes", "class_count", "source_classes", "split_indices",
    "data_config", "eval_transform", "make_loader", "EMBEDDED",
]

EMBEDDED = "digits"
SPLITS = ("train", "val", "test", "all", "holdout")
Opener = Callable[[Any, str], tuple[Dataset, bool]]  # open_source, or a caller's cache of it (one run's reader)


def open_source(source: str | Path, split: str) -> tuple[Dataset, bool]:
    """Reader for ``split`` of ``source``; the bool says whether the split is native to the source.

    Sources without their own held-out split (digits, a flat ImageFolder) return everything and
    ``False``, and :func:`load_split` carves a deterministic, stratified hold-out.
    """
    if str(source) == EMBEDDED:
        return Digits(), False
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source {path} does not exist",
                        f"pass an ImageFolder or CIFAR folder, or '{EMBEDDED}' for the embedded digits")
    if path.is_file():
        archive = path.name.endswith((".tar.gz", ".tgz", ".tar", ".zip", ".tar.xz", ".tar.bz2"))
        raise DataError(f"data source {path} is {'an archive' if archive else 'a file'}, not a folder",
                        f"unpack it first (e.g. tar -xzf {path.name}) and pass the folder it makes"
                        if archive else "pass the folder that holds the CIFAR batches or the class folders")
    if is_cifar(path):
        return Cifar(path, "train" if split == "train" else "test"), True  # val and test: the test batch
    sub = {"train": ["train"], "val": ["val", "validation", "test"], "test": ["test", "val", "validation"],
           "all": []}
    for name in sub[split]:
        if (path / name).is_dir():
            return ImageFolder(path / name), True
    have = [n for n in ("train", "val", "validation", "test") if (path / n).is_dir()]
    if have:
        raise DataError(f"{path} has no {split} split (found {', '.join(n + '/' for n in have)})",
                        f"add {path}/{sub[split][0] if sub[split] else split}/ or pass --split "
                        f"{'val' if split == 'train' else 'train'} (a folder without split sub-folders is "
                        "split by --val-fraction instead)")
    return ImageFolder(path), False


def split_indices(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified, deterministic train/val split: the same seed gives the same split everywhere.

    Classes with one image cannot be split; they are pooled and ``val_fraction`` of the pool goes to
    validation, so a folder with one image per class (ImageNet's 1,000-image sample) still gets a
    validation split of about ``val_fraction`` of its images."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}", "use e.g. --val-fraction 0.2")
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets)
    train, val, singles = [], [], []
    for c in np.unique(targets_arr):
        idx = np.flatnonzero(targets_arr == c)
        if len(idx) == 1:
            singles.append(int(idx[0]))
            continue
        rng.shuffle(idx)
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    if singles:
        pool = np.array(singles)
        rng.shuffle(pool)
        n_val = int(round(len(pool) * val_fraction))
        val += pool[:n_val].tolist()
        train += pool[n_val:].tolist()
    return sorted(train), sorted(val)


def train_part(source: str | Path, val_fraction: float = 0.2, seed: int = 0, holdout: float | None = None,
               part: str = "train", opener: Opener | None = None) -> list[int] | None:
    """Indices (into the source's train reader) of the images training and calibration may use, or
    with ``part="holdout"`` of the images carved out for choosing (``edgevit optimize``): with
    ``holdout`` a stratified fraction of the training images is set aside, so that a search chooses
    on images no fine-tune or calibration saw and is then confirmed on the source's own test split.
    None: every image of a native train split. ``opener``: :func:`open_source` or a cache of it."""
    base, native = (opener or open_source)(source, "train")
    pool = None if native else split_indices(base.targets, val_fraction, seed)[0]
    if not holdout:
        if part == "holdout":
            raise DataError("the holdout split needs a holdout fraction", "pass --holdout 0.2 (or another fraction)")
        return pool
    pool = list(range(len(base))) if pool is None else pool
    rest, carved = split_indices([base.targets[i] for i in pool], holdout, seed + 1)
    return [pool[i] for i in (carved if part == "holdout" else rest)]


def load_split(source: str | Path, split: str, transform=None, val_fraction: float = 0.2,
               seed: int = 0, limit: int | None = None, holdout: float | None = None,
               opener: Opener | None = None) -> Transformed:
    """``split`` of ``source`` with ``transform`` applied; ``limit`` takes a stratified subset.
    With ``holdout`` (a fraction), ``train`` leaves out the images of split ``holdout``
    (:func:`train_part`). ``opener`` opens the source's readers (default :func:`open_source`; a run
    passes its cache, so that each is read once)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}", "leave it out to use every image")
    base, native = (opener or open_source)(source, split if split in ("train", "val", "test") else
                                           "train" if split == "holdout" else "all")
    indices: list[int] | None = None
    if split == "holdout" or (split == "train" and holdout):
        indices = train_part(source, val_fraction, seed, holdout, part=split, opener=opener)
    elif not native and split != "all":
        train, val = split_indices(base.targets, val_fraction, seed)
        indices = train if split == "train" else val
    if limit is not None and limit < len(indices if indices is not None else base):
        pool = indices if indices is not None else list(range(len(base)))
        frac = limit / len(pool)
        _, keep = split_indices([base.targets[i] for i in pool], frac, seed)
        indices = [pool[i] for i in keep][:limit]
    ds = Transformed(base, indices, transform)
    if not len(ds):
        raise DataError(f"the {split} split of {source} is empty ({len(base)} images in all)",
                        "pass --split all to use every image, or add images" if split != "all"
                        else "add images")
    return ds


def class_count(ds: Dataset) -> int:
    """The classes of a reader or a split of one: its class names, else its largest label + 1."""
    names = getattr(ds, "classes", None)
    return len(names) if names else int(max(ds.targets)) + 1


def source_classes(source: str | Path, split: str, opener: Opener | None = None) -> int:
    """How many classes the labelled data ``source`` has (read from the reader of ``split``)."""
    base, _ = (opener or open_source)(source, split if split in ("train", "val", "test") else "all")
    return class_count(base)


def check_classes(source: str | Path, split: str, num_classes: int | None, opener: Opener | None = None) -> None:
    """Refuse labelled data with more classes than the model predicts (its accuracy would count
    labels the model can never output)."""
    if not num_classes:
        return
    n = source_classes(source, split, opener)
    if n > num_classes:
        raise DataError(f"{source} has {n} classes but the model predicts {num_classes}",
                        f"pass --num-classes {n} with weights trained for them, or data of the model's classes")


def data_config(model: torch.nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """The model's timm preprocessing, resized to ``img_size``; small images are not center-cropped."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    size = img_size or _model_img_size(model) or cfg["input_size"][-1]
    cfg["input_size"] = (3, size, size)
    if size <= 64:  # CIFAR/digits-sized inputs are whole images: cropping would cut content away
        cfg["crop_pct"] = 1.0
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _model_img_size(model: torch.nn.Module) -> int | None:
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None) if pe is not None else None
    if isinstance(size, (tuple, list)):
        return int(size[0])
    return int(size) if size else None


def eval_transform(cfg: dict[str, Any]):
    from timm.data import create_transform

    return create_transform(
        input_size=tuple(cfg["input_size"]), is_training=False, interpolation=cfg["interpolation"],
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop_pct=cfg["crop_pct"],
        crop_mode=cfg.get("crop_mode", "center"),
    )


def make_loader(ds: Dataset, batch_size: int = 64, shuffle: bool = False, workers: int = 0,
                seed: int = 0, drop_last: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=g,
                      drop_last=drop_last, persistent_workers=workers > 0)
