"""edgevit's public Python API: one typed verb per stage. The ``edgevit`` command and the
benchmarks call these, so everything the CLI does, a script can do::

    from edgevit import api
    from edgevit.api import ExportOptions, ModelSpec

    spec = ModelSpec("deit_tiny", checkpoint="deit_tiny.pth", prune="evit:0.7")
    run_dir = api.export(spec, ExportOptions(targets=["onnx", "openvino-int8"], out="runs/ti",
                                             data="imagenet/val", options={"calib_size": 300}))

Every verb checks its inputs before any work and raises an :class:`~edgevit.errors.EdgeVitError`
(with ``what`` and ``fix``) on bad input, leaving nothing half-written behind.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ArtifactError
from .models import ModelEntry, ModelSpec
from .models import list_models as _zoo
from .report.device import merge_device_results
from .report.report import write_report
from .run.artifacts import bench_artifacts, validate_artifacts
from .run.export import ExportOptions, run_export
from .run.lit import LitOptions, run_lit
from .run.optimize import OptimizeOptions, run_optimize
from .run.quickstart import Plan, quickstart_recipe
from .run.recipe import Recipe, load_recipe, run_recipe, train_config
from .run.training import run_pruned, run_training
from .run.zeroshot import ZeroShotOptions, bake_only, run_zeroshot
from .targets import OptionField, Target, get_target, option_fields, read_manifest
from .targets import list_targets as _targets
from .targets.registry import quantize_targets
from .targets.tensorrt import TensorRtTarget
from .targets.trt_engine import EngineOptions
from .train.distill import DistillationError
from .train.engine import TrainConfig
from .train.lit import LitConfig

__all__ = ["ModelSpec", "ExportOptions", "TrainConfig", "Recipe", "EngineOptions", "export", "quantize", "prune",
           "train", "distill", "validate", "bench", "report", "run", "quickstart", "build_engine", "models",
           "targets", "target_options", "load_recipe", "train_config", "quantize_targets", "optimize",
           "OptimizeOptions", "ZeroShotOptions", "zeroshot", "bake_zeroshot", "lit", "LitOptions",
           "LitConfig"]


def export(spec: ModelSpec, opts: ExportOptions, model: torch.nn.Module | None = None) -> Path:
    """Export ``spec`` (with its transforms) to every target of ``opts``, check each artifact against
    PyTorch, validate on ``opts.data``, benchmark and write the report. Returns the run directory."""
    return run_export(spec, opts, model)


def quantize(spec: ModelSpec, opts: ExportOptions) -> Path:
    """int8 export: :func:`export` to the int8 targets of ``opts`` (default: :func:`quantize_targets`), with
    calibration, ``max_drop`` fallback or QAT as ``opts.options`` asks."""
    if not opts.targets:
        opts = dataclasses.replace(opts, targets=quantize_targets())
    return run_export(spec, opts)


def prune(spec: ModelSpec, transform: str, opts: ExportOptions, finetune_epochs: int = 0,
          finetune_lr: float = 1e-4) -> Path:
    """Apply ``transform`` (``evit:0.7``, ``tome:8``, ``evit:0.7+tome:4``) to ``spec``, optionally fine-tune
    the transformed model on ``opts.data`` (distilled from the dense one), then :func:`export`."""
    return run_pruned(dataclasses.replace(spec, prune=transform), opts, finetune_epochs, finetune_lr)


def train(spec: ModelSpec, cfg: TrainConfig, data: str, out: str | Path, split: str = "val",
          val_fraction: float = 0.2, resume: bool = False,
          exist_ok: bool = False) -> tuple[torch.nn.Module, ModelSpec]:
    """Train ``spec`` on ``data`` into run directory ``out`` (checkpoint each epoch; ``resume`` continues).
    Returns the trained model and the spec that rebuilds it from its saved weights."""
    return run_training(spec, cfg, data, Path(out), split=split, val_fraction=val_fraction, seed=cfg.seed,
                        resume=resume, exist_ok=exist_ok)


def distill(spec: ModelSpec, cfg: TrainConfig, data: str, out: str | Path, split: str = "val",
            val_fraction: float = 0.2, resume: bool = False,
            exist_ok: bool = False) -> tuple[torch.nn.Module, ModelSpec]:
    """DeiT distillation: :func:`train` with ``cfg.teacher`` (frozen) teaching ``cfg.distillation``
    (hard, soft) through the student's distillation token."""
    if cfg.distillation != "none" and not cfg.teacher:
        raise DistillationError("no teacher given", "pass --teacher NAME (and --teacher-checkpoint for local weights)")
    return train(spec, cfg, data, out, split, val_fraction, resume, exist_ok)


def optimize(spec: ModelSpec, opts: OptimizeOptions) -> dict[str, Any]:
    """Search token reduction × int8 × short fine-tunes for the fastest artifact of each runtime in
    ``opts.targets`` within ``opts.max_drop`` top-1 points of the dense float model (paired, on a
    held-out split). Latency of every candidate first, accuracy fastest first, fine-tunes only where
    they could beat the best so far; resumable (``opts.resume``) and bounded (``opts.time_budget_min``).
    Writes the front, plot, candidates, ``winner-<runtime>.yaml`` and the exported winners into
    ``opts.out`` and returns the summary; raises SearchError (after writing them) when a runtime has no
    candidate within budget, naming the best found."""
    return run_optimize(spec, opts)


