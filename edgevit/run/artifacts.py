"""Artifacts after export: load one, validate several against their float model, bench them."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import transforms
from ..data import eval_transform
from ..errors import ArtifactError, EdgeVitError, ExportError, OptionError, describe
from ..eval.latency import Subject, bench_rounds_timed, bench_torch_gpu, default_threads, eager_info, eager_subject
from ..eval.machine import cpu_facts
from ..eval.timing import RoundTimes
from ..eval.validate import validate_runners
from ..manifest import RUN_MANIFEST, write_json
from ..models import ModelSpec
from ..progress import say
from ..targets import Target, get_target, read_manifest
from .plan import DataReader, RunnerCache


def load_artifact(path: str | Path, threads: int | None = None, runners: RunnerCache | None = None):
    """(target, runner, manifest, directory) for an artifact directory or a file in it. ``runners``: a run's
    cache of runners (opened with the same ``threads``): the artifact's runner is taken from it, or opened
    and kept there."""
    art_dir, mf = read_manifest(path)
    target = get_target(mf["target"])
    target.check_available()
    if runners is None:
        return target, open_runner(target, art_dir, threads), mf, art_dir
    return target, runners.get(art_dir, lambda: open_runner(target, art_dir, threads)), mf, art_dir


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
    return _checked_model(ModelSpec.from_dict(mf["model"]))


def _checked_model(spec: ModelSpec) -> torch.nn.Module:
    want = spec.checkpoint_sha256
    model, built, _ = transforms.build_model(spec)
    if want and built.checkpoint_sha256 != want:
        raise ExportError(f"checkpoint {spec.checkpoint} changed since the export (sha256 differs)",
                          "restore the checkpoint the artifact was made from, or re-export")
    return model.eval()


def dense_spec_for(mf: dict[str, Any], art_dir: Path) -> ModelSpec | None:
    """The dense model a pruned artifact is compared with (None for an unpruned artifact, or a fine-tuned
    one whose dense weights were not recorded): the spec without ``prune`` and with the dense checkpoint.

    ``edgevit prune`` records it as ``dense_model`` in run.json (and, after a fine-tune, in
    ``model/finetune.json`` beside the fine-tuned weights); without a record (``edgevit export --prune``)
    the artifact's own weights are the dense ones."""
    spec = ModelSpec.from_dict(mf["model"])
    if not spec.prune:
        return None
    run = _read_json(Path(art_dir).parent.parent / RUN_MANIFEST)
    if run.get("dense_model") and run.get("model") == mf["model"]:
        return ModelSpec.from_dict(run["dense_model"])
    finetune = _read_json(Path(spec.checkpoint).parent / "finetune.json") if spec.checkpoint else {}
    if finetune.get("dense_model"):
        return ModelSpec.from_dict(finetune["dense_model"])
    if finetune:
        return None  # fine-tuned weights from an older run: the dense checkpoint is unknown
    return dataclasses.replace(spec, prune=None)


