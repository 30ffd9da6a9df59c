"""TensorRT targets: everything short of TensorRT itself runs here; the engine path runs where it imports."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_spec
from trt_stand_in import fake_trt, installer

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
    engine_unavailable,
    load_engine,
    network_flags,
    prepare_fp16,
    profiles_of,
    trtexec_args,
    write_build_script,
)

NO_ENGINE = engine_unavailable()


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    return installer(monkeypatch, tmp_path)


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
    # one profile per batch asked, tuned for it (opt = max = that batch), the largest first
    assert EngineOptions(max_batch=4).profiles([3, 32, 32]) == [
        {"input": [[1, 3, 32, 32], [4, 3, 32, 32], [4, 3, 32, 32]]},
        {"input": [[1, 3, 32, 32], [1, 3, 32, 32], [1, 3, 32, 32]]}]
    assert EngineOptions(opt_batch=64, max_batch=64).batches() == [64]


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
    assert args[3:11] == ["--profile=0", "--minShapes=input:1x3x32x32", "--optShapes=input:4x3x32x32",
                          "--maxShapes=input:4x3x32x32", "--profile=1", "--minShapes=input:1x3x32x32",
                          "--optShapes=input:1x3x32x32", "--maxShapes=input:1x3x32x32"]  # trtexec's multi-profile form
    assert profiles_of(args) == EngineOptions(max_batch=4).profiles([3, 32, 32])
    one = trtexec_args(EngineOptions(opt_batch=8, max_batch=8), [3, 32, 32])
    assert not any(a.startswith("--profile=") for a in one) and "--optShapes=input:8x3x32x32" in one
    assert profiles_of(one) == [{"input": [[1, 3, 32, 32], [8, 3, 32, 32], [8, 3, 32, 32]]}]
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


def test_builder_config_from_options():
    fake = fake_trt()
    configure(fake, fake.builder, fake.config, EngineOptions(max_batch=4, workspace_mb=256), [3, 32, 32])
    assert ("pool", "WORKSPACE", 256 << 20) in fake.calls
    assert ("set", "builder_optimization_level", 3) in fake.calls
    assert ("set", "profiling_verbosity", "DETAILED") in fake.calls  # the engine inspector can tell precisions
    shapes = [c[1:] for c in fake.calls if c[0] == "set_shape"]  # batch 4 tuned for 4, batch 1 for 1
    assert shapes == [("input", (1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32)),
                      ("input", (1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32))]
    assert fake.calls.count(("add_profile",)) == 2


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
    assert meta["profiles"] == EngineOptions(max_batch=4).profiles([3, 32, 32])
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
    assert meta["strongly_typed"] and meta["profiles"][0]["input"][2][0] == 4
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
