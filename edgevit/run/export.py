"""The one export pipeline: float model -> ONNX -> every target -> check -> validate -> bench -> report.

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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, transforms
from ..data import EMBEDDED, SPLITS, data_config, eval_transform
from ..errors import OptionError
from ..eval.check import checked_outputs, finite_reference
from ..graph import export_onnx
from ..manifest import (
    RUN_MANIFEST,
    command_line,
    create_run_dir,
    library_versions,
    now,
    probe_output,
    remove_if_empty_run,
    staged_dir,
    write_json,
)
from ..models import ModelSpec, count_params
from ..progress import heartbeat, say
from ..report.report import collect, print_summary, write_report
from ..targets import MANIFEST, ExportContext, Target, check_honoured, get_target, given_options, options_for
from .artifacts import bench_artifacts, validate_artifacts
from .int8 import Int8Inputs, calibration_source, int8_inputs
from .plan import DataReader, RunnerCache, RunPlan


@dataclass
class ExportOptions:
    targets: list[str]
    out: Path
    data: str | None = None
    split: str = "test"
    val_fraction: float = 0.2
    seed: int = 0
    holdout: float | None = None  # training images set aside (never fine-tuned or calibrated on): data.train_part
    exist_ok: bool = False
    validate_limit: int | None = None
    bench: bool = True
    validate: bool = True
    batch: int = 1
    threads: int | None = None
    warmup: int = 10
    iters: int = 50
    check_images: int = 16
    options: dict[str, Any] = field(default_factory=dict)  # target options by name (`edgevit targets --options`)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in run.json (e.g. training facts)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    def check(self) -> None:
        """Every value and combination, before any work: one clear error naming the option."""
        if not self.targets:
            raise OptionError("no --target given", "pass e.g. --target onnx (see `edgevit targets`)")
        twice = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if twice:
            raise OptionError(f"--target names {', '.join(twice)} more than once",
                              f"give each target once: --target {','.join(dict.fromkeys(self.targets))}")
        if self.split not in SPLITS:
            raise OptionError(f"--split {self.split!r} is not a split", f"use one of {', '.join(SPLITS)}")
        if self.split == "holdout":
            raise OptionError("--split holdout is the images `edgevit optimize` chooses on",
                              "validate an export on val or test")
        if self.holdout is not None and not 0.0 < self.holdout < 1.0:
            raise OptionError(f"--holdout must be in (0, 1), got {self.holdout}", "use e.g. --holdout 0.2")
        if not 0.0 < self.val_fraction < 1.0:
            raise OptionError(f"--val-fraction must be in (0, 1), got {self.val_fraction}",
                              "use e.g. --val-fraction 0.2")
        for flag, value, low in (("--limit", self.validate_limit, 1), ("--batch", self.batch, 1),
                                 ("--threads", self.threads, 1), ("--iters", self.iters, 1),
                                 ("--warmup", self.warmup, 0)):
            if value is not None and value < low:
                raise OptionError(f"{flag} must be at least {low}, got {value}",
                                  f"pass {flag} {max(low, 1)} or more" + (" (or leave it out)" if low else ""))

    def given(self) -> dict[str, Any]:
        """The target options given (all of ``options``, a value equal to its default included)."""
        return given_options(self.options)


def check_export(spec: ModelSpec, opts: ExportOptions) -> RunPlan:
    """Every option, target and path of an export, checked before any work; returns the run's plan (the
    targets, each one's options resolved once, the calibration source and the data reader)."""
    opts.check()
    targets = [get_target(t) for t in opts.targets]  # unknown targets and options fail before any work
    for t in targets:
        t.check_available()
    given = opts.given()
    check_honoured(targets, given)
    options = {t.name: options_for(t, given) for t in targets}
    for t in targets:
        t.check_options(options[t.name])
    # an int8 export with nothing to calibrate on fails here, not after a download
    calibration = calibration_source(opts, targets, options, given)
    spec.check()
    transforms.parse(spec.prune)
    probe_output(opts.out, opts.exist_ok)
    return RunPlan(targets, given, options, calibration, DataReader(opts.data, opts.val_fraction, opts.seed))


