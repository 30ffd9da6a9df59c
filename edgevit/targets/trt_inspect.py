"""The engine inspector's view of a TensorRT engine (``edgevit inspect``, ``engine_layers.json``), and the
same parse for trtexec's ``--exportLayerInfo`` JSON (benchmarks/gpu_check.py). No PyTorch."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .trt_runtime import ENGINE, EngineUnavailable, deserialize, engine_io, engine_unavailable, read_meta

_PRECISIONS = [("int4", "int4"), ("int8", "int8"), ("fp8", "fp8"), ("e4m3", "fp8"), ("bf16", "bf16"),
               ("bfloat16", "bf16"), ("fp16", "fp16"), ("half", "fp16"), ("int32", "int32"), ("int64", "int64"),
               ("bool", "bool"), ("fp32", "fp32"), ("float", "fp32")]
_RANK = {"int4": 0, "fp8": 1, "int8": 1, "fp16": 2, "bf16": 2, "fp32": 3}  # index/shape types don't count
ATTENTION_KERNEL = re.compile(r"fmha|gemm_mha|mha_v\d|fused_?mha|flash_?att|(^|[^a-z])mha($|[^a-z])", re.I)
MYELIN = re.compile(r"foreignnode|__myl|_myl\d|myelin", re.I)


def tensor_precision(fmt: str | None) -> str | None:
    """'Row major linear FP16 format' -> 'fp16', 'Int8' -> 'int8'; None for 'N/A due to dynamic shapes'."""
    low = str(fmt or "").lower()
    return next((p for key, p in _PRECISIONS if key in low), None)


def _layer(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):  # ProfilingVerbosity.LAYER_NAMES_ONLY: names alone
        return {"name": str(entry), "type": None}
    ins = [tensor_precision(t.get("Format/Datatype")) for t in entry.get("Inputs", []) if isinstance(t, dict)]
    outs = [tensor_precision(t.get("Format/Datatype")) for t in entry.get("Outputs", []) if isinstance(t, dict)]
    floats = [p for p in ins if p in _RANK] or [p for p in outs if p in _RANK]
    layer = {"name": entry.get("Name"), "type": entry.get("LayerType"), "inputs": ins, "outputs": outs}
    if floats:
        layer["precision"] = min(floats, key=_RANK.__getitem__)
    for key, src in (("tactic", "TacticName"), ("origin", "Metadata")):
        if entry.get(src):
            layer[key] = entry[src]
    return layer


def summarize_layers(raw: str) -> dict[str, Any]:
    """Parse IEngineInspector's JSON (``{"Layers": [...], "Bindings": [...]}``) into layers and a summary.

    What can be told: each layer's name and type, the data types of its inputs/outputs (its
    precision here is the narrowest float type among its inputs, else its outputs), and whether a
    fused attention kernel is *named* (``_gemm_mha_v2``, fmha, flash attention: True). What cannot:
    the inside of an opaque Myelin region (``{ForeignNode[...]}``): attention compiled into one
    shows no kernel name, so ``attention_fused`` is None there (only a profile, e.g. nsys or
    trtexec --dumpProfile, names its kernels); False means layers are listed, none is a fused
    attention kernel and no Myelin region hides one. Without an execution context whose shapes are
    set, a dynamic-shape engine reports formats as "N/A due to dynamic shapes" (precision unknown).
    """
    obj = json.loads(raw) if raw else {}
    entries = obj.get("Layers", []) if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    layers = [_layer(e) for e in entries]
    text = [" ".join(str(layer.get(k) or "") for k in ("name", "type", "tactic")) for layer in layers]
    myelin = sum(bool(MYELIN.search(t)) for t in text)
    fused = any(ATTENTION_KERNEL.search(t) for t in text)
    detail = "none" if not layers else "names only" if all(not isinstance(e, dict) for e in entries) else "detailed"
    summary = {"layers": len(layers), "detail": detail,
               "by_precision": dict(Counter(layer.get("precision") or "unknown" for layer in layers)),
               "attention_fused": True if fused else None if (myelin or not layers) else False,
               "myelin_nodes": myelin}
    return {"layers": layers, "summary": summary}


def _shaped_context(trt: Any, engine: Any) -> Any:
    """A context with the input at the profile's opt shape, so the inspector can name formats."""
    try:
        io = engine_io(trt, engine)
        context = engine.create_execution_context()
        return context if context is not None and context.set_input_shape(io["input"], io["profile"][1]) else None
    except Exception:
        return None


def engine_layers(engine_or_art_dir: Any) -> dict[str, Any]:
    """The engine inspector's per-layer view of an engine (or of ``ART_DIR/model.plan``): see :func:`summarize_layers`.

    Detailed information needs an engine built with ``ProfilingVerbosity.DETAILED`` (edgevit's
    builds and ``build_engine.sh`` use it); other engines list names only, or nothing."""
    import tensorrt as trt

    engine = engine_or_art_dir
    if isinstance(engine_or_art_dir, (str, Path)):
        art_dir = Path(engine_or_art_dir)
        if why := engine_unavailable():
            raise EngineUnavailable(f"cannot inspect {art_dir / ENGINE} here: {why}",
                                    "inspect it on a machine with TensorRT and an NVIDIA GPU")
        engine = deserialize(trt, art_dir / ENGINE, read_meta(art_dir))
    inspector = engine.create_engine_inspector()
    context = _shaped_context(trt, engine)
    if context is not None:
        inspector.execution_context = context
    return summarize_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
