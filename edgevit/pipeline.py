"""The one pipeline: float model -> ONNX -> every target -> check -> validate -> bench -> report.

Run directory layout::

    run.json                     how the run was made (model, data, targets, versions, command)
    model/weights.safetensors    float weights when the run trained them
    artifacts/<target>/          model files + manifest.json, each renamed into place when complete
    results/validate.json        accuracy of every artifact vs the float model
    results/bench.json           latency rows, PyTorch eager first
    report.{json,md,html}, plot.png
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from . import __version__
from .bench.latency import bench_callable, bench_eager, bench_torch_gpu, default_threads
from .bench.validate import validate_runners
from .check import checked_outputs, finite_reference
from .data import EMBEDDED, check_classes, data_config, eval_transform, load_split
from .errors import ArtifactError, DataError, EdgeVitError, ExportError, OptionError, describe
from .manifest import (RUN_MANIFEST, command_line, create_run_dir, library_versions, now, probe_output,
                       remove_if_empty_run, staged_dir, write_json)
from .models import ModelSpec, count_params, create_model
from .progress import heartbeat, say
from .targets import MANIFEST, Target, export_onnx, get_target, read_manifest

@dataclass
class ExportOptions:
    targets: list[str]
    out: Path
    data: str | None = None
    split: str = "test"
    val_fraction: float = 0.2
    seed: int = 0
    exist_ok: bool = False
    validate_limit: int | None = None
    bench: bool = True
    batch: int = 1
    threads: int | None = None
    warmup: int = 10
    iters: int = 50
    check_images: int = 16
    quant: Any = None  # steps.quantize.QuantConfig for the int8 targets (defaults when None)
    target_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"tensorrt": EngineOptions(...)}
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in run.json (e.g. training facts)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    def check(self) -> None:
        """Every value and combination, before any work: one clear error naming the option."""
        from .data import SPLITS

        if not self.targets:
            raise OptionError("no --target given", "pass e.g. --target onnx (see `edgevit targets`)")
        twice = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if twice:
            raise OptionError(f"--target names {', '.join(twice)} more than once",
                              f"give each target once: --target {','.join(dict.fromkeys(self.targets))}")
        if self.split not in SPLITS:
            raise OptionError(f"--split {self.split!r} is not a split", f"use one of {', '.join(SPLITS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise OptionError(f"--val-fraction must be in (0, 1), got {self.val_fraction}",
                              "use e.g. --val-fraction 0.2")
        for flag, value, low in (("--limit", self.validate_limit, 1), ("--batch", self.batch, 1),
                                 ("--threads", self.threads, 1), ("--iters", self.iters, 1),
                                 ("--warmup", self.warmup, 0)):
            if value is not None and value < low:
                raise OptionError(f"{flag} must be at least {low}, got {value}",
                                  f"pass {flag} {max(low, 1)} or more" + (" (or leave it out)" if low else ""))


def check_images(data: str | None, data_cfg: dict, n: int, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Real images to compare each artifact with PyTorch: the user's data, else the embedded set."""
    ds = load_split(data or EMBEDDED, split if data else "val", eval_transform(data_cfg),
                    val_fraction=val_fraction, seed=seed, limit=n)
    return np.stack([ds[i][0].numpy() for i in range(min(n, len(ds)))]).astype(np.float32)