def dense_model_or_none(spec: ModelSpec) -> torch.nn.Module | None:
    """The dense model, or None with a warning when its weights cannot be had (moved, changed, offline):
    the pruned artifacts are still validated and benched, without the dense baseline."""
    try:
        return _checked_model(spec)
    except EdgeVitError as e:
        say("[yellow]warning:[/] ", plain=f"no dense baseline for the pruned model: {e.what} ({e.fix})")
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def validate_artifacts(paths: list[Path], data: str, split: str = "test", model: torch.nn.Module | None = None,
                       limit: int | None = None, val_fraction: float = 0.2, seed: int = 0,
                       batch_size: int = 64, save_to: Path | None = None,
                       dense: torch.nn.Module | None = None, runners: RunnerCache | None = None,
                       reader: DataReader | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy of each artifact vs its float model on the same images. Pruned artifacts are also scored
    against the dense model (``dense``, default :func:`dense_spec_for`) in the same pass: ``dense_top1``,
    ``top1_drop_vs_dense_pts`` and its ``top1_drop_vs_dense_ci95_pts``, ``only_dense_correct``,
    ``only_artifact_correct_vs_dense``. ``runners`` and ``reader``: a run's cache of runners (those its
    output checks opened) and its reader of ``data`` (same ``val_fraction`` and ``seed``); the split is opened
    once either way, for the class check and the images."""
    loaded = [load_artifact(p, runners=runners) for p in paths]
    mf0 = _same_model([mf for _, _, mf, _ in loaded], paths)
    model = model if model is not None else float_model_for(mf0)
    if reader is None or str(reader.source) != str(data):
        reader = DataReader(data, val_fraction, seed)
    reader.check_classes(split, getattr(model, "num_classes", None))
    dense_spec = None if dense is not None else dense_spec_for(mf0, loaded[0][3])
    if dense_spec is not None:
        dense = dense_model_or_none(dense_spec)
    by_target = {mf["target"]: runner for _, runner, mf, _ in loaded}
    ds = reader.split(split, eval_transform(mf0["data_config"]), limit)
    res = validate_runners(by_target, model, mf0["data_config"], data, split, batch_size, limit, val_fraction, seed,
                           dense_model=dense, dataset=ds)
    for _, runner, mf, art_dir in loaded:
        res[mf["target"]].update(precision=mf["precision"], runtime_precision=runner.info.get("precision"),
                                 artifact=str(art_dir))
        if dense is not None:
            res[mf["target"]]["dense_checkpoint"] = _weights_name(dense_spec)
    if save_to is not None:
        _merge_results(save_to / "results" / "validate.json", res)
    return res


def _weights_name(spec: ModelSpec | None) -> str:
    if spec is None:
        return "the dense model given by the caller"
    return spec.checkpoint or ("timm hub weights" if spec.pretrained else "random weights")


def bench_artifacts(paths: list[Path], model: torch.nn.Module | None = None, batch: int = 1,
                    threads: int | None = None, warmup: int = 10, iters: int = 50, reference: bool = True,
                    save_to: Path | None = None, min_seconds: float = 0.0, gpu: bool = True,
                    rounds: int = 1, seed: int = 0, precision_pct: float | None = None) -> list[dict[str, Any]]:
    """:func:`bench_artifacts_timed`'s rows."""
    return bench_artifacts_timed(paths, model, batch, threads, warmup, iters, reference, save_to, min_seconds, gpu,
                                 rounds, seed, precision_pct)[0]


