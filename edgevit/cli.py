"""The ``edgevit`` command: a thin typer layer over the Python API (edgevit.pipeline)."""
from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from .errors import EdgeVitError, describe, os_error_fix
from .progress import console as err
from .progress import stdout_console, table

app = typer.Typer(
    help="Vision Transformers from training to the edge device.\n\n"
         "Start offline with `edgevit quickstart`; export a model with "
         "`edgevit export --model deit_tiny --target openvino --checkpoint weights.pth --data val/`.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = stdout_console()


def print_error(what: str, fix: str | None = None) -> None:
    """One red ``error:`` line and a ``fix:`` line; user text is never read as rich markup."""
    err.print(Text.assemble(("error: ", "bold red"), what), soft_wrap=True)
    if fix:
        err.print(Text.assemble(("fix: ", "yellow"), fix), soft_wrap=True)


# File-system failures that are the environment's, not a bug's: a full disk, no permission, a
# name too long. Anything else keeps its traceback.
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG,
               errno.ENOTDIR, errno.ELOOP, errno.EISDIR}


def friendly(fn):
    """EdgeVitError -> one clear red message and exit code 2; Ctrl-C -> exit 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeVitError as e:
            print_error(e.what, e.fix)
            raise typer.Exit(e.exit_code)
        except OSError as e:
            if e.errno not in _ENV_ERRNOS:
                raise
            verb = "write" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
            where = f" {e.filename}" if e.filename else ""
            print_error(f"cannot {verb}{where}: {e.strerror or describe(e)}", os_error_fix(e))
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("interrupted: unfinished artifacts were removed; completed ones are kept", style="bold red")
            raise typer.Exit(130)
    return wrapper


def _split_targets(values: List[str]) -> List[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def _default_out(model: str, targets: List[str]) -> Path:
    return _fresh(Path("runs") / f"{model}-{'+'.join(targets) if len(targets) <= 2 else 'multi'}")


def _fresh(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : a default output never clobbers an earlier run."""
    path, i = base, 2
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


@app.command()
@friendly
def models():
    """List the model zoo's short names (any timm model name works as well)."""
    from .models import list_models

    t = table("name", "timm model", "family", "params M", "ImageNet top-1", "note", title="edgevit models")
    for m in list_models():
        t.add_row(m.name, m.timm_name, m.family, f"{m.params_m:.1f}",
                  f"{m.imagenet_top1:.1f}" if m.imagenet_top1 else "—", m.note)
    out.print(t)


@app.command()
@friendly
def targets():
    """List export targets, their backend and whether it is installed here."""
    from .targets import PLANNED, list_targets

    t = table("target", "backend", "precision", "status", "what it makes", title="edgevit targets")
    for tg in list_targets():
        miss = tg.missing()
        t.add_row(tg.name, tg.backend, tg.precision,
                  "[green]ready[/]" if not miss else f"[red]needs {', '.join(miss)}[/]", tg.description)
    for name, what in PLANNED.items():
        t.add_row(f"[dim]{name}[/]", "", "", "[dim]not built yet[/]", f"[dim]{what}[/]")
    out.print(t)


INT8 = "int8 (calibration, --max-drop, QAT)"
DEVICE = "TensorRT engines and CoreML packages"


