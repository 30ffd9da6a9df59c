"""TensorRT targets: everything short of TensorRT itself runs here; the engine path runs where it imports."""
import json
import subprocess
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
    EngineOptions,
    EngineUnavailable,
    build_engine,
    configure,
    engine_unavailable,
    network_flags,
    prepare_fp16,
    trtexec_args,
)

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
    assert EngineOptions().cache_path() == tmp_path / "tensorrt" / "timing.cache"
    assert EngineOptions(timing_cache=None).cache_path() is None
    assert EngineOptions(timing_cache="none").cache_path() is None  # as the CLI and recipes spell "off"
    assert EngineOptions(timing_cache="x.cache").cache_path() == Path("x.cache")


def test_trtexec_command_matches_the_options():
    args = trtexec_args(EngineOptions(max_batch=4, workspace_mb=512, optimization_level=5), [3, 32, 32])
    assert args[:3] == ["--onnx=model.onnx", "--saveEngine=model.plan", "--stronglyTyped"]
    assert "--minShapes=input:1x3x32x32" in args and "--maxShapes=input:4x3x32x32" in args
    assert "--memPoolSize=workspace:512M" in args and "--builderOptimizationLevel=5" in args
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


class FakeTrt:
    """Records what :func:`configure` asks of TensorRT's builder API (names from its documentation)."""

    MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    def __init__(self, version="10.3.0", strongly_typed=3, cache_ok=True):
        self.__version__ = version
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(
            **({"STRONGLY_TYPED": strongly_typed} if strongly_typed is not None else {}))
        self.calls, self.cache_ok = [], cache_ok
        rec, fake = self.calls, self

        class Profile:
            def set_shape(self, *a):
                rec.append(("set_shape", *a))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.append(("pool", pool, size))

            def __setattr__(self, k, v):
                rec.append(("set", k, v))

            def add_optimization_profile(self, p):
                rec.append(("add_profile",))

            def create_timing_cache(self, data):
                rec.append(("create_cache", data))
                return data

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.append(("set_cache", cache, ignore_mismatch))
                return fake.cache_ok or cache == b""

        self.builder = types.SimpleNamespace(create_optimization_profile=Profile)
        self.config = Config()


def test_builder_config_from_options(tmp_path):
    fake = FakeTrt()
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"old")
    old = configure(fake, fake.builder, fake.config, EngineOptions(max_batch=4, workspace_mb=256,
                                                                   timing_cache=str(cache)), [3, 32, 32])
    assert old == b"old"
    assert ("pool", "WORKSPACE", 256 << 20) in fake.calls
    assert ("set", "builder_optimization_level", 3) in fake.calls
    assert ("set_shape", "input", (1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32)) in fake.calls
    assert ("add_profile",) in fake.calls and ("set_cache", b"old", False) in fake.calls


def test_mismatched_timing_cache_starts_fresh(tmp_path):
    fake = FakeTrt(cache_ok=False)
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"from another gpu")
    assert configure(fake, fake.builder, fake.config, EngineOptions(timing_cache=str(cache)), [3, 32, 32]) == b""
    assert fake.calls[-1] == ("set_cache", b"", False)


def test_network_is_strongly_typed_on_10_and_11_and_refused_before():
    assert network_flags(FakeTrt("10.3.0", strongly_typed=3)) == 1 << 3
    assert network_flags(FakeTrt("11.4.0", strongly_typed=None)) == 0  # always strongly typed there
    with pytest.raises(EngineUnavailable, match="TensorRT 8.6.2 is too old"):
        network_flags(FakeTrt("8.6.2"))


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
    cache = tmp_path / "t.cache"  # a second build reuses the timing cache it wrote
    get_target(name).build(art, {"tensorrt": EngineOptions(max_batch=4, timing_cache=str(cache))})
    assert cache.is_file()
    assert json.loads((art / "engine.json").read_text())["timing_cache"]["reused"] is False
    get_target(name).build(art, {"tensorrt": EngineOptions(max_batch=4, timing_cache=str(cache))})
    assert json.loads((art / "engine.json").read_text())["timing_cache"]["reused"] is True
