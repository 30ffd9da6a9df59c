"""Artifacts after export: load one, validate several against their float model, bench them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import transforms
from ..data import check_classes
from ..errors import ArtifactError, EdgeVitError, ExportError, describe
from ..eval.latency import bench_callable, bench_eager, bench_torch_gpu, default_threads
from ..eval.validate import validate_runners
from ..manifest import write_json
from ..models import ModelSpec
from ..targets import Target, get_target, read_manifest


def load_artifact(path: str | Path, threads: int | None = None):
    """(target, runner, manifest, directory) for an artifact directory or a file in it."""
    art_dir, mf = read_manifest(path)
    target = get_target(mf["target"])
    target.check_available()
    return target, open_runner(target, art_dir, threads), mf, art_dir


def open_runner(target: Target, art_dir: Path, threads: int | None = None):
    """Load an artifact's model files; a truncated or corrupt file is an ArtifactError naming it."""
    try:
        return target.load(art_dir, threads)
    except EdgeVitError:
        raise
    except Exception as e:  # noqa: BLE001 - each runtime raises its own kinds for a broken file
        raise ArtifactError(f"artifact {art_dir}: {target.model_file or 'its model file'} cannot be loaded by "
                            f"{target.backend} ({describe(e)})",
                            "its model file is truncated or corrupt: re-run the export that made it") from e


def float_model_for(mf: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the float PyTorch model an artifact was exported from (weights checked by hash)."""
    spec = ModelSpec.from_dict(mf["model"])
    want = spec.checkpoint_sha256
    model, built, _ = transforms.build_model(spec)
    if want and built.checkpoint_sha256 != want:
        raise ExportError(f"checkpoint {spec.checkpoint} changed since the export (sha256 differs)",
                          "restore the checkpoint the artifact was made from, or re-export")
    return model


def validate_artifacts(paths: list[Path], data: str, split: str = "test", model: torch.nn.Module | None = None,
                       limit: int | None = None, val_fraction: float = 0.2, seed: int = 0,
                       batch_size: int = 64, save_to: Path | None = None) -> dict[str, dict[str, Any]]:
    loaded = [load_artifact(p) for p in paths]
    mf0 = _same_model([mf for _, _, mf, _ in loaded], paths)
    model = model if model is not None else float_model_for(mf0)
    check_classes(data, split, getattr(model, "num_classes", None))
    runners = {mf["target"]: runner for _, runner, mf, _ in loaded}
    res = validate_runners(runners, model, mf0["data_config"], data, split, batch_size, limit, val_fraction, seed)
    for _, runner, mf, art_dir in loaded:
        res[mf["target"]].update(precision=mf["precision"], runtime_precision=runner.info.get("precision"),
                                 artifact=str(art_dir))
    if save_to is not None:
        _merge_results(save_to / "results" / "validate.json", res)
    return res


def bench_artifacts(paths: list[Path], model: torch.nn.Module | None = None, batch: int = 1,
                    threads: int | None = None, warmup: int = 10, iters: int = 50, reference: bool = True,
                    save_to: Path | None = None, min_seconds: float = 0.0, gpu: bool = True) -> list[dict[str, Any]]:
    """Latency rows: PyTorch eager (the reference) first, then each artifact, same input and threads.

    On a machine with a CUDA GPU (and ``gpu``), PyTorch on the GPU (fp32, fp16, fp16 + torch.compile)
    follows the reference; ONNX Runtime artifacts run on its CUDA provider where onnxruntime-gpu is
    installed, and TensorRT artifacts run their engines."""
    threads = threads or default_threads()
    mfs = [read_manifest(p) for p in paths]
    _same_model([mf for _, mf in mfs], paths)
    size = mfs[0][1]["data_config"]["input_size"]
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    rows = []
    if reference:
        model = model if model is not None else float_model_for(mfs[0][1])
        rows.append(bench_eager(model, x, threads, warmup, iters, min_seconds))
        if gpu and torch.cuda.is_available():  # the GPU table: PyTorch fp32/fp16/compile beside the engines
            rows += [r for r in bench_torch_gpu(model, x, warmup, iters, min_seconds) if "p50_ms" in r]
    for art_dir, mf in mfs:
        target = get_target(mf["target"])
        info: dict[str, Any] = {}

        def make(target=target, art_dir=art_dir, info=info):
            runner = open_runner(target, art_dir, threads)
            info.update(runner.info)
            return runner

        row = bench_callable(make, x, warmup, iters, target.name, min_seconds)
        rows.append({"name": target.name, "backend": target.backend, "precision": target.precision,
                     "runtime_precision": info.get("precision"), "runtime": info.get("runtime"),
                     "size_mb": mf["size_bytes"] / 2**20, "artifact": str(art_dir), **row})
    for r in rows:
        r.update(batch=batch, threads=threads, input_size=list(size))
        if reference:
            r["speedup_vs_eager"] = rows[0]["p50_ms"] / r["p50_ms"]
    if save_to is not None:
        _merge_results(save_to / "results" / "bench.json", {r["name"]: r for r in rows})
    return rows


def _same_model(manifests: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """Artifacts compared in one table must come from one float model and one preprocessing."""
    def key(mf: dict[str, Any]) -> tuple[str, str]:
        return json.dumps(mf["model"], sort_keys=True), json.dumps(mf["data_config"], sort_keys=True)

    first = key(manifests[0])
    for mf, p in zip(manifests[1:], paths[1:]):
        if key(mf) != first:
            raise ArtifactError(f"{p} was exported from another model or preprocessing than {paths[0]}",
                                "validate or bench the artifacts of one model at a time")
    return manifests[0]


def _merge_results(path: Path, new: dict[str, Any]) -> None:
    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**old, **new})
