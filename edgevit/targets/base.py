"""What every backend implements: export from the float ONNX, load, predict.

A target writes its files into a directory it is given (a temporary one: the pipeline renames it
into place only once the files are complete and checked), and loads them back as a
:class:`Runner`, a callable from a float32 NCHW batch to float32 logits.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ArtifactError, TargetError
from ..manifest import read_json

MANIFEST = "manifest.json"


@dataclass
class Runner:
    """A loaded artifact: ``runner(x)`` -> logits, plus what the runtime actually chose."""

    predict: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.predict(np.ascontiguousarray(x, dtype=np.float32))


class Target:
    """One backend at one precision. Subclasses set ``backend``, ``requires`` and the three verbs."""

    backend: str = ""
    requires: tuple[str, ...] = ()  # python modules that must import
    model_file: str = ""  # the main file inside the artifact directory

    def __init__(self, name: str, precision: str, description: str):
        self.name, self.precision, self.description = name, precision, description

    # -- the three verbs ---------------------------------------------------------------
    def export(self, onnx_fp32: Path, out_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
        """Write the artifact's files into ``out_dir``; return facts for the manifest."""
        raise NotImplementedError

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def not_runnable(self) -> str | None:
        """Why this machine cannot run the artifact (then it is checked structurally), or None."""
        return None

    def needs_calibration_for(self, cfg) -> bool:
        return False

    def check_options(self, cfg) -> None:
        """Refuse options this target cannot honour here, before any work."""

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def check_available(self) -> None:
        if miss := self.missing():
            raise TargetError(f"target {self.name!r} needs {', '.join(miss)}, which is not installed",
                              f"pip install {' '.join(miss)}")

    def files(self, art_dir: Path) -> list[Path]:
        return sorted(p for p in art_dir.iterdir() if p.is_file() and p.name != MANIFEST)

    def size_bytes(self, art_dir: Path) -> int:
        return sum(p.stat().st_size for p in self.files(art_dir))


REQUIRED_KEYS = ("target", "model", "data_config", "precision")


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Artifact directory (or a file inside it) -> (directory, manifest); a broken artifact (corrupt
    or incomplete manifest, missing model file) is an ArtifactError naming what is wrong."""
    p = Path(path)
    art_dir = p if p.is_dir() else p.parent
    mf = art_dir / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{p} is not an edgevit artifact (no {MANIFEST} beside it)",
                            "pass a directory made by `edgevit export`, e.g. runs/<name>/artifacts/onnx")
    fix = "re-run the export that made it (artifacts are never edited by hand)"
    data = read_json(mf, "manifest", fix, ArtifactError)
    if not isinstance(data, dict):
        raise ArtifactError(f"{mf} holds no manifest (a JSON {type(data).__name__}, not an object)", fix)
    if missing := [k for k in REQUIRED_KEYS if k not in data]:
        raise ArtifactError(f"{mf} is incomplete: no {', '.join(repr(k) for k in missing)}", fix)
    lost = [f for f in data.get("files", []) if not (art_dir / f).exists()]  # a CoreML package is a folder
    if lost:
        raise ArtifactError(f"artifact {art_dir} is missing {', '.join(lost)} (listed in its manifest)", fix)
    return art_dir, data
