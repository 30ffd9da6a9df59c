"""Typed errors. Every error names what was wrong and what to do about it.

The CLI turns any :class:`EdgeVitError` into one red line plus the hint and exit code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


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