def bench_artifacts_timed(paths: list[Path], model: torch.nn.Module | None = None, batch: int = 1,
                          threads: int | None = None, warmup: int = 10, iters: int = 50, reference: bool = True,
                          save_to: Path | None = None, min_seconds: float = 0.0, gpu: bool = True,
                          rounds: int = 1, seed: int = 0, precision_pct: float | None = None,
                          ) -> tuple[list[dict[str, Any]], RoundTimes | None]:
    """Latency rows: PyTorch eager (the reference) first, then each artifact, same input and threads.

    ``rounds`` > 1 times eager and the artifacts in short interleaved rounds of ``iters`` runs, each round
    in a random order (each loaded once): every row then has ``estimate_ms`` (the robust figure of
    :mod:`edgevit.eval.timing`) and ``ratio_vs_first``, its paired ratio against the first row with the
    bootstrap 95 % interval and a verdict in words, and the :class:`RoundTimes` come back beside the rows.
    ``precision_pct``: time on (up to four times ``rounds``) until every ratio is known to that half-width.
    Every row has ``noise`` (how far to trust it) and ``cpu`` (the instruction sets). For pruned artifacts
    the eager row holds ``dense_eager``: the dense model's eager row, timed in the same rounds.

    On a machine with a CUDA GPU (and ``gpu``), PyTorch on the GPU (fp32, fp16, fp16 + torch.compile)
    follows the reference; ONNX Runtime artifacts run on its CUDA provider where onnxruntime-gpu is
    installed, and TensorRT artifacts run their engines. Each artifact loads here, also after an export's
    checks had it open: loading is measured (``peak_mem_mb``, one at a time), and with ``threads``."""
    if rounds < 1:
        raise OptionError(f"--rounds must be at least 1, got {rounds}", "pass --rounds 1 or more (e.g. 3)")
    threads = threads or default_threads()
    mfs = [read_manifest(p) for p in paths]
    if reference:  # one eager reference: one float model
        _same_model([mf for _, mf in mfs], paths)
    size = _same_input([mf for _, mf in mfs], paths)
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    subjects, infos = [], []
    if reference:
        model = model if model is not None else float_model_for(mfs[0][1])
        subjects.append(eager_subject(model, x, threads))
        infos.append(eager_info(model))
        dense_spec = dense_spec_for(mfs[0][1], mfs[0][0])
        if dense_spec is not None and (dense := dense_model_or_none(dense_spec)) is not None:
            subjects.append(eager_subject(dense, x, threads, "pytorch eager (dense)"))
            infos.append(eager_info(dense, "pytorch-eager-dense"))
    for (art_dir, mf), name in zip(mfs, row_names(mfs)):
        s, info = _artifact_subject(art_dir, mf, threads, name)
        subjects.append(s)
        infos.append(info)
    timed, rt = bench_rounds_timed(subjects, x, warmup, iters, rounds, min_seconds, seed, precision_pct)
    rows = [{**info, **row} for info, row in zip(infos, timed)]
    for i, r in enumerate(rows):
        r.update(r.pop("_loaded", {}))
        if rt is not None:  # paired against the first row; threads, affinity and load while timing
            r.update(ratio_vs_first=rt.ratio(i, 0).to_dict(), timing=rt.context)
    if reference and gpu and torch.cuda.is_available():  # the GPU table: PyTorch fp32/fp16/compile beside the engines
        rows[1:1] = [r for r in bench_torch_gpu(model, x, warmup, iters, min_seconds) if "p50_ms" in r]
    for r in rows:
        r.update(batch=batch, threads=threads, input_size=list(size), cpu=cpu_facts())
        if reference:
            r["speedup_vs_eager"] = rows[0]["p50_ms"] / r["p50_ms"]
    for i, r in enumerate(rows):
        if r["name"] == "pytorch-eager-dense":  # beside its pruned model's row, not a row of the table
            rows[0]["dense_eager"] = rows.pop(i)
            break
    if save_to is not None:
        _merge_results(save_to / "results" / "bench.json", {r["name"]: r for r in rows})
    return rows, rt


def row_names(mfs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Each artifact's row name: its target, or ``<run>/<target>`` where two artifacts of one target (from two
    runs, e.g. a dense and a pruned export) are timed together, so neither row hides the other."""
    targets = [mf["target"] for _, mf in mfs]
    names = [t if targets.count(t) == 1 else f"{Path(d).resolve().parent.parent.name}/{t}"
             for (d, _), t in zip(mfs, targets)]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def _artifact_subject(art_dir: Path, mf: dict[str, Any], threads: int, name: str | None = None
                      ) -> tuple[Subject, dict[str, Any]]:
    """A :class:`Subject` loading the artifact, and its row's descriptive fields (runtime ones filled in
    from the runner when it loads, under ``_loaded``); ``name``: the row's name (default: the target's)."""
    target = get_target(mf["target"])
    loaded: dict[str, Any] = {}

    def make():
        runner = open_runner(target, art_dir, threads)
        loaded.update(runtime_precision=runner.info.get("precision"), runtime=runner.info.get("runtime"))
        return runner

    name = name or target.name
    info = {"name": name, "backend": target.backend, "precision": target.precision,
            "runtime_precision": None, "runtime": None, "size_mb": mf["size_bytes"] / 2**20,
            "artifact": str(art_dir), "_loaded": loaded}
    if name != target.name:
        info["target"] = target.name
    return Subject(name, make), info


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


def _same_input(manifests: list[dict[str, Any]], paths: list[Path]) -> list[int]:
    """Artifacts timed side by side (another model's, e.g. pruned against dense, is fine) take one input."""
    size = manifests[0]["data_config"]["input_size"]
    for mf, p in zip(manifests[1:], paths[1:]):
        if mf["data_config"]["input_size"] != size:
            raise ArtifactError(f"{p} takes input {mf['data_config']['input_size']}, {paths[0]} takes {size}",
                                "time artifacts of one input size together")
    return size


def _merge_results(path: Path, new: dict[str, Any]) -> None:
    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**old, **new})
