"""TensorRT targets: everything short of TensorRT itself runs here; the engine path runs where it imports."""
import ctypes
import enum
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_spec

from edgevit.errors import TargetError
from edgevit.graph import export_onnx
from edgevit.run.export import ExportOptions, run_export
from edgevit.targets import get_target
from edgevit.targets import tensorrt as trtmod
from edgevit.targets.trt_engine import (
    BUILD_SCRIPT,
    EngineOptions,
    EngineUnavailable,
    attach_timing_cache,
    build_engine,
    configure,
    engine_layers,
    engine_unavailable,
    load_engine,
    network_flags,
    prepare_fp16,
    trtexec_args,
    write_build_script,
)
from edgevit.targets.trt_runtime import summarize_layers

NO_ENGINE = engine_unavailable()


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory):
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model(tiny_spec()).eval()
    path = tmp_path_factory.mktemp("trt") / "float.onnx"
    export_onnx(model, 32, path)
    return model, path


@pytest.fixture(scope="module")
def trt_run(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("trt-run") / "r"
    opts = ExportOptions(targets=["tensorrt-fp16", "tensorrt-int8"], out=out, data="digits", split="val",
                         validate_limit=40, iters=3, warmup=1,
                         options=dict(max_batch=4, timing_cache=None))
    run_export(tiny_spec(checkpoint=str(tiny_checkpoint)), opts)
    return out


def test_engine_options_are_checked():
    with pytest.raises(TargetError, match="min 1 <= opt 4 <= max 2"):
        EngineOptions(opt_batch=4, max_batch=2).check()
    with pytest.raises(TargetError, match="too small"):
        EngineOptions(workspace_mb=4).check()
    with pytest.raises(TargetError, match="outside 0-5"):
        EngineOptions(optimization_level=9).check()
    assert EngineOptions(max_batch=16).check().max_batch == 16
    assert EngineOptions(max_batch=4).shapes([3, 32, 32]) == {"input": [[1, 3, 32, 32], [1, 3, 32, 32],
                                                                        [4, 3, 32, 32]]}


def test_timing_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path))
    keyed = EngineOptions().cache_path("10.3.0", "NVIDIA Jetson Orin Nano (8GB)", "8.7")
    assert keyed == tmp_path / "tensorrt" / "10.3.0" / "nvidia-jetson-orin-nano-8gb-sm87" / "timing.cache"
    assert EngineOptions().cache_path("11.0.0", "NVIDIA H200", "9.0").parent.name == "nvidia-h200-sm90"
    assert EngineOptions().cache_path() == tmp_path / "tensorrt" / "any" / "any-gpu" / "timing.cache"
    assert EngineOptions(timing_cache=None).cache_path() is None
    assert EngineOptions(timing_cache="none").cache_path() is None  # as the CLI and recipes spell "off"
    assert EngineOptions(timing_cache="x.cache").cache_path() == Path("x.cache")


def test_trtexec_command_matches_the_options():
    args = trtexec_args(EngineOptions(max_batch=4, workspace_mb=512, optimization_level=5), [3, 32, 32])
    assert args[:3] == ["--onnx=model.onnx", "--saveEngine=model.plan", "--stronglyTyped"]
    assert "--minShapes=input:1x3x32x32" in args and "--maxShapes=input:4x3x32x32" in args
    assert "--memPoolSize=workspace:512M" in args and "--builderOptimizationLevel=5" in args
    assert "--profilingVerbosity=detailed" in args  # the engine inspector can tell layer precisions
    assert "--timingCacheFile=timing.cache" in args
    assert not any("timingCache" in a for a in trtexec_args(EngineOptions(timing_cache=None), [3, 32, 32]))