def run_export(spec: ModelSpec, opts: ExportOptions, model: torch.nn.Module | None = None) -> Path:
    """Export ``spec`` to every target in ``opts`` and validate, bench and report: returns the run dir.
    ``model``: the float model of ``spec`` when the caller built (or trained) it."""
    plan = check_export(spec, opts)
    try:
        return _run(plan, spec, opts, model)
    finally:
        plan.close()


def _run(plan: RunPlan, spec: ModelSpec, opts: ExportOptions, model: torch.nn.Module | None) -> Path:
    if model is None:
        model, spec, prune = transforms.build_model(spec)
    else:
        spec, prune = transforms.recorded(model, spec)
    model.eval()
    cfg = data_config(model, spec.img_size)
    if opts.data:
        plan.data.check_classes(opts.split, getattr(model, "num_classes", None))
    sample = check_images(opts.data, cfg, opts.check_images, opts.split, opts.val_fraction, opts.seed, plan.data)
    float_logits = finite_reference(model, sample, spec)
    int8 = int8_inputs(opts, cfg, plan.targets, plan)  # calibration problems surface before the export
    made = create_run_dir(opts.out, opts.exist_ok, need_bytes=_expected_bytes(model, plan.targets))
    try:
        run = _run_record(spec, opts, model, cfg, plan, prune)
        _export_all(run, opts, model, plan, sample, float_logits, int8)
    except BaseException:
        if made:
            remove_if_empty_run(opts.out, made)
        raise
    return opts.out


def check_images(data: str | None, data_cfg: dict, n: int, split: str, val_fraction: float, seed: int,
                 reader: DataReader | None = None) -> np.ndarray:
    """Real images to compare each artifact with PyTorch: the user's data, else the embedded set
    (``reader``: the run's, for ``data``)."""
    reader = reader if reader is not None else DataReader(data, val_fraction, seed)
    ds = reader.split(split if data else "val", eval_transform(data_cfg), limit=n)
    return np.stack([ds[i][0].numpy() for i in range(min(n, len(ds)))]).astype(np.float32)


def recorded_source(source: str | None) -> str | None:
    """A data source as run.json records it: a folder absolute (so the record holds from any working
    directory), the embedded set by name."""
    return source if source in (None, EMBEDDED) else os.path.abspath(os.path.expanduser(str(source)))


def _expected_bytes(model: torch.nn.Module, targets: list[Target]) -> int:
    """A rough size of what the run writes: the weights once per target, fp32, plus the reports."""
    return count_params(model) * 4 * len(targets) + (20 << 20)


def _run_record(spec: ModelSpec, opts: ExportOptions, model: torch.nn.Module, cfg: dict[str, Any],
                plan: RunPlan, prune: dict[str, Any]) -> dict[str, Any]:
    records = tuple(lib for t in plan.targets for lib in t.records)
    run = {"edgevit": __version__, "created": now(), "command": command_line(), "model": spec.to_dict(),
           "params": count_params(model), "data_config": cfg, "data": recorded_source(opts.data), "split": opts.split,
           "targets": opts.targets, "options": plan.given, "versions": library_versions(records), **opts.extra}
    if prune:
        run["prune"] = prune
    if names := getattr(model, "class_names", None):  # a zero-shot classifier's labels, in output order
        run["classes"] = list(names)
    write_json(opts.out / RUN_MANIFEST, run)
    return run