def _export_command(default_targets: List[str], doc: str):
    """export and quantize share every option; only the default targets and the help differ."""

    def command(
        model: str = typer.Option("deit_tiny", "--model", "-m", help="zoo short name (`edgevit models`) or any timm name"),
        target: List[str] = typer.Option(default_targets, "--target", "-t", help="one or more targets, repeat or comma-separate (`edgevit targets`)"),
        checkpoint: Optional[Path] = typer.Option(None, help="local weights: timm/DeiT .pth (with or without a 'model' key) or .safetensors"),
        pretrained: bool = typer.Option(True, help="download timm's hub weights when no --checkpoint is given (needs internet)"),
        num_classes: Optional[int] = typer.Option(None, help="classifier size (default: the model's, 1000)"),
        img_size: Optional[int] = typer.Option(None, help="input size, e.g. 32 for CIFAR-sized variants"),
        patch_size: Optional[int] = typer.Option(None, help="patch size, e.g. 4 at 32 px"),
        prune: Optional[str] = typer.Option(None, help="token pruning/merging before export: evit:KEEP[@BLOCKS] (e.g. evit:0.7@3,6,9) or tome:R (e.g. tome:8); see `edgevit prune`"),
        data: Optional[str] = typer.Option(None, help="labelled images to validate on: ImageFolder, CIFAR folder or 'digits'"),
        split: str = typer.Option("test", help="train | val | test | all"),
        limit: Optional[int] = typer.Option(None, help="validate on a stratified subset of this many images"),
        val_fraction: float = typer.Option(0.2, help="hold-out fraction for data without its own split (digits, a flat folder)"),
        seed: int = typer.Option(0, help="seed of that deterministic, stratified split"),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<model>-<target>)"),
        exist_ok: bool = typer.Option(False, help="write into an existing --out"),
        bench: bool = typer.Option(True, help="benchmark latency after export"),
        batch: int = typer.Option(1, help="benchmark batch size"),
        threads: Optional[int] = typer.Option(None, help="benchmark threads (default: all cores)"),
        calib: Optional[str] = typer.Option(None, help="images to calibrate on: a folder (class sub-folders or flat), CIFAR folder or 'digits' (default: the training images of --data)", rich_help_panel=INT8),
        calib_size: int = typer.Option(300, help="calibration images, drawn class by class, deterministic", rich_help_panel=INT8),
        calib_seed: int = typer.Option(0, help="seed of the class-by-class calibration draw", rich_help_panel=INT8),
        calib_grey: bool = typer.Option(False, help="accept a calibration set of mostly 1-channel images (models fed grey images as RGB)", rich_help_panel=INT8),
        calibrator: Optional[str] = typer.Option(None, help="minmax | percentile | entropy | distribution (default: the backend's measured best)", rich_help_panel=INT8),
        form: Optional[str] = typer.Option(None, help="onnx-int8 form: dynamic (default, fastest on CPU) | static (calibrated Q/DQ)", rich_help_panel=INT8),
        max_drop: Optional[float] = typer.Option(None, help="keep the most sensitive layers float until the top-1 drop on held-out calibration-source images is at most this many points", rich_help_panel=INT8),
        max_float: Optional[int] = typer.Option(None, help="at most this many layers kept float by --max-drop (default: half)", rich_help_panel=INT8),
        exclude: List[str] = typer.Option([], help="keep this layer float (ONNX node name, repeatable)", rich_help_panel=INT8),
        quantize_head: bool = typer.Option(False, help="quantize the classifier head too", rich_help_panel=INT8),
        quantize_norms: bool = typer.Option(False, help="also put Q/DQ on LayerNorm and Softmax inputs (aggressive; costs accuracy)", rich_help_panel=INT8),
        smooth_quant: Optional[float] = typer.Option(None, help="openvino-int8 SmoothQuant alpha (default NNCF's 0.95; -1 turns it off)", rich_help_panel=INT8),
        qat_epochs: int = typer.Option(0, help="quantization-aware fine-tuning epochs on --data's training images (NNCF); 0 = post-training only", rich_help_panel=INT8),
        qat_lr: float = typer.Option(1e-5, help="QAT learning rate (a fraction of the training one)", rich_help_panel=INT8),
        qat_batch_size: int = typer.Option(64, help="QAT batch size", rich_help_panel=INT8),
        qat_distill: bool = typer.Option(True, help="QAT also learns from the float model's logits (knowledge distillation)", rich_help_panel=INT8),
        max_batch: int = typer.Option(8, help="TensorRT: largest batch of the engine's dynamic-batch profile (opt = min = 1)", rich_help_panel=DEVICE),
        workspace_mb: int = typer.Option(1024, help="TensorRT: builder workspace limit in MiB (Jetson Orin Nano: 512-1024)", rich_help_panel=DEVICE),
        timing_cache: str = typer.Option("default", help="TensorRT: timing cache file reused across builds ('default': ~/.cache/edgevit/tensorrt/timing.cache; 'none': off)", rich_help_panel=DEVICE),
        coreml_w8a8: bool = typer.Option(False, help="coreml-int8: int8 activations as well as weights (calibrated on --calib; coremltools runs the model for it: macOS only)", rich_help_panel=DEVICE),
    ):
        from .models import ModelSpec
        from .pipeline import ExportOptions, run_export
        from .steps.quantize import QuantConfig
        from .targets.tensorrt import EngineOptions

        tgts = _split_targets(target)
        spec = ModelSpec(name=model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                         checkpoint=str(checkpoint) if checkpoint else None, pretrained=pretrained and not checkpoint,
                         prune=prune)
        quant = QuantConfig(calib=calib, calib_size=calib_size, calib_seed=calib_seed, calib_grey=calib_grey, calibrator=calibrator,
                            form=form, max_drop=max_drop, max_float=max_float, exclude=list(exclude),
                            quantize_head=quantize_head, quantize_norms=quantize_norms, smooth_quant=smooth_quant,
                            qat_epochs=qat_epochs, qat_lr=qat_lr, qat_batch_size=qat_batch_size, qat_distill=qat_distill,
                            coreml_w8a8=coreml_w8a8)
        engine = EngineOptions(max_batch=max_batch, workspace_mb=workspace_mb,
                               timing_cache=timing_cache).check()
        opts = ExportOptions(targets=tgts, out=out_dir or _default_out(model, tgts), data=data, split=split,
                             val_fraction=val_fraction, seed=seed, exist_ok=exist_ok, validate_limit=limit,
                             bench=bench, batch=batch, threads=threads, quant=quant,
                             target_options={"tensorrt": engine})
        run_export(spec, opts)

    command.__doc__ = doc
    return command


