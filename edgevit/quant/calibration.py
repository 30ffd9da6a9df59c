"""Calibration sets for int8: drawn from the user's images, deterministic, cached.

``calibration_set(source, data_cfg, size)`` samples ``size`` images per class in turn (round-robin
over classes, shuffled with ``seed``), preprocesses them exactly as validation does (the model's
timm data config) and returns a float32 NCHW array. ``source`` is anything ``--data`` takes
(``digits``, a CIFAR folder, an ImageFolder) or a flat folder of unlabelled images.

The array is cached under ``calibration/cache/<key>.npz``; the key hashes the chosen images' bytes
and the preprocessing, so other images or other preprocessing give another key (rebuilt, never
reused), and a cache file whose stored preprocessing does not match is rebuilt too.
The images left over after sampling (the same classes, disjoint from the calibration images) form
the *control* set that ``--max-drop`` validates on, so tuning never touches the test split.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import EMBEDDED, Opener, eval_transform, open_source
from ..data.readers import IMG_EXTENSIONS, image_bytes, image_files, image_mode, is_cifar, load_image, warn_skipped
from ..errors import DataError
from ..manifest import atomic_path

DEFAULT_CACHE = "default"  # $EDGEVIT_CALIB_CACHE, else calibration/cache under the working directory
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass
class CalibSet:
    images: np.ndarray  # float32 (N, C, H, W), preprocessed
    key: str
    source: str
    cached: bool = False  # True when read back from the cache
    meta: dict[str, Any] = field(default_factory=dict)


class _Flat:
    """A folder of images without class sub-folders (calibration needs no labels)."""

    def __init__(self, root: Path):
        self.root = root
        images, other = image_files(root, recursive=False)
        warn_skipped(root, other)
        self.samples = [(p, 0) for p in images]
        self.targets = [0] * len(self.samples)
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return load_image(self.samples[i][0]), 0


def open_calibration_source(source: str | Path, opener: Opener | None = None):
    """(reader, labelled) for a calibration source; errors name the folder and the fix. ``opener``:
    :func:`~edgevit.data.open_source` or a run's cache of it (a labelled source is then read once)."""
    if str(source) != EMBEDDED:
        path = Path(source)
        if path.is_dir() and not any(p.is_dir() for p in path.iterdir() if not p.name.startswith(".")) \
                and not is_cifar(path):
            flat = _Flat(path)
            if not len(flat):
                raise DataError(f"calibration folder {path} holds no images",
                                f"put a few hundred representative images ({', '.join(IMG_EXTENSIONS[:4])}, "
                                "...) in it, in class sub-folders or flat")
            return flat, False
    try:
        reader, _ = (opener or open_source)(source, "train")
    except DataError as e:
        raise DataError(f"calibration source: {e.what}", e.fix) from e
    return reader, True



