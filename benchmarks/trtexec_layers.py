"""The trtexec step of benchmarks/gpu_check.py: does attention fuse, and which Cast/Reformat layers remain?

For each TensorRT artifact (``tensorrt-fp16``, ``tensorrt-int8``) and each batch (1 and 64), trtexec
builds an engine for that batch alone (min = opt = max) from the artifact's ``model.onnx``, strongly
typed, and runs it the way trtexec times engines (``--useCudaGraph --noDataTransfers``) with::

    --profilingVerbosity=detailed --dumpLayerInfo --dumpProfile --separateProfileRun
    --exportLayerInfo=layers.json --exportProfile=profile.json

The layer JSON (IEngineInspector's format, parsed by :func:`edgevit.targets.trt_inspect.summarize_layers`)
names every layer and its kernel (tactic): a fused attention kernel is named (fmha, ``_gemm_mha_v2``,
flash attention); a Myelin region hides its kernels (``attention_fused`` is None then, and the profile's
layer names are searched too). Reformat and Cast layers are listed with their share of the profiled
time. Without trtexec the step says so and is skipped: the rest of gpu_check runs on.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

TRTEXEC_ENV = "TRTEXEC"
KNOWN_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")  # JetPack, NGC containers
BATCHES = (1, 64)
TARGETS = ("tensorrt-fp16", "tensorrt-int8")
_COMPUTE = re.compile(r"GPU Compute Time:.*?median = ([0-9.]+) ms")
_CAST = re.compile(r"(^|[/_ ])Cast(_\d+)?($|[/_ \]])")


def find_trtexec(given: str | None = None) -> tuple[str | None, str | None]:
    """(path, None) of the trtexec to use (``given``, $TRTEXEC, PATH, TensorRT's usual folders), or (None, why)."""
    for candidate in (given, os.environ.get(TRTEXEC_ENV), shutil.which("trtexec"), *KNOWN_PATHS):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate, None
    asked = given or os.environ.get(TRTEXEC_ENV)
    where = f"{asked} is not an executable file" if asked else "trtexec is not on PATH nor in " + ", ".join(KNOWN_PATHS)
    return None, f"{where}: the trtexec layer-info step is skipped (pass --trtexec PATH or set ${TRTEXEC_ENV})"


def trtexec_args(trtexec: str, onnx: Path, batch: int, input_size: list[int], work: Path) -> list[str]:
    """One build-and-profile call: an engine for ``batch`` alone, timed as trtexec does, layers and profile exported."""
    shape = f"input:{'x'.join(map(str, [batch, *input_size]))}"
    return [trtexec, f"--onnx={onnx}", "--stronglyTyped", f"--minShapes={shape}", f"--optShapes={shape}",
            f"--maxShapes={shape}", f"--shapes={shape}", "--memPoolSize=workspace:4096M",
            "--profilingVerbosity=detailed", "--dumpLayerInfo", "--dumpProfile", "--separateProfileRun",
            "--useCudaGraph", "--noDataTransfers", f"--exportLayerInfo={work / 'layers.json'}",
            f"--exportProfile={work / 'profile.json'}"]


def parse_profile(raw: str) -> list[dict[str, Any]]:
    """trtexec's ``--exportProfile`` JSON (``[{"count": N}, {"name", "timeMs", "averageMs", "percentage"}, ...]``)
    -> the per-layer entries."""
    obj = json.loads(raw) if raw.strip() else []
    return [e for e in obj if isinstance(e, dict) and "name" in e] if isinstance(obj, list) else []


def layer_report(layers_raw: str, profile_raw: str = "", log: str = "") -> dict[str, Any]:
    """What one engine shows: fused attention kernels, Myelin regions, the Reformat and Cast layers left (with
    their share of the profiled time) and trtexec's median GPU compute time."""
    from edgevit.targets.trt_inspect import ATTENTION_KERNEL, summarize_layers

    parsed = summarize_layers(layers_raw)
    layers, summary = parsed["layers"], parsed["summary"]
    pct = {p["name"]: float(p.get("percentage", 0.0)) for p in parse_profile(profile_raw)}
    kernels = sorted({str(x) for layer in layers for x in (layer.get("tactic"), layer.get("name"))
                      if x and ATTENTION_KERNEL.search(str(x))} | {n for n in pct if ATTENTION_KERNEL.search(n)})
    reformats = [layer["name"] for layer in layers if layer.get("type") == "Reformat"
                 or str(layer.get("name", "")).startswith("Reformatting CopyNode")]
    casts = [layer["name"] for layer in layers if layer.get("type") == "Cast" or _CAST.search(str(layer.get("name")))]
    median = _COMPUTE.search(log)
    fused = True if kernels else summary["attention_fused"]
    return {"layers": summary["layers"], "attention_fused": fused, "attention_kernels": kernels[:8],
            "myelin_nodes": summary["myelin_nodes"], "by_precision": summary["by_precision"],
            "reformat_layers": reformats, "cast_layers": casts,
            "reformat_cast_time_pct": round(sum(pct.get(n, 0.0) for n in reformats + casts), 2),
            "gpu_compute_median_ms": float(median.group(1)) if median else None}


def run_step(trtexec: str, artifacts: dict[str, Path], input_size: list[int], work: Path,
             batches: tuple[int, ...] = BATCHES, timeout: float = 600) -> list[dict[str, Any]]:
    """One row per artifact and batch; a failed trtexec call is a row with its error and log tail."""
    rows = []
    for target, onnx in artifacts.items():
        for batch in batches:
            where = work / f"{target}-b{batch}"
            where.mkdir(parents=True, exist_ok=True)
            cmd = trtexec_args(trtexec, onnx, batch, input_size, where)
            row: dict[str, Any] = {"name": f"trtexec-{target}-b{batch}", "kind": "trtexec", "target": target,
                                   "batch": batch, "command": " ".join(cmd[1:])}
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                rows.append({**row, "error": f"trtexec ran over {timeout:.0f} s"})
                continue
            layers = where / "layers.json"
            if r.returncode != 0 or not layers.is_file():
                tail = (r.stdout + r.stderr)[-600:]
                rows.append({**row, "error": f"trtexec exited {r.returncode}", "log_tail": tail})
                continue
            profile = where / "profile.json"
            rows.append({**row, **layer_report(layers.read_text(), profile.read_text() if profile.is_file() else "",
                                               r.stdout)})
    return rows


def export_artifacts(out: Path, img: int, model_extra: dict[str, Any], calib_images: int = 16) -> dict[str, Path]:
    """tensorrt-fp16 and tensorrt-int8 of DeiT-Ti (random weights: layers do not depend on them), calibrated on
    random images (the graph's Q/DQ placement does not depend on them either)."""
    import numpy as np
    from PIL import Image

    from edgevit.models import ModelSpec
    from edgevit.run.export import ExportOptions, run_export

    calib = out / "calib" / "c0"
    calib.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(calib_images):
        Image.fromarray(rng.integers(0, 256, (img, img, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    spec = ModelSpec("deit_tiny", pretrained=False, img_size=img, **model_extra)
    run = run_export(spec, ExportOptions(targets=list(TARGETS), out=out / "run", bench=False,
                                         options={"calib": str(calib.parent), "calib_size": calib_images,
                                                  "timing_cache": None}))
    return {t: run / "artifacts" / t / "model.onnx" for t in TARGETS}



def add_arguments(ap) -> None:
    ap.add_argument("--trtexec", help="trtexec for the layer-info step (default: $TRTEXEC, PATH, TensorRT's bin)")
    ap.add_argument("--trt-artifacts", help="a run's artifacts folder with tensorrt-fp16/-int8 (default: export them)")


def section(trtexec: str | None, artifacts: str | None, img: int, model_extra: dict[str, Any],
            timeout: float = 600) -> list[dict[str, Any]]:
    """gpu_check's trtexec rows (:func:`run_step`, each with a one-line ``summary``), or one row saying why the
    step was skipped. ``artifacts``: a run's ``artifacts`` folder holding tensorrt-fp16 and tensorrt-int8
    (default: exported here, DeiT-Ti at ``img`` px)."""
    path, why = find_trtexec(trtexec)
    onnx = {t: Path(artifacts) / t / "model.onnx" for t in TARGETS} if artifacts else {}
    missing = [str(p) for p in onnx.values() if not p.is_file()]
    if path is not None and missing:
        why = f"--trt-artifacts {artifacts} lacks {', '.join(missing)}: the trtexec step is skipped"
    if path is None or missing:
        return [{"name": "trtexec", "kind": "trtexec", "trtexec": path, "skipped": why}]
    with tempfile.TemporaryDirectory(prefix="gpu-check-trt-") as work:
        onnx = onnx or export_artifacts(Path(work) / "export", img, model_extra)
        rows = run_step(path, onnx, [3, img, img], Path(work) / "trtexec", timeout=timeout)
    for r in rows:
        r["trtexec"] = path
        if "error" not in r:
            r["summary"] = (f"attention fused {r['attention_fused']}, kernels {r['attention_kernels'][:2]}, "
                            f"{len(r['reformat_layers'])} reformat + {len(r['cast_layers'])} cast layers "
                            f"({r['reformat_cast_time_pct']} % of the profile), GPU compute "
                            f"{r['gpu_compute_median_ms']} ms")
    return rows