app.command("export")(friendly(_export_command(["onnx"], """Export a model to one or more targets, check each against PyTorch, validate, bench and report.

    Example (offline, with local weights):

        edgevit export --model deit_tiny --target onnx,openvino --checkpoint deit_tiny.pth --data imagenet/val
    """)))

app.command("quantize")(friendly(_export_command(["openvino-int8", "onnx-int8", "tensorrt-int8"], """int8 post-training quantization to every int8 target, validated against the float model.

    Calibrates on --calib (default: the training images of --data), keeps LayerNorm, Softmax and the
    head float, and with --max-drop keeps the most sensitive layers float until the top-1 drop on
    held-out images of the calibration source is within bound (the report lists them).

        edgevit quantize --model deit_tiny --checkpoint w.pth --data imagenet/ --calib imagenet/train --max-drop 0.5
    """)))


@app.command("prune")
@friendly
def prune_cmd(
    model: str = typer.Option("deit_tiny", "--model", "-m", help="a ViT/DeiT from the zoo or timm"),
    method: str = typer.Option("evit", help="evit (keep the most attended tokens, fuse the rest) | tome (merge similar tokens)"),
    keep_rate: float = typer.Option(0.7, help="EViT: fraction of patch tokens kept at each pruning block, in (0, 1]"),
    locations: Optional[str] = typer.Option(None, help="EViT: blocks that prune, comma-separated (default: a quarter, half and three quarters of depth, 3,6,9 for DeiT)"),
    r: int = typer.Option(8, help="ToMe: tokens merged in every block"),
    checkpoint: Optional[Path] = typer.Option(None, help="dense weights (.pth/.safetensors)"),
    pretrained: bool = typer.Option(True, help="hub weights when no --checkpoint (needs internet)"),
    num_classes: Optional[int] = typer.Option(None), img_size: Optional[int] = typer.Option(None),
    patch_size: Optional[int] = typer.Option(None),
    finetune_epochs: int = typer.Option(0, help="short fine-tune of the pruned model on --data, distilled from the dense one"),
    finetune_lr: float = typer.Option(1e-4, help="fine-tune learning rate"),
    target: List[str] = typer.Option(["onnx", "openvino"], "--target", "-t", help="targets to export to (int8 ones too)"),
    data: Optional[str] = typer.Option(None, help="labelled images: validation (and the fine-tune's training split)"),
    split: str = typer.Option("test", help="split to validate on"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<model>-<method>)"),
    exist_ok: bool = typer.Option(False, help="write into an existing --out"),
    bench: bool = typer.Option(True, help="benchmark latency after export"),
):
    """Token pruning (EViT) or merging (ToMe) with static shapes, then export, validate, bench and report.

        edgevit prune --model deit_tiny --checkpoint w.pth --method evit --keep-rate 0.7 --data imagenet/ --finetune-epochs 1
        edgevit prune --model deit_tiny --checkpoint w.pth --method tome --r 8 --target openvino,openvino-int8 --data imagenet/

    The same transform is `--prune evit:0.7` / `--prune tome:8` on `edgevit export` and `edgevit quantize`.
    """
    from .models import ModelSpec
    from .pipeline import ExportOptions, run_pruned
    from .steps.prune import parse_prune

    text = f"tome:{r}" if method == "tome" else f"evit:{keep_rate:g}" + (f"@{locations}" if locations else "")
    if method not in ("evit", "tome"):
        text = f"{method}:{r}"  # parse_prune names the accepted methods
    spec = ModelSpec(name=model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                     checkpoint=str(checkpoint) if checkpoint else None, pretrained=pretrained and not checkpoint,
                     prune=str(parse_prune(text)))
    tgts = _split_targets(target)
    opts = ExportOptions(targets=tgts, out=out_dir or _fresh(Path("runs") / f"{model}-{method}"), data=data,
                         split=split, exist_ok=exist_ok, bench=bench)
    run_pruned(spec, opts, finetune_epochs, finetune_lr)


