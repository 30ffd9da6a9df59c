"""The recording stand-in for TensorRT and cuda-python's runtime, by their documented names (TensorRT is not
installable here): tests/test_tensorrt.py and tests/test_trt_runtime.py drive edgevit's builder and runner with it."""
import ctypes
import enum
import json
import sys
import types
from pathlib import Path

import numpy as np

RECORDED_LAYERS = json.dumps({"Layers": [  # the shape of IEngineInspector's JSON at detailed verbosity
    {"Name": "Reformatting CopyNode for Input Tensor 0 to /patch_embed/proj/Conv", "LayerType": "Reformat",
     "Inputs": [{"Name": "input", "Location": "Device", "Dimensions": [1, 3, 32, 32],
                 "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "r0", "Location": "Device", "Dimensions": [1, 3, 32, 32],
                  "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}], "TacticValue": "0x0"},
    {"Name": "/patch_embed/proj/Conv", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "r0", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": [{"Name": "p", "Format/Datatype": "Row major linear FP16 format"}],
     "TacticName": "sm87_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc",
     "Metadata": "[ONNX Layer: /patch_embed/proj/Conv]"},
    {"Name": "/blocks.0/attn/qkv/MatMul", "LayerType": "gemm",
     "Inputs": [{"Name": "q8", "Format/Datatype": "Row major linear Int8 format"}],
     "Outputs": [{"Name": "qkv", "Format/Datatype": "Row major linear FP16 format"}],
     "TacticName": "sm87_xmma_gemm_i8f16_i8i32_f32_tn_n_tilesize128x128x64"},
    {"Name": "_gemm_mha_v2_myl0_12", "LayerType": "kgen",
     "Inputs": [{"Name": "qkv", "Format/Datatype": "Half"}], "Outputs": [{"Name": "a", "Format/Datatype": "Half"}]},
    {"Name": "/blocks.0/norm1/LayerNormalization", "LayerType": "Normalization",
     "Inputs": [{"Name": "a", "Format/Datatype": "Float"}], "Outputs": [{"Name": "n", "Format/Datatype": "Float"}]},
], "Bindings": ["input", "logits"]})


def fake_trt(version="10.3.0", strongly_typed=1, cache="ok", dtype="FLOAT", profile=((1, 4), (1, 4), (4, 4)),
             layers=RECORDED_LAYERS, more_profiles=()):
    """A ``tensorrt`` module that records what edgevit asks of it; ``profile`` is (min, opt, max) of (batch, hw/8),
    ``more_profiles`` the engine's profiles after it."""
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.calls = version, []
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(
        **({"STRONGLY_TYPED": strongly_typed} if strongly_typed is not None else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED", LAYER_NAMES_ONLY="LAYER_NAMES_ONLY")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32")
    trt.device = {}  # the fake GPU's memory, shared with the fake cudart
    _builder_side(trt, cache)
    every = [[(b, 3, 8 * s, 8 * s) for b, s in p] for p in (profile, *more_profiles)]
    _engine_side(trt, every, dtype, layers)
    return trt


def _builder_side(trt, cache: str) -> None:
    """Logger, Builder (its config, profiles, timing cache) and OnnxParser; ``cache`` says how the timing cache
    behaves ("ok", "refuse", "none", "raise")."""
    rec = trt.calls

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            rec.append(("logger", severity))

    class Profile:
        def set_shape(self, *a):
            rec.append(("set_shape", *a))

    class Cache:
        def serialize(self):
            return b"timing-cache"

    Config = _config_class(rec, cache, Cache)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.append(("create_network", flags))
            return "network"

        create_optimization_profile = Profile
        create_builder_config = Config

        def build_serialized_network(self, network, config):
            rec.append(("build",))
            return b"PLAN:fake"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec.append(("parse", Path(path).name))
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.builder, trt.config = Builder(None), Config()


def _config_class(rec: list, cache: str, Cache) -> type:
    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.append(("pool", pool, size))

        def __setattr__(self, k, v):
            rec.append(("set", k, v))

        def add_optimization_profile(self, p):
            rec.append(("add_profile",))

        def create_timing_cache(self, data):
            rec.append(("create_cache", bytes(data)))
            if cache == "raise" and data:
                raise RuntimeError("corrupt cache")
            return None if cache == "none" and data else Cache()

        def set_timing_cache(self, c, ignore_mismatch):
            rec.append(("set_cache", ignore_mismatch))
            return cache != "refuse" or not rec[-2][1]  # refuses a non-empty cache

        def get_timing_cache(self):
            return Cache()

    return Config


def _engine_side(trt, every: list, dtype: str, layers: str) -> None:
    """Runtime -> Engine (its I/O, profiles ``every``) -> execution context and inspector."""
    rec, shapes = trt.calls, every[0]

    class Inspector:
        def __setattr__(self, k, v):
            rec.append(("inspector", k, v is not None))

        def get_engine_information(self, fmt):
            rec.append(("engine_information", fmt))
            return layers

    Context = _context_class(trt, every)

    class Engine:
        num_io_tensors = 2
        num_optimization_profiles = len(every)

        def get_tensor_name(self, i):
            return ["input", "logits"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType[dtype] if name == "logits" else trt.DataType.FLOAT

        def get_tensor_shape(self, name):
            static = shapes[0] == shapes[2]
            return shapes[0] if static and name == "input" else (-1, 3, *shapes[0][2:]) if name == "input" else (-1, 10)

        def get_tensor_profile_shape(self, name, index):
            rec.append(("profile_shape", name, index))
            return every[index]

        create_execution_context = Context
        create_engine_inspector = Inspector

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            rec.append(("deserialize", bytes(data)))
            return Engine() if bytes(data).startswith(b"PLAN") else None

    trt.Runtime = Runtime


def _context_class(trt, every: list) -> type:
    """The execution context: logits = 2 * the first 10 pixels + 1, computed through the fake device memory."""
    rec = trt.calls

    class Context:
        def __init__(self):
            self.addr, self.shape, self.profile = {}, None, 0

        def set_optimization_profile_async(self, index, stream):
            rec.append(("set_profile", index, stream))
            self.profile = index
            return index < len(every)

        def set_input_shape(self, name, shape):
            lo_, _, hi_ = every[self.profile]
            ok = all(lo <= s <= hi for lo, s, hi in zip(lo_, shape, hi_)) and len(shape) == 4
            rec.append(("set_input_shape", name, tuple(shape), ok))
            self.shape = tuple(shape) if ok else self.shape
            return ok

        def get_tensor_shape(self, name):
            return (self.shape[0], 10)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream):  # logits = 2 * the first 10 pixels + 1, through "device" memory
            rec.append(("execute", stream))
            n = int(np.prod(self.shape))
            x = np.frombuffer(bytes(trt.device[self.addr["input"]][:4 * n]), np.float32).reshape(self.shape)
            y = (2 * x.reshape(len(x), -1)[:, :10] + 1).astype(np.float32)
            trt.device[self.addr["logits"]][:y.nbytes] = y.tobytes()
            return True

    return Context


def fake_cudart(trt, count=1):
    """cuda-python's runtime module as edgevit calls it: every call returns (err, *values)."""
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.calls, mem, ok = [], trt.device, 0
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaGetDeviceCount = lambda: (ok, count)
    rt.cudaGetDeviceProperties = lambda i: (ok, types.SimpleNamespace(name=b"Fake GPU Orin\0\0", major=8, minor=7))
    rt.cudaStreamCreate = lambda: (rt.calls.append(("stream",)) or ok, 4242)
    rt.cudaStreamDestroy = lambda s: (rt.calls.append(("stream_destroy", s)) or ok,)
    rt.cudaStreamSynchronize = lambda s: (ok,)

    def malloc(n):
        ptr = 0x1000 * (len(rt.calls) + 1)
        mem[ptr] = bytearray(n)
        rt.calls.append(("malloc", n))
        return ok, ptr

    def memcpy(dst, src, n, kind, stream):
        rt.calls.append(("memcpy", kind))
        if kind == 1:
            mem[dst][:n] = ctypes.string_at(src, n)
        else:
            ctypes.memmove(dst, bytes(mem[src][:n]), n)
        return (ok,)

    rt.cudaMalloc, rt.cudaMemcpyAsync = malloc, memcpy
    rt.cudaFree = lambda p: (rt.calls.append(("free", p)) or mem.pop(p, None) and ok,)
    rt.capture_error = 0  # what cudaStreamBeginCapture returns (a capture that fails: nonzero)
    rt.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal="global")
    rt.cudaStreamBeginCapture = lambda s, mode: (rt.calls.append(("begin_capture", s, mode)) or rt.capture_error,)
    rt.cudaStreamEndCapture = lambda s: (rt.calls.append(("end_capture", s)) or ok, "graph")
    rt.cudaGraphInstantiate = lambda g, flags: (rt.calls.append(("instantiate", g)) or ok, "graph-exec")
    rt.cudaGraphLaunch = lambda e, s: (rt.calls.append(("graph_launch", e, s)) or ok,)
    rt.cudaGraphExecDestroy = lambda e: (rt.calls.append(("graph_exec_destroy", e)) or ok,)
    rt.cudaGraphDestroy = lambda g: (rt.calls.append(("graph_destroy", g)) or ok,)
    rt.cudaEventCreate = lambda: (ok, f"event{len(rt.calls)}")
    rt.cudaEventRecord = lambda e, s: (rt.calls.append(("event_record", e)) or ok,)
    rt.cudaEventSynchronize = lambda e: (ok,)
    rt.cudaEventElapsedTime = lambda a, b: (ok, 0.25)
    rt.cudaEventDestroy = lambda e: (rt.calls.append(("event_destroy", e)) or ok,)
    return rt


def installer(monkeypatch, tmp_path):
    """Install the stand-ins as ``tensorrt`` and ``cuda.bindings.runtime``; returns a function that does it again
    with other stand-in options."""
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path / "cache"))

    def install(**kw):
        trt = fake_trt(**kw)
        rt = fake_cudart(trt)
        trt.rt = rt
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, rt
        for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                          ("cuda.bindings.runtime", rt)):
            monkeypatch.setitem(sys.modules, name, mod)
        return trt, rt

    return install


def make_plan(art: Path, meta: dict | None = None) -> Path:
    art.mkdir(parents=True, exist_ok=True)
    (art / "model.plan").write_bytes(b"PLAN:from trtexec")
    if meta is not None:
        (art / "engine.json").write_text(json.dumps(meta))
    return art


AS_BUILT = {"profile": ((1, 4), (8, 4), (8, 4)), "more_profiles": (((1, 4), (1, 4), (1, 4)),)}  # EngineOptions()'s