def _export_all(run: dict[str, Any], opts: ExportOptions, model: torch.nn.Module, plan: RunPlan,
                sample: np.ndarray, float_logits: np.ndarray, int8: Int8Inputs) -> None:
    base = {k: run[k] for k in ("edgevit", "command", "model", "params", "data_config", "versions", "prune", "classes")
            if k in run}
    with tempfile.TemporaryDirectory(prefix="edgevit-onnx-") as tmp:
        onnx_fp32 = Path(tmp) / "float.onnx"
        say(f"exporting {run['model']['name']} to ONNX (opset 17, dynamic batch)")
        base["onnx"] = export_onnx(model, run["data_config"]["input_size"][-1], onnx_fp32)
        qat = int8.run_qat(model, run, opts, Path(tmp))
        keep = plan.runners if opts.data and opts.validate else None  # each check's runner, for validation
        manifests = []
        for t in plan.targets:
            t_opts = plan.options_of(t)
            uses_qat = qat if (qat is not None and int8.takes_qat(t, t_opts)) else None
            ctx = ExportContext(options=t_opts, input_size=list(run["data_config"]["input_size"]), torch_model=model,
                                calib=int8.calib, control=int8.control, qat=uses_qat, progress=say)
            with heartbeat(f"exporting {t.name}"):  # off a terminal, a line at a steady pace
                mf = export_artifact(t, onnx_fp32, opts.out / "artifacts" / t.name, model, sample, base, ctx,
                                     float_logits, runners=keep)
            manifests.append(mf)
            say(f"  [green]✓[/] {t.name:<14} {mf['size_bytes'] / 2**20:7.1f} MB  {_check_line(mf)}")
    art_dirs = [opts.out / "artifacts" / t.name for t in plan.targets if not _skip(t)]
    if opts.data and opts.validate and art_dirs:  # on the runners the output checks opened
        validate_artifacts(art_dirs, opts.data, opts.split, model, opts.validate_limit, opts.val_fraction,
                           opts.seed, save_to=opts.out, runners=plan.runners, reader=plan.data)
    # The bench loads each artifact afresh, one at a time, with its own thread count: what loading adds to
    # memory is one of its figures. Nothing the checks and validation opened is held while it times.
    plan.close()
    if opts.bench and art_dirs:
        bench_artifacts(art_dirs, model, opts.batch, opts.threads, opts.warmup, opts.iters, save_to=opts.out)
    plan.report = collect(opts.out)  # once: written, then printed
    report = write_report(opts.out, plan.report)
    print_summary(opts.out, plan.report)
    for t, mf in zip(plan.targets, manifests):
        if note := t.notice(mf, opts.out / "artifacts" / t.name):
            say(f"[yellow bold]{t.name}:[/] ", plain=note)
    say("[bold]report:[/] ", plain=str(report))


def export_artifact(target: Target, onnx_fp32: Path, final: Path, model: torch.nn.Module, sample: np.ndarray,
                    manifest: dict[str, Any], ctx: ExportContext, float_logits: np.ndarray | None = None,
                    runners: RunnerCache | None = None) -> dict[str, Any]:
    """Export one target into a staging folder, check it against PyTorch, then rename it in place.
    ``runners``: where the runner the check opened is kept for the steps after (validation).

    An artifact this machine cannot run (CoreML off macOS) is checked structurally by its target
    during export instead, and the manifest says why it was not run."""
    with staged_dir(final) as tmp:
        facts = target.export(onnx_fp32, tmp, ctx)
        mf = {**manifest, "target": target.name, "backend": target.backend, "precision": target.precision,
              "options": dataclasses.asdict(ctx.options)}
        # the export's facts beside the model before it loads: a target that reads its own facts on loading
        # (TensorRT int8's graph label, from its precision map) reads them there instead of computing them again
        write_json(tmp / MANIFEST, {**mf, "export": facts})
        runtime, check, runner = _check_artifact(target, tmp, model, sample, manifest, ctx, float_logits)
        mf.update(runtime=runtime, files=[p.name for p in target.files(tmp)], size_bytes=target.size_bytes(tmp),
                  export=facts, check_vs_pytorch=check, created=now())
        write_json(tmp / MANIFEST, mf)
    if runner is not None and runners is not None:
        runners.put(final, runner)
    return mf


def _check_artifact(target: Target, art_dir: Path, model: torch.nn.Module, sample: np.ndarray,
                    manifest: dict[str, Any], ctx: ExportContext, float_logits: np.ndarray | None):
    """(runtime facts, check against PyTorch, runner) of a freshly exported artifact; no runner for one this
    machine cannot run."""
    if why := target.not_runnable():
        return ({"runtime": f"not run here: {why}", "precision": target.precision},
                {"skipped": why, "structure": "checked (see export.structure)"}, None)
    runner = target.load(art_dir)
    reference = ctx.qat.reference_model if ctx.qat is not None else None
    check = checked_outputs(target.name, target.precision, runner, model, sample, float_logits, reference,
                            pruned=bool(manifest.get("prune")))
    return runner.info, check, runner


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