@app.command()
@friendly
def validate(
    artifacts: List[Path] = typer.Argument(..., help="artifact directories (runs/<run>/artifacts/<target>)"),
    data: str = typer.Option(..., help="labelled images: ImageFolder, CIFAR folder or 'digits'"),
    split: str = typer.Option("test", help="train | val | test | all"),
    limit: Optional[int] = typer.Option(None, help="a stratified subset of this many images"),
    val_fraction: float = typer.Option(0.2, help="hold-out fraction for data without its own split"),
    seed: int = typer.Option(0, help="seed of that deterministic, stratified split"),
    batch_size: int = typer.Option(64),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the results here"),
):
    """Top-1/top-5 of each artifact and of its float PyTorch model on the same images: agreement, drop."""
    from .pipeline import validate_artifacts

    res = validate_artifacts(list(artifacts), data, split, limit=limit, val_fraction=val_fraction, seed=seed,
                             batch_size=batch_size)
    t = table("artifact", "images", "top-1", "float top-1", "drop pts", "agreement %", "top-5", "max |Δlogit|")
    for name, r in res.items():
        t.add_row(name, str(r["images"]), f"{r['top1']:.2f}", f"{r['float_top1']:.2f}", f"{r['top1_drop_pts']:+.2f}",
                  f"{r['agreement_pct']:.2f}", f"{r['top5']:.2f}", f"{r['max_abs_logit_diff']:.2e}")
    out.print(t)
    if json_out:
        from .manifest import write_json
        write_json(json_out, res)


@app.command("bench")
@friendly
def bench_cmd(
    artifacts: List[Path] = typer.Argument(..., help="artifact directories"),
    batch: int = typer.Option(1), threads: Optional[int] = typer.Option(None, help="default: all cores"),
    warmup: int = typer.Option(10), iters: int = typer.Option(100),
    reference: bool = typer.Option(True, help="include PyTorch eager as the reference row"),
    gpu: bool = typer.Option(True, help="on a CUDA machine, add PyTorch GPU rows (fp32, fp16, fp16 + torch.compile)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows here"),
):
    """Latency of artifacts: warm-up, then p50/p90/p99, throughput, peak memory, size; PyTorch eager first.

    On a CUDA machine the same table holds PyTorch on the GPU, ONNX Runtime's CUDA provider (with
    onnxruntime-gpu installed) and TensorRT engines."""
    from .pipeline import bench_artifacts

    rows = bench_artifacts(list(artifacts), batch=batch, threads=threads, warmup=warmup, iters=iters,
                           reference=reference, gpu=gpu)
    t = table("row", "precision", "p50 ms", "p90 ms", "p99 ms", "img/s", "× eager", "peak MB", "size MB")
    for r in rows:
        t.add_row(r["name"], str(r.get("runtime_precision")), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                  f"{r['p99_ms']:.2f}", f"{r['throughput_ips']:.1f}", f"{r.get('speedup_vs_eager', 1):.2f}",
                  f"{r['peak_mem_mb']:.0f}", f"{r['size_mb']:.1f}")
    out.print(t)
    if json_out:
        from .manifest import write_json
        write_json(json_out, rows)


