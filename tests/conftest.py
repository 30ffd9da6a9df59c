"""Shared fixtures: tiny models (2 blocks, 32 px, patch 8) and small data sets the tests write."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("EDGEVIT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("COLUMNS", "200")  # rich tables unwrapped, so tests can read them
if "EDGEVIT_CALIB_CACHE" not in os.environ:  # calibration caches stay out of the working tree
    import atexit
    import shutil
    import tempfile

    os.environ["EDGEVIT_CALIB_CACHE"] = tempfile.mkdtemp(prefix="edgevit-calib-")
    atexit.register(shutil.rmtree, os.environ["EDGEVIT_CALIB_CACHE"], ignore_errors=True)  # left nowhere after the run

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_spec(**kw):
    from edgevit.models import ModelSpec

    base = dict(name="deit_tiny", num_classes=10, img_size=32, patch_size=8, extra={"depth": 2})
    base.update(kw)
    return ModelSpec(**base)


@pytest.fixture
def spec():
    return tiny_spec()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model(tiny_spec())
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    return path


def export_pruned(out: Path, checkpoint: Path, targets) -> Path:
    """``targets`` of an EViT-pruned tiny DeiT, calibrated on 16 digits images, validated on 40 (no bench:
    the tests elsewhere time artifacts)."""
    from edgevit.run.export import ExportOptions, run_export

    run_export(tiny_spec(checkpoint=str(checkpoint), prune="evit:0.5@1"),
               ExportOptions(targets=list(targets), out=out, data="digits", split="val", validate_limit=40,
                             bench=False, options=dict(calib_size=16)))
    return out


def artifact_manifest(run: Path, target: str) -> dict:
    return json.loads((run / "artifacts" / target / "manifest.json").read_text())


def write_cifar(root: Path, n_train: int = 40, n_test: int = 20, bytes_keys: bool = True) -> Path:
    """A CIFAR-10-format folder (python pickles, protocol 2) with random images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(n):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)],
             "batch_label": "test", "filenames": [f"{i}.png" for i in range(n)]}
        return {k.encode(): v for k, v in d.items()} if bytes_keys else d

    for i in range(1, 3):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 2), f, protocol=2)
    with open(root / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    return root


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    return write_cifar(tmp_path / "cifar")


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")
