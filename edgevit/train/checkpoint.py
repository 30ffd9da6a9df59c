"""Training checkpoints: written atomically every epoch, read back with ``weights_only=True``.

A checkpoint is only renamed over the previous one after it has been written completely, read
back, and found finite, so the last good checkpoint survives a crash, a full disk or a diverged run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, describe
from ..manifest import atomic_path

FORMAT = "edgevit-train"
VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Atomically replace ``path`` with ``state`` (which must hold only tensors and plain values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(f"weights became non-finite ({', '.join(bad[:3])}); the checkpoint at {path} "
                                 "from the last good epoch is kept: resume from it with a lower --lr")
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        torch.load(tmp, map_location="cpu", weights_only=True)  # what we wrote reads back
    return path


def load_checkpoint(path: Path, model_name: str) -> dict[str, Any]:
    """Read a training checkpoint for ``model_name``; foreign or corrupt files are refused clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist",
                              "start without --resume, or pass the --out of the run to continue")
    if path.stat().st_size == 0:
        raise CheckpointError(f"training checkpoint {path} is empty (0 bytes): the run was killed while saving it",
                              "delete it to start over (the run's weights are in model/)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"training checkpoint {path} cannot be read ({describe(e)})",
                              "it is corrupt; delete it to start over (the run's weights are in model/)") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an edgevit training checkpoint",
                              "--resume continues runs made by `edgevit train/distill`; to start from other "
                              "weights use --checkpoint")
    if state.get("model_name") != model_name:
        raise CheckpointError(f"{path} was saved while training {state.get('model_name')!r}, not {model_name!r}",
                              f"resume with --model {state.get('model_name')}, or choose another --out")
    return state