@app.command()
@friendly
def report(run_dir: Path = typer.Argument(..., help="a run directory made by export/run/quickstart"),
           device_results: List[Path] = typer.Option([], "--device-results", "-d", help="JSON written on a device by deploy/jetson/edgevit_jetson.sh; merged into the run's results (repeatable)")):
    """Write report.json, report.md and report.html (with plot.png) for a run directory.

    Device results (e.g. TensorRT latency, power and temperature measured on a Jetson) are kept in
    the run's results/device.json, so later reports include them too:

        edgevit report runs/deit_tiny-tensorrt-int8 --device-results jetson.json
    """
    from .bench.device import merge_device_results
    from .bench.report import write_report

    if device_results:
        merged = merge_device_results(run_dir, device_results)
        out.print(f"device results: {merged}")
    path = write_report(run_dir)
    out.print(f"report: {path}")


@app.command()
@friendly
def engine(artifact: Path = typer.Argument(..., help="a tensorrt-fp16 or tensorrt-int8 artifact directory"),
           max_batch: int = typer.Option(8, help="largest batch of the dynamic-batch profile"),
           workspace_mb: int = typer.Option(1024, help="builder workspace limit in MiB"),
           timing_cache: str = typer.Option("default", help="timing cache file ('default': ~/.cache/edgevit/tensorrt/timing.cache; 'none': off)")):
    """Build the TensorRT engine of an exported artifact on this machine (needs TensorRT and a GPU).

    Export anywhere, build where the engine will run (engines are specific to the GPU and the
    TensorRT version):

        edgevit export --model deit_tiny --target tensorrt-int8 --checkpoint w.pth --data val/
        edgevit engine runs/deit_tiny-tensorrt-int8/artifacts/tensorrt-int8
    """
    from .errors import ArtifactError
    from .targets import get_target, read_manifest
    from .targets.tensorrt import EngineOptions, TensorRtTarget

    art_dir, mf = read_manifest(artifact)
    target = get_target(mf["target"])
    if not isinstance(target, TensorRtTarget):
        raise ArtifactError(f"{art_dir} is a {mf['target']} artifact, not a TensorRT one",
                            "pass an artifacts/tensorrt-fp16 or artifacts/tensorrt-int8 directory")
    opts = EngineOptions(max_batch=max_batch, workspace_mb=workspace_mb,
                         timing_cache=timing_cache).check()
    meta = target.build(art_dir, {"tensorrt": opts})
    out.print(f"engine: {art_dir / 'model.plan'} (TensorRT {meta['tensorrt']}, {meta['gpu']}, "
              f"{meta['build_s']:.0f} s)")