def zeroshot(zopts: ZeroShotOptions, opts: ExportOptions, prune: str | None = None) -> Path:
    """Bake ``zopts`` (a CLIP/SigLIP/LiT model and a label set) into one classifier in ``opts.out/model``,
    then :func:`export` it (``prune``: token transforms of a timm ViT tower). Class list and templates are
    checked before any work, the weights as they load; the text embeddings are cached."""
    return run_zeroshot(zopts, opts, prune)


def bake_zeroshot(zopts: ZeroShotOptions, out: str | Path, exist_ok: bool = False) -> tuple[torch.nn.Module, ModelSpec]:
    """Only bake: ``out/model/zeroshot.safetensors`` and the :class:`ModelSpec` that rebuilds it
    (``ModelSpec("zeroshot_vit", checkpoint=that file)`` does too)."""
    return bake_only(zopts, Path(out), exist_ok)


def lit(tower: ModelSpec, opts: LitOptions) -> Path:
    """LiT: lock the image classifier ``tower``, tune a small open_clip text tower contrastively on captions
    from ``opts.data``'s class names × templates, save it as an open_clip folder (``opts.out/model``, which
    :func:`zeroshot` bakes) and compare its zero-shot top-1 with the tower's own head. Returns the run dir."""
    return run_lit(tower, opts)


def validate(artifacts: Sequence[str | Path], data: str, split: str = "test", limit: int | None = None,
             val_fraction: float = 0.2, seed: int = 0, batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Top-1/top-5 of each artifact and of its float model on the same images: drop, agreement, logit error."""
    return validate_artifacts([Path(a) for a in artifacts], data, split, limit=limit, val_fraction=val_fraction,
                              seed=seed, batch_size=batch_size)


def bench(artifacts: Sequence[str | Path], batch: int = 1, threads: int | None = None, warmup: int = 10,
          iters: int = 100, reference: bool = True, gpu: bool = True, rounds: int = 1,
          precision_pct: float | None = None) -> list[dict[str, Any]]:
    """Latency rows (p50/p90/p99, throughput, peak memory, size, noise, CPU), PyTorch eager first;
    ``rounds`` > 1 times everything in short interleaved rounds (random order) and adds each row's robust
    ``estimate_ms`` and ``ratio_vs_first`` (paired ratio against the first row, bootstrap 95 % interval,
    verdict: faster, slower or tied); with ``precision_pct`` the rounds go on (up to four times as many)
    until every ratio is known to that half-width."""
    return bench_artifacts([Path(a) for a in artifacts], batch=batch, threads=threads, warmup=warmup, iters=iters,
                           reference=reference, gpu=gpu, rounds=rounds, precision_pct=precision_pct)


def report(run_dir: str | Path, device_results: Sequence[str | Path] = ()) -> Path:
    """Write the run's report (JSON, Markdown, HTML + plot), first merging results measured on a device."""
    if device_results:
        merge_device_results(run_dir, list(device_results))
    return write_report(Path(run_dir))


def run(recipe: Recipe | str | Path, out: str | Path | None = None, exist_ok: bool = False) -> Path:
    """Run a recipe (a :class:`Recipe` or a YAML file): optional training, then :func:`export`."""
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if out is not None:
        r = dataclasses.replace(r, out=str(out))
    return run_recipe(r, exist_ok=exist_ok)


def quickstart(out: str | Path | None = None, exist_ok: bool = False,
               epochs: int | None = None) -> tuple[Path, Plan]:
    """The offline demo: a small DeiT-Ti trained on the embedded digits for as many epochs as fit a
    5-minute run here, exported to every target, validated, benchmarked and reported."""
    r, plan = quickstart_recipe(epochs=epochs)
    if out is not None:
        r = dataclasses.replace(r, out=str(out))
    return run_recipe(r, exist_ok=exist_ok), plan


def build_engine(artifact: str | Path, eopts: EngineOptions | None = None) -> dict[str, Any]:
    """Build the TensorRT engine of an exported tensorrt-* artifact on this machine (TensorRT and a GPU)."""
    art_dir, mf = read_manifest(artifact)
    target = get_target(mf["target"])
    if not isinstance(target, TensorRtTarget):
        raise ArtifactError(f"{art_dir} is a {mf['target']} artifact, not a TensorRT one",
                            "pass an artifacts/tensorrt-fp16 or artifacts/tensorrt-int8 directory")
    return target.build(art_dir, eopts)


def inspect(artifact: str | Path) -> dict[str, Any]:
    """The precision map of an artifact (a directory with manifest.json) or of an ONNX file: each op's
    compute precision, a summary and warnings ("why is my int8 engine not faster"); for OpenVINO IR the
    runtime graph compiled here; for a TensorRT engine, its per-layer view where known."""
    path = Path(artifact)
    if path.is_file() and path.suffix == ".onnx":
        from .precision import precision_map

        return {"target": None, "graph": precision_map(path)}
    art_dir, mf = read_manifest(path)
    return {**get_target(mf["target"]).inspect(art_dir), "artifact": str(art_dir)}


def models() -> list[ModelEntry]:
    """The model zoo's short names (any timm model name works as well)."""
    return _zoo()


def targets() -> list[Target]:
    """The export targets, in the table's order."""
    return _targets()


def target_options() -> dict[str, OptionField]:
    """Every target option: type, default and the targets that honour it."""
    return option_fields()
