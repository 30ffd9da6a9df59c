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
import sys
import weakref
from pathlib import Path
from typing import Any, Callable

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
    """Input/output names and every optimisation profile of the input (min/opt/max) read from the engine;
    both must be float32. ``profile`` is profile 0, ``max_batch`` the largest batch any profile takes."""
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
        profiles = [[shape, shape, shape]]
    else:
        count = int(getattr(engine, "num_optimization_profiles", 1) or 1)
        profiles = [[[int(d) for d in s] for s in engine.get_tensor_profile_shape(inputs[0], k)] for k in range(count)]
    return {"input": inputs[0], "output": outputs[0], "profiles": profiles, "profile": profiles[0],
            "max_batch": max(p[2][0] for p in profiles)}


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
    batch needs more); runs float32 batches on the profile tuned for their batch, in chunks of the
    largest profile's max batch; :meth:`time` times the engine as trtexec does."""

    def __init__(self, cudart: Any, engine: Any, io: dict[str, Any]):
        self.cudart, self.engine, self.io = cudart, engine, io
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineUnavailable("TensorRT could not create an execution context (out of GPU memory?)",
                                    "free GPU memory, or rebuild with a smaller --max-batch")
        self.buffers: dict[str, list[int]] = {}  # name -> [device pointer, bytes]
        self.active = 0  # the context's optimisation profile (0 when it is created)
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

    def _select(self, batch: int, shape: tuple[int, ...]) -> int:
        """Make the profile tuned for ``batch`` active (the one with the smallest max batch that takes it) and
        set the input shape; returns the profile's index."""
        profiles, inp = self.io["profiles"], self.io["input"]
        fits = [k for k, p in enumerate(profiles) if p[0][0] <= batch <= p[2][0]]
        k = min(fits, key=lambda j: profiles[j][2][0]) if fits else 0
        if k != self.active:
            if not self.context.set_optimization_profile_async(k, int(self.stream[0])):
                raise TargetError(f"TensorRT refused optimisation profile {k}", "report this with run.json")
            self.active = k
        if not self.context.set_input_shape(inp, shape):
            lo, hi = profiles[k][0], profiles[k][2]
            raise TargetError(f"TensorRT refused input shape {list(shape)} for {inp!r}: the engine's profile "
                              f"allows {lo} to {hi}", "feed shapes within that range, or rebuild the engine with "
                              "the shape you need (e.g. a larger --max-batch)")
        return k

    def run(self, x: np.ndarray) -> np.ndarray:
        if not self.stream:
            raise TargetError("this TensorRT runner is closed", "load the artifact again")
        inp, out = self.io["input"], self.io["output"]
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._select(len(x), tuple(x.shape))
        y = np.empty(tuple(int(d) for d in self.context.get_tensor_shape(out)), dtype=np.float32)
        stream, cudart = self.stream[0], self.cudart
        d_in, d_out = self._buffer(inp, x.nbytes), self._buffer(out, y.nbytes)
        cuda_call(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, self.h2d, stream), "copy to the GPU")
        self._enqueue()
        cuda_call(cudart.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes, self.d2h, stream), "copy from the GPU")
        cuda_call(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return y

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream[0])):
            raise TargetError("TensorRT execution failed", "see TensorRT's log above")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Batches beyond the largest profile run in chunks; one below every profile's min (a static engine)
        is padded."""
        b, out = self.io["max_batch"], []
        lo = min(p[0][0] for p in self.io["profiles"])
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            pad = np.zeros((max(lo - len(chunk), 0), *chunk.shape[1:]), chunk.dtype)
            out.append(self.run(np.concatenate([chunk, pad]) if len(pad) else chunk)[:len(chunk)])
        return np.concatenate(out)

    def time(self, batch: int, iters: int = 100, warmup: int = 10) -> dict[str, Any]:
        """GPU time of one call at ``batch`` as trtexec measures it (``--useCudaGraph --noDataTransfers``): the
        input is copied to the device once, each call is one launch of a CUDA graph of the engine (plain
        enqueues where capture fails, as trtexec falls back), timed with CUDA events; no host copies."""
        if not self.stream:
            raise TargetError("this TensorRT runner is closed", "load the artifact again")
        c, h, w = self.io["profiles"][0][1][1:]
        x = np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32)
        k = self._select(batch, x.shape)
        out = tuple(int(d) for d in self.context.get_tensor_shape(self.io["output"]))
        stream, cudart = self.stream[0], self.cudart
        d_in = self._buffer(self.io["input"], x.nbytes)
        self._buffer(self.io["output"], 4 * int(np.prod(out)))
        cuda_call(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, self.h2d, stream), "copy to the GPU")
        self._enqueue()  # TensorRT's first enqueue after a shape change runs outside the graph
        cuda_call(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        launch, graph, why = capture_graph(cudart, stream, self._enqueue)
        start, end = (cuda_call(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(2))
        times = []
        try:
            for _ in range(warmup + iters):
                cuda_call(cudart.cudaEventRecord(start, stream), "cudaEventRecord")
                launch()
                cuda_call(cudart.cudaEventRecord(end, stream), "cudaEventRecord")
                cuda_call(cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
                times.append(float(cuda_call(cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime")))
        finally:
            for ev in (start, end):
                cudart.cudaEventDestroy(ev)
            for handle, destroy in zip(graph, (cudart.cudaGraphExecDestroy, cudart.cudaGraphDestroy)):
                destroy(handle)
        return {"batch": batch, "profile": k, "ms": times[warmup:], "cuda_graph": bool(graph), "graph_error": why,
                "host_copies": False, "timer": "CUDA events around each launch"}


def capture_graph(cudart: Any, stream: Any, enqueue: Callable[[], None]) -> tuple[Callable[[], Any], tuple, str | None]:
    """Capture one ``enqueue`` on ``stream`` into a CUDA graph: (launch, (graph exec, graph), None), or, where
    capture fails, (enqueue, (), why)."""
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
    try:
        cuda_call(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
    except TargetError as e:
        return enqueue, (), e.what
    try:
        enqueue()
        failed = None
    except TargetError as e:
        failed = e.what
    err, graph = cudart.cudaStreamEndCapture(stream)  # always ends the capture, also after a failed enqueue
    if failed or int(err) != 0:
        return enqueue, (), failed or f"cudaStreamEndCapture failed: {getattr(err, 'name', err)}"
    try:
        exe = cuda_call(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    except TargetError as e:
        cudart.cudaGraphDestroy(graph)
        return enqueue, (), e.what
    return (lambda: cuda_call(cudart.cudaGraphLaunch(exe, stream), "cudaGraphLaunch")), (exe, graph), None


class EngineRunner(Runner):
    """A :class:`Runner` whose device memory can be freed now (``close()``, or ``with``), not only by GC;
    ``time(batch)`` times the engine without host copies, in a CUDA graph (:meth:`EngineSession.time`)."""

    def close(self) -> None:
        self.predict.close()

    def time(self, batch: int, iters: int = 100, warmup: int = 10) -> dict[str, Any]:
        return self.predict.time(batch, iters, warmup)

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
            "engine_profiles": io["profiles"],
            "engine_meta": ENGINE_META if meta else f"none (no {ENGINE_META}: I/O and profile read from the engine)"}
    return EngineRunner(session, info)
