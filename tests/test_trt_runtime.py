"""The TensorRT runtime: engines load and run through the recording stand-in (profiles per batch, CUDA-graph
timing without host copies), the inspector's summary, and the runtime importing with torch blocked."""
import enum
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trt_stand_in import AS_BUILT, RECORDED_LAYERS, installer, make_plan

from edgevit.errors import TargetError
from edgevit.targets.trt_engine import (
    EngineOptions,
    EngineUnavailable,
    build_engine,
    engine_layers,
    engine_unavailable,
    load_engine,
)
from edgevit.targets.trt_inspect import summarize_layers


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    return installer(monkeypatch, tmp_path)


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


def test_each_batch_runs_on_the_profile_tuned_for_it(stand_in, tmp_path):
    trt, _ = stand_in(**AS_BUILT)
    runner = load_engine(make_plan(tmp_path / "art"))
    assert runner.info["engine_profiles"] == [[[1, 3, 32, 32], [8, 3, 32, 32], [8, 3, 32, 32]], [[1, 3, 32, 32]] * 3]
    x = np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(runner(x[:1]), 2 * x[:1].reshape(1, -1)[:, :10] + 1, rtol=1e-6)
    runner(x[:3])
    np.testing.assert_allclose(runner(x), 2 * x.reshape(20, -1)[:, :10] + 1, rtol=1e-6)
    assert [c[1] for c in trt.calls if c[0] == "set_profile"] == [1, 0]  # batch 1 on profile 1, then 3 on 0, stays
    assert [c[2][0] for c in trt.calls if c[0] == "set_input_shape"] == [1, 3, 8, 8, 4]  # 20: 8 + 8 + 4, not 20 x 1


def test_time_launches_a_cuda_graph_without_host_copies(stand_in, tmp_path):
    trt, rt = stand_in(**AS_BUILT)
    runner = load_engine(make_plan(tmp_path / "art"))
    before = len(rt.calls)
    res = runner.time(8, iters=5, warmup=2)
    calls = [c[0] for c in rt.calls[before:]]
    assert res["cuda_graph"] is True and res["graph_error"] is None and res["profile"] == 0
    assert res["ms"] == [0.25] * 5 and res["host_copies"] is False
    assert calls.count("memcpy") == 1  # the input, once, before timing; nothing copied back
    assert calls.count("graph_launch") == 7 and calls.count("event_record") == 14
    assert calls.index("begin_capture") < calls.index("end_capture") < calls.index("instantiate") \
        < calls.index("graph_launch")
    assert ("set_input_shape", "input", (8, 3, 32, 32), True) in trt.calls
    assert sum(c[0] == "execute" for c in trt.calls) == 2  # once after the shape change, once captured
    assert {"graph_exec_destroy", "graph_destroy", "event_destroy"} <= set(calls)
    rt.capture_error = 900  # capture unsupported: plain enqueues, as trtexec falls back
    res = runner.time(1, iters=3, warmup=0)
    assert res["cuda_graph"] is False and "cudaStreamBeginCapture" in res["graph_error"] and res["profile"] == 1
    assert sum(c[0] == "execute" for c in trt.calls) == 2 + 1 + 3


BLOCK_TORCH = """
import json, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(name + " is blocked: a Jetson without PyTorch")
sys.meta_path.insert(0, NoTorch())
try:
    import edgevit.models
    control = "imported"
except ImportError as e:
    control = str(e)
from edgevit.targets import trt_inspect, trt_runtime
print(json.dumps({"control": control, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
                  "backends": sorted(m for m in sys.modules if m in ("edgevit.targets.onnx", "edgevit.graph")),
                  "unavailable": trt_runtime.engine_unavailable(),
                  "layers": trt_inspect.summarize_layers(sys.argv[1])["summary"]["layers"]}))
"""


def test_tensorrt_runtime_imports_with_torch_blocked():
    """What a Jetson with TensorRT and no PyTorch imports to run an engine: the runtime and the inspector."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, RECORDED_LAYERS], cwd=root, capture_output=True, text=True,
                       timeout=120, env={**env, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert "blocked" in out["control"]  # the blocker works: edgevit.models needs torch and could not import
    assert out["torch"] == [] and out["backends"] == [] and out["layers"] == 5
    assert out["unavailable"] is None or "TensorRT" in out["unavailable"] or "CUDA" in out["unavailable"]


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

    from edgevit.targets import trt_engine, trt_inspect, trt_runtime

    for mod in (trt_engine, trt_runtime, trt_inspect):  # no import of torch anywhere, function-local ones included
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