def export_artifact(target: Target, onnx_fp32: Path, final: Path, model: torch.nn.Module,
                    sample: np.ndarray, manifest: dict[str, Any], options: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Export one target into a staging folder, check it against PyTorch, then rename it in place.

    An artifact this machine cannot run (CoreML off macOS) is checked structurally by its target
    during export instead, and the manifest says why it was not run."""
    with staged_dir(final) as tmp:
        facts = target.export(onnx_fp32, tmp, options or {})
        if why := target.not_runnable():
            runtime: dict[str, Any] = {"runtime": f"not run here: {why}", "precision": target.precision}
            check: dict[str, Any] = {"skipped": why, "structure": "checked (see export.structure)"}
        else:
            runner = target.load(tmp)
            runtime, check = runner.info, checked_outputs(target, runner, model, sample, manifest, options or {})
        mf = {**manifest, "target": target.name, "backend": target.backend, "precision": target.precision,
              "runtime": runtime, "files": [p.name for p in target.files(tmp)],
              "size_bytes": target.size_bytes(tmp), "export": facts, "check_vs_pytorch": check,
              "created": now()}
        write_json(tmp / MANIFEST, mf)
    return mf


def check_export(spec: ModelSpec, opts: ExportOptions) -> list[Target]:
    """Every option, target and path of an export, checked before any work; returns the targets."""
    opts.check()
    targets = [get_target(t) for t in opts.targets]  # unknown targets and options fail before any work
    for t in targets:
        t.check_available()
    if opts.quant is not None:
        opts.quant.check()
    for t in targets:
        t.check_options(opts.quant)
    spec.check()
    probe_output(opts.out, opts.exist_ok)
    return targets


def run_export(spec: ModelSpec, opts: ExportOptions, model: torch.nn.Module | None = None) -> Path:
    """Export ``spec`` to every target in ``opts`` and validate, bench and report: returns the run dir."""
    targets = check_export(spec, opts)
    model = model if model is not None else create_model(spec)
    model.eval()
    cfg = data_config(model, spec.img_size)
    if opts.data:
        check_classes(opts.data, opts.split, getattr(model, "num_classes", None))
    sample = check_images(opts.data, cfg, opts.check_images, opts.split, opts.val_fraction, opts.seed)
    float_logits = finite_reference(model, sample, spec)
    options = _quant_options(opts, cfg, targets)  # calibration problems surface before the export
    options["float_logits"] = float_logits
    made = create_run_dir(opts.out, opts.exist_ok, need_bytes=_expected_bytes(model, targets))
    try:
        _export_all(spec, opts, model, targets, cfg, sample, options)
    except BaseException:
        if made:
            remove_if_empty_run(opts.out, made)
        raise
    return opts.out


def recorded_source(source: str | None) -> str | None:
    """A data source as run.json records it: a folder absolute (so the record holds from any working
    directory), the embedded set by name."""
    return source if source in (None, EMBEDDED) else os.path.abspath(os.path.expanduser(str(source)))


def _expected_bytes(model: torch.nn.Module, targets: list[Target]) -> int:
    """A rough size of what the run writes: the weights once per target, fp32, plus the reports."""
    return count_params(model) * 4 * len(targets) + (20 << 20)


def run_pruned(spec: ModelSpec, opts: ExportOptions, finetune_epochs: int = 0, finetune_lr: float = 1e-4) -> Path:
    """Token-pruned export: optionally fine-tune the pruned model first (distilled from the dense one)."""
    from .steps.prune import finetune

    if not finetune_epochs:
        return run_export(spec, opts)
    if not opts.data:
        raise DataError("--finetune-epochs needs labelled images", "pass --data (its train split is used)")
    return _train_then_export(spec, opts, lambda: finetune(spec, opts.data, opts.out, finetune_epochs, finetune_lr,
                                                           val_fraction=opts.val_fraction, seed=opts.seed))


def _train_then_export(spec: ModelSpec, opts: ExportOptions, train) -> Path:
    """``train()`` into the run directory, then export what it returns; a failure removes an empty run."""
    check_export(spec, opts)
    made = create_run_dir(opts.out, opts.exist_ok)
    try:
        model = train()
        return run_export(spec, dataclasses.replace(opts, exist_ok=True), model=model)
    except BaseException:
        if made:
            remove_if_empty_run(opts.out, made)
        raise


def _export_all(spec: ModelSpec, opts: ExportOptions, model: torch.nn.Module, targets: list[Target],
                cfg: dict[str, Any], sample: np.ndarray, options: dict[str, Any]) -> None:
    from .bench.report import print_summary, write_report

    run = {"edgevit": __version__, "created": now(), "command": command_line(), "model": spec.to_dict(),
           "params": count_params(model), "data_config": cfg, "data": recorded_source(opts.data), "split": opts.split,
           "targets": opts.targets, "versions": library_versions(), **opts.extra}
    if getattr(model, "edgevit_prune", None):
        run["prune"] = model.edgevit_prune
    write_json(opts.out / RUN_MANIFEST, run)
    base_manifest = {k: run[k] for k in ("edgevit", "command", "model", "params", "data_config", "versions", "prune")
                     if k in run}
    with tempfile.TemporaryDirectory(prefix="edgevit-onnx-") as tmp:
        onnx_fp32 = Path(tmp) / "float.onnx"
        say(f"exporting {spec.name} to ONNX (opset 17, dynamic batch)")
        base_manifest["onnx"] = export_onnx(model, cfg["input_size"][-1], onnx_fp32)
        options = {**options, "torch_model": model, "input_size": cfg["input_size"], **opts.target_options}
        if options["quant"].qat_epochs and any(t.precision == "int8" for t in targets):
            from .steps.qat import quantize_aware

            say(f"QAT: {options['quant'].qat_epochs} epoch(s) of quantization-aware fine-tuning on {escape(str(opts.data))}")
            options["qat_onnx"] = Path(tmp) / "qat.onnx"
            options["reference_model"], options["qat_facts"] = quantize_aware(
                model, spec.name, options["calib"].images, opts.data, cfg, options["quant"], opts.out,
                options["qat_onnx"], opts.val_fraction, opts.seed)
        manifests = []
        for t in targets:
            with heartbeat(f"exporting {t.name}"):  # off a terminal, a line at a steady pace
                mf = export_artifact(t, onnx_fp32, opts.out / "artifacts" / t.name, model, sample, base_manifest,
                                     options)
            manifests.append(mf)
            say(f"  [green]✓[/] {t.name:<14} {mf['size_bytes'] / 2**20:7.1f} MB  {_check_line(mf)}")
    art_dirs = [opts.out / "artifacts" / t.name for t in targets if not _skip(t)]
    if opts.data and art_dirs:
        validate_artifacts(art_dirs, opts.data, opts.split, model, opts.validate_limit, opts.val_fraction,
                           opts.seed, save_to=opts.out)
    if opts.bench and art_dirs:
        bench_artifacts(art_dirs, model, opts.batch, opts.threads, opts.warmup, opts.iters, save_to=opts.out)
    report = write_report(opts.out)
    print_summary(opts.out)
    _engine_notice(opts.out, manifests)
    say(f"[bold]report:[/] {escape(str(report))}")


def _check_line(mf: dict[str, Any]) -> str:
    c = mf["check_vs_pytorch"]
    if "skipped" in c:
        return f"structure checked, not run ({c['skipped']})"
    line = f"max|Δ| vs PyTorch {c['max_abs_diff']:.2e}  ({mf['runtime'].get('precision')})"
    return line + (f"\n    [yellow]warning: check is vacuous: {c['vacuous']}[/]" if "vacuous" in c else "")


def _skip(t: Target) -> bool:
    if why := t.not_runnable():
        say(f"[yellow]{t.name}: not validated or benchmarked here: {why}[/]")
        return True
    return False


def _engine_notice(out: Path, manifests: list[dict[str, Any]]) -> None:
    """Where TensorRT is missing: what was written, and the command that builds the engine on the device."""
    for mf in manifests:
        e, art = mf["export"], out / "artifacts" / mf["target"]
        if e.get("engine", {}).get("built") is False:
            say(f"[yellow bold]{mf['target']}: no TensorRT engine built here[/] "
                + escape(f"({e['engine']['reason']}).\n  Written: {art}/model.onnx (checked with ONNX Runtime) and "
                         f"build_engine.sh.\n  On the device: cd {art.name} && {e['trtexec']}\n"
                         f"  or on a Jetson: deploy/jetson/edgevit_jetson.sh --artifact {art}"))


def _quant_options(opts: ExportOptions, data_cfg: dict[str, Any], targets: list[Target]) -> dict[str, Any]:
    """Calibration (and, for --max-drop, control) images for the int8 targets that need them."""
    from .calibration import calibration_set, control_set
    from .steps.quantize import QuantConfig

    cfg = opts.quant or QuantConfig()
    int8 = [t for t in targets if t.precision == "int8"]
    options: dict[str, Any] = {"quant": cfg, "progress": say}
    if not int8 or not any(t.needs_calibration_for(cfg) or cfg.max_drop is not None or cfg.qat_epochs
                           for t in int8):
        return options
    source, allowed = cfg.calib, None
    if source is None:  # the training images of --data (its training part, when the split is carved)
        if not opts.data:
            raise DataError(f"{', '.join(t.name for t in int8)} need(s) calibration images, and neither --calib "
                            "nor --data was given", "pass --calib DIR with a few hundred of the images the model "
                            "will see (class sub-folders or flat), or --data")
        source = opts.data
        allowed = train_indices(source, opts.val_fraction, opts.seed)
    with heartbeat(f"calibration set from {source}"):
        calib = calibration_set(source, data_cfg, cfg.calib_size, cfg.calib_seed, allow_grey=cfg.calib_grey,
                                allowed=allowed)
    say(f"calibration: {len(calib.images)} images from {escape(str(source))} ({'cache' if calib.cached else 'built'} "
        f"{calib.key})")
    options["calib"] = calib
    if cfg.max_drop is not None:
        options["control"] = control_set(source, data_cfg, cfg.calib_size, cfg.control_size, cfg.calib_seed,
                                         allowed=allowed)
    return options


def train_indices(source: str, val_fraction: float, seed: int) -> list[int] | None:
    """Indices of a source's training part when validation carves it from the same images."""
    from .data import open_source, split_indices

    base, native = open_source(source, "train")
    return None if native else split_indices(base.targets, val_fraction, seed)[0]


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
    model = create_model(spec)
    if want and spec.checkpoint_sha256 != want:
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
    key = lambda mf: (json.dumps(mf["model"], sort_keys=True), json.dumps(mf["data_config"], sort_keys=True))
    first = key(manifests[0])
    for mf, p in zip(manifests[1:], paths[1:]):
        if key(mf) != first:
            raise ArtifactError(f"{p} was exported from another model or preprocessing than {paths[0]}",
                                "validate or bench the artifacts of one model at a time")
    return manifests[0]


def _merge_results(path: Path, new: dict[str, Any]) -> None:
    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**old, **new})