@app.command()
@friendly
def run(
    recipe: Path = typer.Argument(..., help="a recipe YAML (see recipes/)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="overrides the recipe's 'out'"),
    exist_ok: bool = typer.Option(False, help="write into an existing output directory"),
):
    """Run a recipe file: optional training, then export, validate, bench and report."""
    from .pipeline import run_recipe
    from .recipe import load_recipe

    r = load_recipe(recipe)
    if out_dir:
        r.out = str(out_dir)
    run_recipe(r, exist_ok=exist_ok)


def _train_config(recipe: Optional[Path], sets: List[str], resume_run: Optional[Path] = None,
                  model_name: str = "", **given):
    """TrainConfig from a recipe's train: section, then --set KEY=VALUE, then the explicit flags;
    with ``resume_run``, the run's own options, which those given must not change."""
    import dataclasses
    import difflib
    from typing import get_type_hints

    import yaml

    from .errors import RecipeError
    from .recipe import _convert, load_recipe
    from .steps.train import TrainConfig, resume_config

    base = load_recipe(recipe).train if recipe else None
    explicit = dataclasses.asdict(base) if base else {}
    hints = get_type_hints(TrainConfig)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RecipeError(f"--set {item!r} is not KEY=VALUE", "e.g. --set mixup=0.8")
        if key not in hints:
            close = difflib.get_close_matches(key, hints, n=1)
            raise RecipeError(f"--set: unknown training option {key!r}",
                              f"did you mean {close[0]!r}?" if close else f"known: {', '.join(hints)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML ({describe(e)})",
                              "quote it, or write numbers and lists as in a recipe") from e
        explicit[key] = _convert(hints[key], value, f"train.{key}", "--set")
    explicit.update({k: v for k, v in given.items() if v is not None})
    if resume_run is not None:
        return resume_config(resume_run, model_name, explicit)
    return TrainConfig(**explicit)


def _train_common(model, data, split, num_classes, img_size, patch_size, checkpoint, pretrained, out_dir,
                  resume, exist_ok, val_fraction, cfg) -> None:
    from .models import ModelSpec
    from .pipeline import run_training

    spec = ModelSpec(name=model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                     checkpoint=str(checkpoint) if checkpoint else None, pretrained=pretrained and not checkpoint)
    out = out_dir or (_fresh(Path("runs") / f"train-{model}") if not resume else None)
    if out is None:
        raise typer.BadParameter("--resume needs the --out of the run to continue")
    run_training(spec, cfg, data, out, split=split, val_fraction=val_fraction, seed=cfg.seed, resume=resume,
                 exist_ok=exist_ok)
    out_msg = Path(out) / "model" / "weights.safetensors"
    err.print(f"[bold]weights:[/] {out_msg}  (export: edgevit export --model {model} --checkpoint {out_msg}"
              + "".join(f" --{k} {v}" for k, v in (("num-classes", num_classes), ("img-size", img_size),
                                                    ("patch-size", patch_size)) if v) + ")", highlight=False)


_MODEL_OPTS = dict(
    data=typer.Option(..., help="training images: ImageFolder (train/ and val/ sub-folders or one folder), CIFAR folder, or 'digits'"),
    split=typer.Option("val", help="the split to evaluate on each epoch: val | test"),
    num_classes=typer.Option(None, help="classifier size (must match the data's classes)"),
    img_size=typer.Option(None, help="input size, e.g. 32 for CIFAR"),
    patch_size=typer.Option(None, help="patch size, e.g. 4 at 32 px"),
    checkpoint=typer.Option(None, help="start from these weights (.pth/.safetensors)"),
    pretrained=typer.Option(False, help="start from timm's hub weights (needs internet)"),
    out_dir=typer.Option(None, "--out", "-o", help="run directory (default runs/train-<model>)"),
    resume=typer.Option(False, help="continue the run in --out from its last finished epoch"),
    exist_ok=typer.Option(False, help="write into an existing --out"),
    epochs=typer.Option(None, help="epochs (default 5, or the recipe's)"),
    batch_size=typer.Option(None, help="batch size per process"),
    lr=typer.Option(None, help="peak learning rate (DeiT: 5e-4 × global batch / 512)"),
    val_fraction=typer.Option(0.2, help="hold-out fraction for data without its own val split"),
    seed=typer.Option(None, help="seed of the data split and of training (default 0, or the recipe's)"),
    recipe=typer.Option(None, help="take the training options from this recipe's train: section"),
    sets=typer.Option([], "--set", help="any training option as KEY=VALUE, e.g. --set mixup=0.8 --set ema_decay=0.9999"),
)


@app.command()
@friendly
def train(
    model: str = typer.Option(..., "--model", "-m", help="zoo short name or timm name"),
    data: str = _MODEL_OPTS["data"], split: str = _MODEL_OPTS["split"],
    num_classes: Optional[int] = _MODEL_OPTS["num_classes"], img_size: Optional[int] = _MODEL_OPTS["img_size"],
    patch_size: Optional[int] = _MODEL_OPTS["patch_size"], checkpoint: Optional[Path] = _MODEL_OPTS["checkpoint"],
    pretrained: bool = _MODEL_OPTS["pretrained"], out_dir: Optional[Path] = _MODEL_OPTS["out_dir"],
    resume: bool = _MODEL_OPTS["resume"], exist_ok: bool = _MODEL_OPTS["exist_ok"],
    epochs: Optional[int] = _MODEL_OPTS["epochs"], batch_size: Optional[int] = _MODEL_OPTS["batch_size"],
    lr: Optional[float] = _MODEL_OPTS["lr"], val_fraction: float = _MODEL_OPTS["val_fraction"],
    seed: Optional[int] = _MODEL_OPTS["seed"], recipe: Optional[Path] = _MODEL_OPTS["recipe"],
    sets: List[str] = _MODEL_OPTS["sets"],
):
    """Supervised training (teachers, fine-tuning, baselines) with DeiT's recipe from timm's parts.

    Checkpoints every epoch (--resume continues); many GPUs with torchrun:

        torchrun --nproc_per_node 4 -m edgevit train --model deit_small --data imagenet --recipe recipes/deit_small_imagenet.yaml
    """
    cfg = _train_config(recipe, sets, out_dir if resume else None, model, epochs=epochs, batch_size=batch_size,
                        lr=lr, seed=seed)
    _train_common(model, data, split, num_classes, img_size, patch_size, checkpoint, pretrained, out_dir,
                  resume, exist_ok, val_fraction, cfg)


@app.command()
@friendly
def distill(
    teacher: Optional[str] = typer.Option(None, help="teacher: zoo/timm name (e.g. resnet18_cifar, regnety_160); "
                                          "required unless the --recipe names one"),
    teacher_checkpoint: Optional[Path] = typer.Option(None, help="the teacher's weights (else timm's hub weights)"),
    student: str = typer.Option("deit_tiny_distilled", help="student with a distillation token"),
    distillation: Optional[str] = typer.Option(None, help="hard | soft | none (default hard, or the recipe's)"),
    alpha: Optional[float] = typer.Option(None, help="weight of the distillation term (hard 0.5, soft 0.1)"),
    tau: Optional[float] = typer.Option(None, help="soft-distillation temperature (DeiT: 3.0)"),
    data: str = _MODEL_OPTS["data"], split: str = _MODEL_OPTS["split"],
    num_classes: Optional[int] = _MODEL_OPTS["num_classes"], img_size: Optional[int] = _MODEL_OPTS["img_size"],
    patch_size: Optional[int] = _MODEL_OPTS["patch_size"], checkpoint: Optional[Path] = _MODEL_OPTS["checkpoint"],
    pretrained: bool = _MODEL_OPTS["pretrained"], out_dir: Optional[Path] = _MODEL_OPTS["out_dir"],
    resume: bool = _MODEL_OPTS["resume"], exist_ok: bool = _MODEL_OPTS["exist_ok"],
    epochs: Optional[int] = _MODEL_OPTS["epochs"], batch_size: Optional[int] = _MODEL_OPTS["batch_size"],
    lr: Optional[float] = _MODEL_OPTS["lr"], val_fraction: float = _MODEL_OPTS["val_fraction"],
    seed: Optional[int] = _MODEL_OPTS["seed"], recipe: Optional[Path] = _MODEL_OPTS["recipe"],
    sets: List[str] = _MODEL_OPTS["sets"],
):
    """DeiT distillation: a frozen teacher trains the student's distillation token (hard, soft or none).

        edgevit distill --teacher resnet18_cifar --teacher-checkpoint runs/teacher/model/weights.safetensors \
            --student deit_tiny_distilled --distillation hard --data cifar-10-batches-py --img-size 32 --patch-size 4 --num-classes 10
    """
    if distillation is None and not recipe and not resume:
        distillation = "hard"
    from .steps.distill import DistillationError

    if alpha is None and distillation == "soft" and not recipe and not resume:
        alpha = 0.1
    cfg = _train_config(recipe, sets, out_dir if resume else None, student, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        distillation=distillation, teacher=teacher,
                        teacher_checkpoint=str(teacher_checkpoint) if teacher_checkpoint else None,
                        alpha=alpha, tau=tau)
    if cfg.distillation != "none" and not cfg.teacher:
        raise DistillationError("no teacher given", "pass --teacher NAME (and --teacher-checkpoint for local weights)")
    _train_common(student, data, split, num_classes, img_size, patch_size, checkpoint, pretrained, out_dir,
                  resume, exist_ok, val_fraction, cfg)


@app.command()
@friendly
def quickstart(
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="default runs/quickstart (-2, -3... if taken)"),
    exist_ok: bool = typer.Option(False, help="write into an existing output directory"),
    epochs: Optional[int] = typer.Option(None, min=1, help="training epochs (default: as many as fit a 5-minute run "
                                                           "on this machine, 3 to 20; it prints its estimate)"),
):
    """Offline demo: train a small DeiT-Ti on the embedded digits, export to every target, validate, bench, report."""
    from .pipeline import run_recipe
    from .quickstart import quickstart_recipe

    r, _ = quickstart_recipe(epochs=epochs)
    r.out = str(out_dir or _fresh(Path(r.out)))
    run_recipe(r, exist_ok=exist_ok)


def main() -> None:  # console-script entry point
    from .quiet import silence_third_party

    silence_third_party()
    app()


if __name__ == "__main__":
    sys.exit(main())
