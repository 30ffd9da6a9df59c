"""Running TensorRT engines without PyTorch (:mod:`edgevit.targets.trt_engine` builds them).

Device facts, the stream, device buffers and host<->device copies go through cuda-python's
runtime API (``cuda.bindings.runtime`` on cuda-python >= 12.6, ``cuda.cudart`` before): a Jetson
often has TensorRT but no CUDA build of PyTorch. Every cuda-python call returns ``(err, *values)``.

An engine loads from any build route: ``edgevit engine``/export (with ``engine.json``), the
artifact's ``build_engine.sh`` (which writes a shorter ``engine.json``), trtexec by hand or a plan
copied from a board (no ``engine.json``). The I/O names, their dtypes and the optimisation profile
always come from the engine itself; ``engine.json`` only adds what built it and its runtime precision.
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TargetError
from .base import Runner

ENGINE, ENGINE_META, ENGINE_LAYERS = "model.plan", "engine.json", "engine_layers.json"
CUDA_FIX = ("check the driver (nvidia-smi; on a Jetson: tegrastats) and that cuda-python's major version matches "
            "the driver's CUDA (12 on JetPack 6): pip install 'cuda-python==12.*'")
_LOGGERS: dict[int, Any] = {}


class EngineUnavailable(TargetError):
    """TensorRT, cuda-python or a CUDA GPU is missing: the engine cannot be built or run on this machine."""


# -- cuda-python ------------------------------------------------------------------------------
def import_cudart() -> Any:
    """cuda-python's runtime module, or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except ImportError:
        return None