def test_fp16_onnx_keeps_layernorm_in_fp32_and_float32_io(float_onnx, tmp_path):
    import onnx
    from onnx import TensorProto

    model, src = float_onnx
    facts = prepare_fp16(src, tmp_path / "m.onnx")
    g = onnx.load(str(tmp_path / "m.onnx"))
    assert facts["fp32_layers"] == sum(n.op_type == "LayerNormalization" for n in g.graph.node) == 5
    types_ = {vi.name: vi.type.tensor_type.elem_type for vi in
              [*g.graph.input, *g.graph.output, *onnx.shape_inference.infer_shapes(g).graph.value_info]}
    assert types_["input"] == types_["logits"] == TensorProto.FLOAT
    for n in g.graph.node:
        if n.op_type == "LayerNormalization":  # computes in fp32 behind a cast
            assert types_.get(n.input[0]) == TensorProto.FLOAT
    weights = [i for i in g.graph.initializer if len(i.dims) == 2]
    assert weights and all(w.data_type == TensorProto.FLOAT16 for w in weights)
    runner = get_target("tensorrt-fp16").load_file(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(runner(x) - ref).max() < 0.02 * max(1.0, np.abs(ref).max())


# -- the recording stand-in: TensorRT and cuda-python's runtime, by their documented names -------
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
             layers=RECORDED_LAYERS):
    """A ``tensorrt`` module that records what edgevit asks of it; ``profile`` is (min, opt, max) of (batch, hw/8)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.calls = version, []
    rec = trt.calls
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(
        **({"STRONGLY_TYPED": strongly_typed} if strongly_typed is not None else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED", LAYER_NAMES_ONLY="LAYER_NAMES_ONLY")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32")
    shapes = [(b, 3, 8 * s, 8 * s) for b, s in profile]

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

    class Inspector:
        def __setattr__(self, k, v):
            rec.append(("inspector", k, v is not None))

        def get_engine_information(self, fmt):
            rec.append(("engine_information", fmt))
            return layers

    class Context:
        def __init__(self):
            self.addr, self.shape = {}, None

        def set_input_shape(self, name, shape):
            ok = all(lo <= s <= hi for lo, s, hi in zip(shapes[0], shape, shapes[2])) and len(shape) == 4
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

    class Engine:
        num_io_tensors = 2

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
            return shapes

        create_execution_context = Context
        create_engine_inspector = Inspector

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            rec.append(("deserialize", bytes(data)))
            return Engine() if bytes(data).startswith(b"PLAN") else None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.device = {}  # the fake GPU's memory, shared with the fake cudart
    trt.builder, trt.config = Builder(None), Config()
    return trt


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
        if kind == 1:
            mem[dst][:n] = ctypes.string_at(src, n)
        else:
            ctypes.memmove(dst, bytes(mem[src][:n]), n)
        return (ok,)

    rt.cudaMalloc, rt.cudaMemcpyAsync = malloc, memcpy
    rt.cudaFree = lambda p: (rt.calls.append(("free", p)) or mem.pop(p, None) and ok,)
    return rt


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """Install the stand-ins as ``tensorrt`` and ``cuda.bindings.runtime``; returns a function that does it again
    with other stand-in options."""
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path / "cache"))

    def install(**kw):
        trt = fake_trt(**kw)
        rt = fake_cudart(trt)
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


def test_builder_config_from_options():
    fake = fake_trt()
    configure(fake, fake.builder, fake.config, EngineOptions(max_batch=4, workspace_mb=256), [3, 32, 32])
    assert ("pool", "WORKSPACE", 256 << 20) in fake.calls
    assert ("set", "builder_optimization_level", 3) in fake.calls
    assert ("set", "profiling_verbosity", "DETAILED") in fake.calls  # the engine inspector can tell precisions
    assert ("set_shape", "input", (1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32)) in fake.calls
    assert ("add_profile",) in fake.calls


def test_timing_cache_is_reused_when_tensorrt_takes_it(tmp_path):
    fake, cache = fake_trt(), tmp_path / "new" / "dir" / "t.cache"
    rec = attach_timing_cache(fake.config, cache)
    assert cache.parent.is_dir() and rec == {"path": str(cache), "reused": False, "rejected": None, "active": True}
    cache.write_bytes(b"old")
    assert attach_timing_cache(fake.config, cache)["reused"] is True
    assert ("create_cache", b"old") in fake.calls and ("set_cache", False) in fake.calls
    assert attach_timing_cache(fake.config, None) is None


@pytest.mark.parametrize("mode, why", [("refuse", "another TensorRT version or GPU"), ("none", "returned None"),
                                       ("raise", "RuntimeError: corrupt cache")])
def test_rejected_timing_cache_starts_fresh_and_says_why(tmp_path, mode, why):
    fake, cache = fake_trt(cache=mode), tmp_path / "t.cache"
    cache.write_bytes(b"from another gpu")
    rec = attach_timing_cache(fake.config, cache)
    assert rec["reused"] is False and rec["active"] is True and why in rec["rejected"]
    assert fake.calls[-2:] == [("create_cache", b""), ("set_cache", False)]  # a fresh cache


def test_network_is_strongly_typed_on_10_and_11_and_refused_before():
    assert network_flags(fake_trt("10.3.0")) == 1 << 1 == 2  # NetworkDefinitionCreationFlag.STRONGLY_TYPED == 1
    assert network_flags(fake_trt("11.4.0", strongly_typed=None)) == 0  # always strongly typed there
    with pytest.raises(EngineUnavailable, match="TensorRT 8.6.2 is too old"):
        network_flags(fake_trt("8.6.2"))


def test_build_with_the_stand_in(stand_in, tmp_path):
    trt, _ = stand_in()
    onnx_path, art = tmp_path / "model.onnx", tmp_path / "art"
    onnx_path.write_bytes(b"onnx")
    meta = build_engine(onnx_path, art, EngineOptions(max_batch=4), [3, 32, 32], precision="int8 GEMMs + fp16")
    assert ("create_network", 2) in trt.calls and ("set", "profiling_verbosity", "DETAILED") in trt.calls
    assert (art / "model.plan").read_bytes() == b"PLAN:fake"
    on_disk = json.loads((art / "engine.json").read_text())
    assert on_disk == meta and meta["built_by"] == "edgevit" and meta["runtime_precision"] == "int8 GEMMs + fp16"
    assert meta["gpu"] == "Fake GPU Orin" and meta["compute_capability"] == "8.7" and meta["tensorrt"] == "10.3.0"
    keyed = tmp_path / "cache" / "tensorrt" / "10.3.0" / "fake-gpu-orin-sm87" / "timing.cache"
    assert meta["timing_cache"]["path"] == str(keyed) and keyed.read_bytes() == b"timing-cache"
    assert meta["timing_cache"]["reused"] is False and meta["timing_cache"]["saved"] is True
    assert meta["layers_summary"] == {"layers": 5, "detail": "detailed", "attention_fused": True, "myelin_nodes": 1,
                                      "by_precision": {"fp32": 2, "fp16": 2, "int8": 1}}
    layers = json.loads((art / "engine_layers.json").read_text())["layers"]
    assert layers[2]["precision"] == "int8" and layers[1]["origin"] == "[ONNX Layer: /patch_embed/proj/Conv]"
    assert ("inspector", "execution_context", True) in trt.calls  # shapes set: formats are not "N/A"
    assert ("set_input_shape", "input", (1, 3, 32, 32), True) in trt.calls  # the profile's opt shape
    again = build_engine(onnx_path, art, EngineOptions(max_batch=4), [3, 32, 32])
    assert again["timing_cache"]["reused"] is True and again["runtime_precision"] is None


def test_build_records_a_rejected_timing_cache(stand_in, tmp_path):
    stand_in(cache="refuse")
    onnx_path, cache = tmp_path / "model.onnx", tmp_path / "old.cache"
    onnx_path.write_bytes(b"onnx")
    cache.write_bytes(b"from TensorRT 10.0 on another GPU")
    meta = build_engine(onnx_path, tmp_path / "art", EngineOptions(timing_cache=str(cache)), [3, 32, 32])
    assert meta["timing_cache"]["reused"] is False and "another TensorRT" in meta["timing_cache"]["rejected"]
    assert cache.read_bytes() == b"timing-cache"  # replaced by the fresh cache this build made


def test_plan_without_engine_json_loads_with_the_profile_of_the_engine(stand_in, tmp_path):
    trt, rt = stand_in()
    art = make_plan(tmp_path / "art")  # as build_engine.sh from an old edgevit, trtexec by hand, or a board copy
    runner = load_engine(art)
    assert runner.info["precision"] is None and runner.info["device"] == "Fake GPU Orin"
    assert runner.info["runtime"].startswith("tensorrt 10.3.0") and "no engine.json" in runner.info["engine_meta"]
    assert runner.info["engine_profile"] == [[1, 3, 32, 32], [1, 3, 32, 32], [4, 3, 32, 32]]
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    y = runner(x)
    np.testing.assert_allclose(y, 2 * x.reshape(6, -1)[:, :10] + 1, rtol=1e-6)
    shapes = [c[2][0] for c in trt.calls if c[0] == "set_input_shape"]
    assert shapes == [4, 2]  # chunks of the profile's max batch
    assert ("profile_shape", "input", 0) in trt.calls and ("execute", 4242) in trt.calls
    runner(x)
    assert [c[0] for c in rt.calls].count("malloc") == 2  # input and output allocated once, then reused
    runner.close()
    assert [c[0] for c in rt.calls].count("free") == 2 and ("stream_destroy", 4242) in rt.calls and not trt.device
    with pytest.raises(TargetError, match="closed"):
        runner(x)


def test_engine_memory_is_freed_when_the_runner_is_collected(stand_in, tmp_path):
    import gc

    trt, rt = stand_in()
    runner = load_engine(make_plan(tmp_path / "art"))
    runner(np.zeros((1, 3, 32, 32), np.float32))
    assert trt.device
    del runner
    gc.collect()
    assert not trt.device and ("stream_destroy", 4242) in rt.calls


def test_engine_json_gives_the_runtime_precision(stand_in, tmp_path):
    stand_in()
    art = make_plan(tmp_path / "art", {"tensorrt": "10.3.0", "runtime_precision": "int8 GEMMs + fp16"})
    with load_engine(art) as runner:
        assert runner.info["precision"] == "int8 GEMMs + fp16" and runner.info["engine_meta"] == "engine.json"


def test_a_static_engine_runs_its_one_batch(stand_in, tmp_path):
    trt, _ = stand_in(profile=((2, 4), (2, 4), (2, 4)))
    runner = load_engine(make_plan(tmp_path / "art"))
    x = np.arange(5 * 3 * 32 * 32, dtype=np.float32).reshape(5, 3, 32, 32)
    np.testing.assert_allclose(runner(x), 2 * x.reshape(5, -1)[:, :10] + 1)  # the last image padded to batch 2
    assert [c[2][0] for c in trt.calls if c[0] == "set_input_shape"] == [2, 2, 2]
    assert not any(c[0] == "profile_shape" for c in trt.calls)


def test_a_shape_outside_the_profile_is_a_clear_error(stand_in, tmp_path):
    stand_in(profile=((1, 4), (2, 4), (8, 4)))
    runner = load_engine(make_plan(tmp_path / "art"))
    with pytest.raises(TargetError, match=r"refused input shape \[1, 3, 64, 64\] for 'input': the engine's profile "
                                          r"allows \[1, 3, 32, 32\] to \[8, 3, 32, 32\]") as e:
        runner(np.zeros((1, 3, 64, 64), np.float32))
    assert "rebuild" in e.value.fix


def test_non_float32_io_is_a_clear_error(stand_in, tmp_path):
    stand_in(dtype="HALF")
    with pytest.raises(TargetError, match="output 'logits' is HALF, not float32") as e:
        load_engine(make_plan(tmp_path / "art"))
    assert "model.onnx" in e.value.fix


def test_a_plan_from_another_tensorrt_says_so(stand_in, tmp_path):
    stand_in()
    art = make_plan(tmp_path / "art", {"tensorrt": "10.0.1", "gpu": "Orin"})
    (art / "model.plan").write_bytes(b"not a plan")
    with pytest.raises(EngineUnavailable, match="built by TensorRT 10.0.1 on Orin and does not load with TensorRT "
                                                "10.3.0"):
        load_engine(art)


def test_engine_unavailable_says_what_is_missing(stand_in, monkeypatch):
    trt, rt = stand_in()
    assert engine_unavailable() is None
    rt.cudaGetDeviceCount = lambda: (0, 0)
    assert "no CUDA GPU is visible" in engine_unavailable()
    rt.cudaGetDeviceCount = lambda: (enum.IntEnum("cudaError_t", {"cudaErrorInsufficientDriver": 35})(35), None)
    assert "no CUDA GPU is usable (cudaGetDeviceCount: cudaErrorInsufficientDriver)" in engine_unavailable()
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "pip install cuda-python" in engine_unavailable()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert "TensorRT is not installed" in engine_unavailable()


def test_builder_and_runner_import_no_torch(stand_in, monkeypatch, tmp_path):
    import ast

    from edgevit.targets import trt_engine, trt_runtime

    for mod in (trt_engine, trt_runtime):  # no import of torch anywhere, function-local ones included
        tree = ast.parse(Path(mod.__file__).read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.split(".")[0] == "torch"], mod.__name__
    stand_in()
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` from here on raises
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    build_engine(onnx_path, tmp_path, EngineOptions(max_batch=4), [3, 32, 32])
    assert load_engine(tmp_path)(np.ones((5, 3, 32, 32), np.float32)).shape == (5, 10)
    assert engine_layers(tmp_path)["summary"]["layers"] == 5


def test_engine_layers_summary_says_what_it_can_tell():
    detailed = summarize_layers(RECORDED_LAYERS)["summary"]
    assert detailed["attention_fused"] is True and detailed["by_precision"]["int8"] == 1
    myelin = summarize_layers(json.dumps({"Layers": [
        {"Name": "{ForeignNode[/blocks.0/attn/MatMul.../blocks.0/attn/proj/MatMul]}", "LayerType": "Myelin",
         "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}], "Outputs": []}]}))["summary"]
    assert myelin["attention_fused"] is None and myelin["myelin_nodes"] == 1 and myelin["by_precision"] == {
        "unknown": 1}
    plain = summarize_layers(json.dumps({"Layers": [
        {"Name": "/blocks.0/attn/MatMul", "LayerType": "MatrixMultiply",
         "Inputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "/blocks.0/attn/Softmax", "LayerType": "Softmax", "Inputs": [{"Format/Datatype": "Float"}]}]}))
    assert plain["summary"]["attention_fused"] is False and plain["layers"][0]["precision"] == "fp16"
    names = summarize_layers(json.dumps({"Layers": ["/blocks.0/attn/qkv/MatMul", "_gemm_mha_v2_myl0_3"]}))
    assert names["summary"]["detail"] == "names only" and names["summary"]["attention_fused"] is True
    assert summarize_layers("")["summary"]["attention_fused"] is None


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_build_script_writes_engine_json(stand_in, tmp_path):
    art, bin_dir = tmp_path / "art", tmp_path / "bin"
    art.mkdir()
    bin_dir.mkdir()
    (art / "model.onnx").write_bytes(b"onnx")
    args = trtexec_args(EngineOptions(max_batch=4), [3, 32, 32])
    write_build_script(art, args, precision="int8 GEMMs + fp16")
    sc = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if Path(sc).is_file():
        r = subprocess.run([sc, "--shell=bash", str(art / "build_engine.sh")], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
    trtexec = bin_dir / "fake-trtexec"  # writes the plan named by --saveEngine and prints trtexec's log lines
    trtexec.write_text('#!/usr/bin/env bash\nfor a in "$@"; do case $a in --saveEngine=*) '
                       'printf PLAN:script > "${a#--saveEngine=}";; esac; done\n'
                       'echo "[I] TensorRT version: 10.3.0"\necho "[I] Selected Device: Orin"\n')
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/usr/bin/env bash\necho \'NVIDIA "Quoted" GPU\'\n')
    for f in (trtexec, smi):
        f.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(trtexec), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(art / "build_engine.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    meta = json.loads((art / "engine.json").read_text())
    assert meta["tensorrt"] == "10.3.0" and meta["gpu"] == 'NVIDIA "Quoted" GPU' and meta["built_by"] == BUILD_SCRIPT
    assert meta["trtexec_args"] == args and meta["runtime_precision"] == "int8 GEMMs + fp16"
    assert meta["profile"] == {"input": [[1, 3, 32, 32], [1, 3, 32, 32], [4, 3, 32, 32]]}
    assert meta["engine_sha256"] == hashlib.sha256(b"PLAN:script").hexdigest() and meta["engine_bytes"] == 11
    smi.unlink()  # no nvidia-smi (a Jetson): the GPU trtexec selected
    r = subprocess.run(["bash", str(art / "build_engine.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads((art / "engine.json").read_text())["gpu"] == "Orin"
    stand_in()
    assert load_engine(art).info["precision"] == "int8 GEMMs + fp16"  # the script's plan loads


def test_build_script_fails_without_a_plan(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    write_build_script(tmp_path, ["--onnx=model.onnx", "--saveEngine=model.plan"])
    r = subprocess.run(["bash", str(tmp_path / "build_engine.sh")], env={**os.environ, "TRTEXEC": "true"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "wrote no model.plan" in r.stderr and not (tmp_path / "engine.json").exists()


@pytest.mark.skipif(NO_ENGINE is None, reason="TensorRT and a GPU are present: the engine tests below run")
def test_no_tensorrt_is_a_clear_error(float_onnx, tmp_path):
    with pytest.raises(EngineUnavailable, match="cannot build a TensorRT engine here") as e:
        build_engine(float_onnx[1], tmp_path, EngineOptions(), [3, 32, 32])
    assert "build_engine.sh" in e.value.fix


def test_tensorrt_artifacts_without_tensorrt(trt_run, capsys):
    for name in ("tensorrt-fp16", "tensorrt-int8"):
        art = trt_run / "artifacts" / name
        mf = json.loads((art / "manifest.json").read_text())
        e = mf["export"]
        assert e["trtexec_args"][:3] == ["--onnx=model.onnx", "--saveEngine=model.plan", "--stronglyTyped"]
        assert "--maxShapes=input:4x3x32x32" in e["trtexec"] and "timingCache" not in e["trtexec"]
        assert e["engine_options"]["max_batch"] == 4
        script = (art / "build_engine.sh").read_text()
        assert e["trtexec"].split(" ", 1)[1] in script
        subprocess.run(["bash", "-n", str(art / "build_engine.sh")], check=True)
        if NO_ENGINE:
            assert e["engine"]["built"] is False and "TensorRT is not installed" in e["engine"]["reason"] or \
                "no CUDA GPU" in e["engine"]["reason"]
            assert not (art / "model.plan").exists() and "onnxruntime" in mf["runtime"]["runtime"]
    assert json.loads((trt_run / "results" / "validate.json").read_text()).keys() == {"tensorrt-fp16",
                                                                                        "tensorrt-int8"}
    rules = json.loads((trt_run / "artifacts" / "tensorrt-int8" / "manifest.json").read_text())["export"]
    assert rules["tensorrt_rules"]["violations"] == []


def test_engine_command_without_tensorrt_exits_clearly(trt_run):
    from typer.testing import CliRunner

    from edgevit.cli import app

    if NO_ENGINE is None:
        pytest.skip("TensorRT and a GPU are present")
    res = CliRunner().invoke(app, ["engine", str(trt_run / "artifacts" / "tensorrt-int8")])
    assert res.exit_code == 2 and "cannot build a TensorRT engine here" in res.output
    assert "Traceback" not in res.output


def test_engine_command_refuses_other_targets(trt_run, tmp_path):
    from typer.testing import CliRunner

    from edgevit.cli import app

    res = CliRunner().invoke(app, ["engine", str(tmp_path)])
    assert res.exit_code == 2 and "not an edgevit artifact" in res.output


# -- the engine path: runs where TensorRT and a GPU are -----------------------------------------
@pytest.mark.skipif(NO_ENGINE is not None, reason=f"engine path needs TensorRT and a GPU: {NO_ENGINE}")
@pytest.mark.parametrize("name", ["tensorrt-fp16", "tensorrt-int8"])
def test_engine_builds_loads_and_matches(trt_run, name, tmp_path, tiny_checkpoint):
    from edgevit.models import create_model

    art = trt_run / "artifacts" / name
    mf = json.loads((art / "manifest.json").read_text())
    assert mf["export"]["engine"]["built"] is True and (art / "model.plan").is_file()
    meta = json.loads((art / "engine.json").read_text())
    assert meta["strongly_typed"] and meta["profile"]["input"][2][0] == 4
    runner = trtmod.TensorRtTarget.load(get_target(name), art)
    assert runner.info["runtime"].startswith("tensorrt")
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)  # > max batch: chunks
    with torch.inference_mode():
        ref = create_model(tiny_spec(checkpoint=str(tiny_checkpoint))).eval()(torch.from_numpy(x)).numpy()
    got = runner(x)
    assert got.shape == (6, 10)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > (0.99 if name == "tensorrt-fp16" else 0.9)
    assert meta["built_by"] == "edgevit" and meta["layers_summary"]["layers"] > 0
    assert (art / "engine_layers.json").is_file()
    cache = tmp_path / "t.cache"  # a second build reuses the timing cache it wrote
    get_target(name).build(art, EngineOptions(max_batch=4, timing_cache=str(cache)))
    assert cache.is_file()
    assert json.loads((art / "engine.json").read_text())["timing_cache"]["reused"] is False
    get_target(name).build(art, EngineOptions(max_batch=4, timing_cache=str(cache)))
    assert json.loads((art / "engine.json").read_text())["timing_cache"]["reused"] is True
    (art / "engine.json").unlink()  # a plan without engine.json (trtexec by hand) loads too
    assert load_engine(art)(x).shape == (6, 10)