def sample_indices(targets: list[int], n: int, seed: int) -> list[int]:
    """``n`` indices taken class by class in turn (each class shuffled by ``seed``): balanced and
    deterministic; classes with fewer images simply run out first."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    queues = []
    for c in sorted(by_class):
        idx = np.array(by_class[c])
        rng.shuffle(idx)
        queues.append(list(idx))
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out += [int(q[depth]) for q in queues if depth < len(q)][: n - len(out)]
        depth += 1
    return out


def calibration_set(source: str | Path, data_cfg: dict[str, Any], size: int = 300, seed: int = 0,
                    cache_dir: str | Path | None = DEFAULT_CACHE, allow_grey: bool = False,
                    allowed: list[int] | None = None, opener: Opener | None = None) -> CalibSet:
    """``size`` preprocessed images from ``source`` (see the module docstring); raises
    :class:`DataError` for an empty source, too few images or images of the wrong channel count.
    ``allowed`` restricts the pool (the training part of a source that validation also splits);
    ``opener`` as in :func:`open_calibration_source`."""
    if size < 1:
        raise DataError(f"--calib-size must be at least 1, got {size}", "use e.g. --calib-size 300")
    reader, _ = open_calibration_source(source, opener)
    pool = list(range(len(reader))) if allowed is None else list(allowed)
    if len(pool) < size:
        raise DataError(f"calibration source {source} has {len(pool)} images, fewer than the {size} asked for",
                        f"add images, or pass --calib-size {len(pool)} (a few hundred is typical)")
    chosen = [pool[i] for i in sample_indices([reader.targets[i] for i in pool], size, seed)]
    _check_channels(reader, chosen, source, allow_grey or str(source) == EMBEDDED)
    key = _key(reader, chosen, data_cfg)
    meta = {"source": str(source), "size": size, "seed": seed, "preprocessing": _prep(data_cfg),
            "classes": len(set(reader.targets[i] for i in chosen))}
    if cache_dir == DEFAULT_CACHE:
        cache_dir = os.environ.get("EDGEVIT_CALIB_CACHE") or Path("calibration") / "cache"
    path = Path(cache_dir) / f"{key}.npz" if cache_dir else None
    if path is not None and (hit := _read_cache(path, meta)) is not None:
        return CalibSet(hit, key, str(source), cached=True, meta=meta)
    tf = eval_transform(data_cfg)
    images = np.stack([tf(reader[i][0]).numpy() for i in chosen]).astype(np.float32)
    if path is not None:
        _write_cache(path, images, meta)
    return CalibSet(images, key, str(source), cached=False, meta=meta)


def control_set(source: str | Path, data_cfg: dict[str, Any], exclude: int, size: int = 500,
                seed: int = 0, allowed: list[int] | None = None, opener: Opener | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Labelled images of ``source`` not among its first ``exclude`` calibration picks: (x, y)."""
    reader, labelled = open_calibration_source(source, opener)
    if not labelled:
        raise DataError(f"--max-drop needs labelled images, but calibration folder {source} has no class "
                        "sub-folders", "pass --calib a folder laid out as <class>/<image> (or a CIFAR folder)")
    pool = list(range(len(reader))) if allowed is None else list(allowed)
    order = [pool[i] for i in sample_indices([reader.targets[i] for i in pool], len(pool), seed)]
    rest = order[exclude:]
    if not rest:
        raise DataError(f"calibration source {source} has no images left for the accuracy check "
                        f"after the {exclude} calibration images", "add images or lower --calib-size")
    pick = [rest[i] for i in sample_indices([reader.targets[i] for i in rest], min(size, len(rest)), seed + 1)]
    tf = eval_transform(data_cfg)
    x = np.stack([tf(reader[i][0]).numpy() for i in pick]).astype(np.float32)
    return x, np.array([reader.targets[i] for i in pick])


def _check_channels(reader, chosen: list[int], source, allow_grey: bool) -> None:
    samples = getattr(reader, "samples", None)
    if allow_grey or samples is None:
        return  # CIFAR arrays are RGB by construction
    grey = []
    for i in chosen:
        path = samples[i][0]
        if image_mode(path) in GREY_MODES:
            grey.append(path)
    if len(grey) * 2 > len(chosen):
        raise DataError(
            f"{len(grey)} of the {len(chosen)} calibration images in {source} have one channel "
            f"(e.g. {grey[0]}), but the model takes 3-channel RGB: int8 ranges measured on grey images "
            "do not fit colour inputs",
            "calibrate on the kind of images the model will see, or pass --calib-grey if the model "
            "really is fed grey images replicated to RGB")


def _prep(data_cfg: dict[str, Any]) -> dict[str, Any]:
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return {k: data_cfg.get(k) for k in keys}


def _key(reader, chosen: list[int], data_cfg: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(_prep(data_cfg), sort_keys=True).encode())
    samples = getattr(reader, "samples", None)
    for i in chosen:
        if samples is not None:
            h.update(image_bytes(samples[i][0]))
        elif hasattr(reader, "images"):
            h.update(np.ascontiguousarray(reader.images[i]).tobytes())
        else:
            h.update(np.asarray(reader[i][0]).tobytes())
    return h.hexdigest()[:20]


def _read_cache(path: Path, meta: dict[str, Any]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            if stored.get("preprocessing") != meta["preprocessing"] or stored.get("size") != meta["size"]:
                return None  # made with other preprocessing: rebuild, never reuse
            return z["images"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None  # unreadable cache: rebuild


def _write_cache(path: Path, images: np.ndarray, meta: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, images=images, meta=np.array(json.dumps(meta)))
