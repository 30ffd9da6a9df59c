"""Labelled image sources: ImageFolder trees, CIFAR-10/100 python pickles, the embedded digits.

Each reader is a ``torch.utils.data.Dataset`` of ``(PIL.Image RGB, label)`` with ``classes``;
the transform is applied by :class:`Transformed` so readers stay format-only.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError, describe

COMMON_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _pillow_extensions() -> tuple[str, ...]:
    """Every extension of a format Pillow can open (GIF, ICO, TGA, ... as well as the common ones)."""
    Image.init()
    found = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return COMMON_EXTENSIONS + tuple(sorted(found - set(COMMON_EXTENSIONS)))


IMG_EXTENSIONS = _pillow_extensions()


def image_files(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(images, other files) in ``folder``; hidden files are neither."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    images, other = [], []
    for p in sorted(found):
        if p.name.startswith(".") or p.is_dir():
            continue
        (images if p.suffix.lower() in IMG_EXTENSIONS else other).append(p)
    return images, other


def warn_skipped(folder: Path, other: list[Path]) -> None:
    """Say which files were not read as images, instead of skipping them without a word."""
    if other:
        from rich.markup import escape

        from ..progress import say

        kinds = sorted({p.suffix.lower() or "(no extension)" for p in other})
        say(f"[yellow]note:[/] {escape(str(folder))}: skipped {len(other)} file(s) that are not images "
            f"({escape(', '.join(kinds[:6]))}), e.g. {escape(str(other[0]))}")


def image_bytes(path: Path) -> bytes:
    """The raw bytes of an image file; unreadable files (a symlink loop, no permission) are a DataError."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"image {path} cannot be read ({describe(e)})",
                        "remove or replace that file; edgevit does not skip images silently") from e


def image_mode(path: Path) -> str:
    """Pillow's mode of an image ('RGB', 'L', ...) without decoding its pixels."""
    try:
        with Image.open(path) as im:
            return im.mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _undecodable(path, e) from e


def _undecodable(path: Path, e: BaseException) -> DataError:
    return DataError(f"image {path} cannot be decoded ({describe(e)})",
                     "remove or replace that file; edgevit does not skip images silently")


class ImageFolder(Dataset):
    """``root/<class>/<image>`` with classes sorted by name (ImageNet wnids sort into class order)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist", "check the path given to --data")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.samples: list[tuple[Path, int]] = []
        skipped: list[Path] = []
        for idx, cls in enumerate(self.classes):
            files, other = image_files(self.root / cls, recursive=True)
            self.samples += [(p, idx) for p in files]
            skipped += other
        warn_skipped(self.root, skipped)
        if not self.samples:
            raise DataError(
                f"data folder {self.root} holds no images in class sub-folders",
                f"lay it out as {self.root}/<class_name>/<image>{{{','.join(IMG_EXTENSIONS[:4])},...}}",
            )
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return load_image(path), label


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise _undecodable(path, e) from e


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: numpy arrays and builtins, nothing that runs code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR python batch -> (N,32,32,3) uint8 and labels; N is taken from the arrays."""
    fix = "point --data at an unpacked cifar-10-batches-py or cifar-100-python folder (the 'python version')"
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as e:
        raise DataError(f"CIFAR file {path} does not exist", fix) from e
    except Exception as e:
        raise DataError(f"{path} is not a CIFAR pickle ({describe(e)})", fix) from e
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR pickle (holds {type(d).__name__}, not a dict)", fix)
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    labels = d.get("labels", d.get("fine_labels"))
    data = d.get("data")
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR batch: no 'data' and 'labels'/'fine_labels' keys "
                        f"(found {sorted(d)[:6]})", fix)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DataError(f"{path}: 'data' is {data.dtype}{list(data.shape)} with {len(labels)} labels; "
                        "a CIFAR batch holds uint8 N×3072 rows and N labels", fix)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), [int(x) for x in labels]


def is_cifar(path: Path) -> bool:
    """The one CIFAR detector: CIFAR-10 (``data_batch_*``/``test_batch``) or CIFAR-100 (``train``/``test``)
    pickles in the folder."""
    return any((Path(path) / f).is_file() for f in ("data_batch_1", "test_batch", "train", "test"))


class Cifar(Dataset):
    """CIFAR-10 (``data_batch_*``/``test_batch``) or CIFAR-100 (``train``/``test``) pickles."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        if (root / "test_batch").exists() or (root / "data_batch_1").exists():
            files = sorted(root.glob("data_batch_*")) if split == "train" else [root / "test_batch"]
            meta, key = root / "batches.meta", "label_names"
        elif (root / "train").is_file() or (root / "test").is_file():
            files = [root / ("train" if split == "train" else "test")]
            meta, key = root / "meta", "fine_label_names"
        else:
            raise DataError(f"{root} is not a CIFAR folder (no data_batch_*/test_batch or train/test files)",
                            "unpack cifar-10-python.tar.gz and point --data at cifar-10-batches-py")
        if not files:
            raise DataError(f"{root} has no {split} batches", "pass --split test, or add the data_batch_* files")
        parts = [read_cifar_batch(f) for f in files]
        self.images = np.concatenate([p[0] for p in parts])
        self.targets = [t for p in parts for t in p[1]]
        self.classes = _cifar_names(meta, key) or [str(i) for i in range(max(self.targets) + 1)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]), self.targets[i]


def _cifar_names(meta: Path, key: str) -> list[str] | None:
    if not meta.exists():
        return None
    try:
        with open(meta, "rb") as f:
            d = _CifarUnpickler(f, encoding="latin1").load()
        return [str(n) for n in d[key]]
    except Exception:
        return None  # label names are cosmetic; the indices are what count


class Digits(Dataset):
    """The embedded default: scikit-learn's 1,797 handwritten digits (8×8, shipped with the package).

    Real scans (UCI optdigits), 10 classes; upsampled to the model's size by the transform.
    """

    def __init__(self):
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise DataError("the embedded 'digits' data set needs scikit-learn",
                            "pip install scikit-learn (it comes with nncf)") from e
        d = load_digits()
        self.images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
        self.targets = [int(t) for t in d.target]
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i], mode="L").convert("RGB"), self.targets[i]


class Transformed(Dataset):
    """A subset of a reader with a transform applied: ``(tensor, label)``."""

    def __init__(self, base: Dataset, indices: Sequence[int] | None, transform: Callable | None):
        self.base, self.transform = base, transform
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.classes = getattr(base, "classes", None)
        self.targets = [base.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[self.indices[i]]
        return (self.transform(img) if self.transform else img), label
