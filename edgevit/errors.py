"""Typed errors. Every error names what was wrong and what to do about it.

The CLI turns any :class:`EdgeVitError` into one red line plus the hint and exit code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno as _errno


def describe(e: BaseException) -> str:
    """``Type: message`` of any exception, whole (never cut), and never empty.

    Some exceptions carry no message at all (a zero-byte checkpoint gives an ``EOFError`` with
    none), others span lines; both must still read as one clear sentence in an error message."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"{type(e).__name__}: {text}" if text else f"{type(e).__name__} (no message)"


def os_error_fix(e: OSError) -> str:
    """What to do about a failed file operation, from its errno."""
    return {
        _errno.ENOSPC: "free some space on that disk, or choose an --out on another disk",
        _errno.EDQUOT: "free some space (your disk quota is used up), or choose an --out elsewhere",
        _errno.EACCES: "choose a folder you can write to, or fix its permissions",
        _errno.EPERM: "choose a folder you can write to, or fix its permissions",
        _errno.EROFS: "that file system is read-only: choose an --out on a writable disk",
        _errno.ENAMETOOLONG: "use a shorter name (at most 255 bytes per path component)",
        _errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
        _errno.ELOOP: "the path runs through a symbolic-link loop: fix or remove the link",
    }.get(e.errno or 0, "check that the path exists, is writable and the disk has space")


class EdgeVitError(Exception):
    """Base class: ``what`` went wrong, ``fix`` says what to do."""

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what}\n  fix: {fix}")


class ModelError(EdgeVitError):
    """Unknown model name, bad architecture options."""


class CheckpointError(EdgeVitError):
    """Missing, corrupt or mismatching checkpoint file."""


class OfflineError(EdgeVitError):
    """Hub weights were asked for but cannot be downloaded."""


class DataError(EdgeVitError):
    """Unreadable or empty data sets, undecodable images, bad CIFAR files."""


class TargetError(EdgeVitError):
    """Unknown target, or a backend that is not installed."""


class ExportError(EdgeVitError):
    """The export ran but its result is wrong (e.g. outputs differ from PyTorch)."""


class RunDirError(EdgeVitError):
    """Output directory already exists, or is not a run directory."""


class RecipeError(EdgeVitError):
    """A recipe file that cannot be parsed or has a bad field."""


class ArtifactError(EdgeVitError):
    """A path that is not an edgevit artifact (no manifest, missing files)."""


class OptionError(EdgeVitError):
    """An option value out of range, or a combination of options that cannot work together."""


class OutputError(EdgeVitError):
    """An output path that cannot be created or written (permissions, disk full, name too long)."""


class ZeroShotError(EdgeVitError):
    """A bad class list or template, or a checkpoint that is not a usable two-tower (CLIP/SigLIP/LiT) model."""