def spec_from_recipe(recipe) -> ModelSpec:
    m = recipe.model
    return ModelSpec(name=m.name, num_classes=m.num_classes, img_size=m.img_size, patch_size=m.patch_size,
                     checkpoint=m.checkpoint, pretrained=m.pretrained and not m.checkpoint, extra=dict(m.extra))


def run_recipe(recipe, exist_ok: bool = False) -> Path:
    """Run a :class:`~edgevit.recipe.Recipe`: optional training, then :func:`run_export`."""
    from .recipe import Recipe

    assert isinstance(recipe, Recipe)
    spec, d, b = spec_from_recipe(recipe), recipe.data, recipe.bench
    opts = ExportOptions(targets=list(recipe.targets), out=Path(recipe.out), data=d.source, split=d.split,
                         val_fraction=d.val_fraction, seed=d.seed, exist_ok=exist_ok, validate_limit=d.limit,
                         bench=b.enabled, batch=b.batch, threads=b.threads, warmup=b.warmup, iters=b.iters,
                         quant=recipe.quant, extra={"recipe": recipe.to_dict()},
                         target_options={"tensorrt": recipe.tensorrt} if recipe.tensorrt else {})
    if recipe.train is None:
        return run_export(spec, opts)
    if not d.source:
        raise ExportError("the recipe has a 'train' section but no 'data.source'",
                          "set data.source to 'digits', a CIFAR folder or an ImageFolder")
    return _train_then_export(spec, opts, lambda: run_training(
        spec, recipe.train, d.source, opts.out, split=d.split, val_fraction=d.val_fraction, seed=d.seed,
        exist_ok=True))