def cuda_call(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result: raise on an error, else the value (None, one, or a tuple)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise TargetError(f"CUDA {what} failed: {getattr(err, 'name', err)}", CUDA_FIX)
    return None if not values else values[0] if len(values) == 1 else tuple(values)


def cuda_unavailable() -> str | None:
    """Why cuda-python cannot reach a CUDA GPU here, or None when it can."""
    cudart = import_cudart()
    if cudart is None:
        return "cuda-python is not installed (pip install cuda-python; its major version must match the driver's CUDA)"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # a broken install: the driver library cannot be loaded
        return f"cuda-python cannot reach the CUDA driver ({type(e).__name__}: {e})"
    if int(err) != 0:
        return f"no CUDA GPU is usable (cudaGetDeviceCount: {getattr(err, 'name', err)})"
    if count < 1:
        return "no CUDA GPU is visible (cudaGetDeviceCount() is 0)"
    return None


def device_facts(cudart: Any, device: int = 0) -> dict[str, str]:
    """The GPU's name and compute capability ("8.7") from cudaGetDeviceProperties."""
    props = cuda_call(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return {"gpu": str(name).strip(), "compute_capability": f"{props.major}.{props.minor}"}


def _present(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def engine_unavailable() -> str | None:
    """Why engines cannot be built or run here (no TensorRT, no cuda-python, no GPU), or None when they can."""
    if not _present("tensorrt"):
        return ("TensorRT is not installed (x86-64 with an NVIDIA GPU: pip install tensorrt; Jetson: it comes "
                "with JetPack, sudo apt install nvidia-jetpack)")
    return cuda_unavailable()


# -- reading an engine ------------------------------------------------------------------------
def trt_logger(trt: Any) -> Any:
    """One logger per TensorRT module (TensorRT warns when several are created)."""
    return _LOGGERS.setdefault(id(trt), trt.Logger(trt.Logger.WARNING))


def read_meta(art_dir: Path) -> dict[str, Any]:
    """``engine.json`` beside the plan, or {} when the plan came without one."""
    path = Path(art_dir) / ENGINE_META
    return json.loads(path.read_text()) if path.is_file() else {}


def deserialize(trt: Any, plan: Path | bytes, meta: dict[str, Any] | None = None) -> Any:
    """The engine of a plan file (or its bytes); a clear error when this TensorRT cannot load it."""
    data = plan if isinstance(plan, (bytes, bytearray)) else Path(plan).read_bytes()
    engine = trt.Runtime(trt_logger(trt)).deserialize_cuda_engine(data)
    if engine is None:
        meta = meta or {}
        origin = (f"was built by TensorRT {meta.get('tensorrt')} on {meta.get('gpu')}" if meta.get("tensorrt")
                  else "(no engine.json beside it says what built it)")
        raise EngineUnavailable(f"{plan if isinstance(plan, Path) else 'the engine'} {origin} and does not load with "
                                f"TensorRT {trt.__version__} here (engines load only on the TensorRT version and "
                                "GPU that built them)",
                                "rebuild it here: edgevit engine ARTIFACT, or its build_engine.sh")
    return engine


def engine_io(trt: Any, engine: Any, where: Any = "the engine") -> dict[str, Any]:
    """Input/output names and profile 0 of the input (min/opt/max) read from the engine; both must be float32."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise TargetError(f"{where} has inputs {inputs} and outputs {outputs}; edgevit runs one image input and "
                          "one logits output", "build the engine from the artifact's model.onnx")
    for kind, name in (("input", inputs[0]), ("output", outputs[0])):
        dtype = engine.get_tensor_dtype(name)
        if dtype != trt.DataType.FLOAT:
            raise TargetError(f"{where}: the engine's {kind} {name!r} is {getattr(dtype, 'name', dtype)}, not "
                              "float32 (built with --inputIOFormats/--outputIOFormats or from another ONNX?)",
                              "rebuild it from edgevit's model.onnx, which keeps float32 inputs/outputs: "
                              "./build_engine.sh or edgevit engine ARTIFACT")
    shape = [int(d) for d in engine.get_tensor_shape(inputs[0])]
    if all(d >= 0 for d in shape):  # a static engine: its one shape is the whole profile
        profile = [shape, shape, shape]
    else:
        profile = [[int(d) for d in s] for s in engine.get_tensor_profile_shape(inputs[0], 0)]
    return {"input": inputs[0], "output": outputs[0], "profile": profile, "max_batch": profile[2][0]}


# -- running it ---------------------------------------------------------------------------------
def _release(cudart: Any, buffers: dict[str, list[int]], stream: list[Any]) -> None:
    """Free the device buffers and the stream (close(), or the session's garbage collection)."""
    try:  # also at interpreter exit, when the driver may be gone: nothing left to report to
        for ptr, _ in buffers.values():
            cudart.cudaFree(ptr)
        if stream:
            cudart.cudaStreamDestroy(stream[0])
    except Exception:
        pass
    buffers.clear()
    stream.clear()


class EngineSession:
    """One execution context, one stream, and device buffers allocated once and reused (grown when a
    batch needs more); runs float32 batches, in chunks of the profile's max batch."""

    def __init__(self, cudart: Any, engine: Any, io: dict[str, Any]):
        self.cudart, self.engine, self.io = cudart, engine, io
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineUnavailable("TensorRT could not create an execution context (out of GPU memory?)",
                                    "free GPU memory, or rebuild with a smaller --max-batch")
        self.buffers: dict[str, list[int]] = {}  # name -> [device pointer, bytes]
        self.stream = [cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")]
        self._free = weakref.finalize(self, _release, cudart, self.buffers, self.stream)
        kinds = cudart.cudaMemcpyKind
        self.h2d, self.d2h = kinds.cudaMemcpyHostToDevice, kinds.cudaMemcpyDeviceToHost

    def close(self) -> None:
        self._free()

    def _buffer(self, name: str, nbytes: int) -> int:
        held = self.buffers.get(name)
        if held is None or held[1] < nbytes:
            if held is not None:
                cuda_call(self.cudart.cudaFree(held[0]), "cudaFree")
            self.buffers[name] = held = [cuda_call(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"), nbytes]
            if not self.context.set_tensor_address(name, held[0]):
                raise TargetError(f"TensorRT refused the device address of {name!r}", "report this with run.json")
        return held[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        if not self.stream:
            raise TargetError("this TensorRT runner is closed", "load the artifact again")
        inp, out, (lo, _, hi) = self.io["input"], self.io["output"], self.io["profile"]
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.context.set_input_shape(inp, tuple(x.shape)):
            raise TargetError(f"TensorRT refused input shape {list(x.shape)} for {inp!r}: the engine's profile "
                              f"allows {lo} to {hi}", "feed shapes within that range, or rebuild the engine with "
                              "the shape you need (e.g. a larger --max-batch)")
        y = np.empty(tuple(int(d) for d in self.context.get_tensor_shape(out)), dtype=np.float32)
        stream, cudart = self.stream[0], self.cudart
        d_in, d_out = self._buffer(inp, x.nbytes), self._buffer(out, y.nbytes)
        cuda_call(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, self.h2d, stream), "copy to the GPU")
        if not self.context.execute_async_v3(int(stream)):
            raise TargetError("TensorRT execution failed", "see TensorRT's log above")
        cuda_call(cudart.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes, self.d2h, stream), "copy from the GPU")
        cuda_call(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Batches beyond the profile's max run in chunks; one below its min (a static engine) is padded."""
        b, lo, out = self.io["max_batch"], self.io["profile"][0][0], []
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            pad = np.zeros((max(lo - len(chunk), 0), *chunk.shape[1:]), chunk.dtype)
            out.append(self.run(np.concatenate([chunk, pad]) if len(pad) else chunk)[:len(chunk)])
        return np.concatenate(out)


class EngineRunner(Runner):
    """A :class:`Runner` whose device memory can be freed now (``close()``, or ``with``), not only by GC."""

    def close(self) -> None:
        self.predict.close()

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_engine(art_dir: Path) -> EngineRunner:
    """Deserialize ``art_dir/model.plan`` and run it through cuda-python (no PyTorch), with or without engine.json."""
    art_dir = Path(art_dir)
    if why := engine_unavailable():
        raise EngineUnavailable(f"cannot run {art_dir / ENGINE} here: {why}",
                                "run it on a machine with TensorRT, cuda-python and an NVIDIA GPU")
    import tensorrt as trt

    cudart = import_cudart()
    meta = read_meta(art_dir)
    engine = deserialize(trt, art_dir / ENGINE, meta)
    io = engine_io(trt, engine, art_dir / ENGINE)
    session = EngineSession(cudart, engine, io)
    info = {"runtime": f"tensorrt {trt.__version__} (cuda-python)", "device": device_facts(cudart)["gpu"],
            "precision": meta.get("runtime_precision"), "engine_profile": io["profile"],
            "engine_meta": ENGINE_META if meta else f"none (no {ENGINE_META}: I/O and profile read from the engine)"}
    return EngineRunner(session, info)


# -- the engine inspector ---------------------------------------------------------------------
_PRECISIONS = [("int4", "int4"), ("int8", "int8"), ("fp8", "fp8"), ("e4m3", "fp8"), ("bf16", "bf16"),
               ("bfloat16", "bf16"), ("fp16", "fp16"), ("half", "fp16"), ("int32", "int32"), ("int64", "int64"),
               ("bool", "bool"), ("fp32", "fp32"), ("float", "fp32")]
_RANK = {"int4": 0, "fp8": 1, "int8": 1, "fp16": 2, "bf16": 2, "fp32": 3}  # index/shape types don't count
_ATTENTION = re.compile(r"fmha|gemm_mha|mha_v\d|fused_?mha|flash_?att|(^|[^a-z])mha($|[^a-z])", re.I)
_MYELIN = re.compile(r"foreignnode|__myl|_myl\d|myelin", re.I)


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
    myelin = sum(bool(_MYELIN.search(t)) for t in text)
    fused = any(_ATTENTION.search(t) for t in text)
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