def run_training(spec: ModelSpec, cfg, data: str, out: Path, split: str = "val", val_fraction: float = 0.2,
                 seed: int = 0, resume: bool = False, exist_ok: bool = False) -> torch.nn.Module:
    """Train (or distill) ``spec`` on ``data`` into run directory ``out``; returns the trained model.

    ``spec.checkpoint`` is set to the saved weights (``out/model/weights.safetensors``) so that the
    model can be exported straight away.
    """
    from .models import sha256_file
    from .steps.distill import check_student, load_teacher
    from .steps.train import fit, seed_everything, train_transform

    out = Path(out)
    if cfg.drop_path:
        spec.extra = {**spec.extra, "drop_path_rate": cfg.drop_path}
    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    model = create_model(spec)
    dcfg = data_config(model, spec.img_size)
    train_ds = load_split(data, "train", train_transform(dcfg, cfg), val_fraction, seed)
    val_ds = load_split(data, split, eval_transform(dcfg), val_fraction, seed)
    n_cls = int(getattr(model, "num_classes", 0) or 0)
    if train_ds.classes and len(train_ds.classes) != n_cls:
        raise DataError(f"{data} has {len(train_ds.classes)} classes but {spec.name} was built for {n_cls}",
                          f"pass --num-classes {len(train_ds.classes)}")
    if len(set(train_ds.targets)) == 1:
        say(f"[yellow]warning:[/] the training images of {escape(str(data))} all have one label "
            f"({escape(str((train_ds.classes or ['0'])[train_ds.targets[0]]))}): the model can only learn to "
            "predict it. Check the folder layout (one sub-folder per class).")
    check_student(model, cfg.distillation, spec.name)  # before the (possibly downloaded) teacher
    teacher = (load_teacher(cfg.teacher, cfg.teacher_checkpoint, n_cls)
               if cfg.distillation != "none" else None)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 makes and writes the run directory
    made = False if resume or rank != 0 else create_run_dir(out, exist_ok)
    try:
        if rank == 0:
            write_json(out / RUN_MANIFEST, {
                "edgevit": __version__, "created": now(), "command": command_line(), "model": spec.to_dict(),
                "params": count_params(model), "data_config": dcfg, "data": recorded_source(data), "split": split,
                "train": dataclasses.asdict(cfg), "versions": library_versions(), "targets": []})
            say(f"training {spec.name} ({count_params(model) / 1e6:.2f} M params) on {escape(str(data))}: {len(train_ds)} "
                f"train / {len(val_ds)} {split} images, {cfg.epochs} epoch(s), distillation {cfg.distillation}")
        fit(model, train_ds, val_ds, cfg, out, dcfg, n_cls, spec.name, teacher=teacher, resume=resume,
            spec=spec.to_dict())
    except BaseException:
        if made:
            remove_if_empty_run(out, made)
        raise
    weights = out / "model" / "weights.safetensors"
    if rank == 0:
        _save_weights(model, weights)
    spec.checkpoint, spec.pretrained = str(weights.resolve()), False
    spec.checkpoint_sha256 = sha256_file(weights) if weights.exists() else None
    return model


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
