"""The TensorRT int8 graph has fp16 outside its GEMMs, and the precision map says what each op computes."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_spec
from typer.testing import CliRunner

from edgevit.cli import app
from edgevit.graph import export_onnx
from edgevit.precision import precision_map, summary_line
from edgevit.quant.config import QuantConfig
from edgevit.quant.fp16 import FP16_OPSET, fp16_outside_gemms, raise_opset
from edgevit.quant.ort import quantize_onnx
from edgevit.run.export import ExportOptions, run_export


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The float ONNX of a tiny ViT, its Q/DQ graph as the quantizer writes it, and the fp16 one."""
    from edgevit.models import create_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("prec")
    export_onnx(create_model(tiny_spec()).eval(), 32, d / "f.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    quantize_onnx("trt-qdq", d / "f.onnx", d / "q32.onnx", x, QuantConfig(), [])
    facts = fp16_outside_gemms(d / "q32.onnx", d / "q16.onnx")
    return d, x, facts


def _types(path):
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    return m, {v.name: v.type.tensor_type.elem_type for v in [*m.graph.value_info, *m.graph.output]}


def test_fp16_graph_has_no_fp32_outside_layernorm(graphs):
    d, x, facts = graphs
    m, types = _types(d / "q16.onnx")
    onnx.checker.check_model(m, full_check=True)
    assert facts["opset"] == FP16_OPSET and facts["runtime_precision"] == "int8 GEMMs + fp16"
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == FP16_OPSET
    users = {i: n for n in m.graph.node for i in n.input}
    outputs = {o.name for o in m.graph.output}
    fp32 = [n for n in m.graph.node if any(types.get(o) == onnx.TensorProto.FLOAT for o in n.output)]
    for n in fp32:  # LayerNorm, the casts into it, the cast to the graph's output
        assert (n.op_type == "LayerNormalization" or n.op_type == "Cast"
                and (n.output[0] in outputs or users[n.output[0]].op_type == "LayerNormalization")), n.name
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in dq)  # fp16 straight into the GEMM
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_fp16_graph_computes_what_the_fp32_one_does(graphs):
    d, x, _ = graphs
    a = ort.InferenceSession(str(d / "q32.onnx")).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(d / "q16.onnx")).run(None, {"input": x})[0]
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert np.abs(a - b).max() < 0.15 * np.abs(a).max()  # fp16 rounding before int8 rounding, on random weights


def test_precision_map_tells_fp32_islands_from_fp16(graphs):
    d, _, _ = graphs
    m32, m16, mf = precision_map(d / "q32.onnx"), precision_map(d / "q16.onnx"), precision_map(d / "f.onnx")
    s32, s16 = m32["summary"], m16["summary"]
    assert s16["label"] == "int8 GEMMs + fp16" and s32["label"] == "int8 GEMMs + fp32"
    assert s16["fp32_ops_outside_norms"] == 0 and m16["warnings"] == []
    assert s32["fp32_ops_outside_norms"] > 0 and "will likely not beat tensorrt-fp16" in m32["warnings"][0]
    # 2 blocks: qkv, proj, fc1, fc2 each (the head stays float); q @ kᵀ and attn @ v each
    assert (s16["linear_layers_quantized"], s16["attention_matmuls_quantized"]) == (8, 4)
    assert s16["attention_matmuls"] == 4 and s16["head_float"] and s16["layernorm_precision"] == ["fp32"]
    assert mf["summary"]["label"] == "fp32" and mf["summary"]["int8_gemms"] == 0 and mf["warnings"] == []
    assert "8/9 linear, 4/4 attention matmuls int8; LayerNorm fp32" in summary_line(s16)


def test_precision_map_warns_when_gemms_stay_float(graphs):
    d, x, _ = graphs
    layers = [n.name for n in onnx.load(str(d / "f.onnx")).graph.node if n.op_type == "MatMul"]
    quantize_onnx("trt-qdq", d / "f.onnx", d / "few.onnx", x, QuantConfig(), layers[:-2])  # 2 MatMuls int8
    fp16_outside_gemms(d / "few.onnx", d / "few16.onnx")
    warnings = precision_map(d / "few16.onnx")["warnings"]
    assert any("linear layers stay float" in w for w in warnings)


def test_precision_map_reads_ort_dynamic_int8(graphs, tmp_path):
    d, x, _ = graphs
    quantize_onnx("ort-dynamic", d / "f.onnx", tmp_path / "dyn.onnx", None, QuantConfig(), [])
    s = precision_map(tmp_path / "dyn.onnx")["summary"]
    assert s["int8_gemms"] >= 8 and s["linear_layers_quantized"] == 8


def test_raise_opset_moves_reduce_axes(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0, name="mean")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert raise_opset(m, 19) == 17
    onnx.checker.check_model(m, full_check=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    assert np.allclose(y, x.mean(1))


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prec-run") / "r"
    return run_export(tiny_spec(), ExportOptions(targets=["tensorrt-int8", "openvino-int8"], out=out, bench=False,
                                                 data="digits", split="val", validate_limit=40,
                                                 options=dict(calib_size=40)))


def test_tensorrt_int8_artifact_records_and_reports_its_precision(int8_run, tmp_path):
    out = int8_run
    art = out / "artifacts" / "tensorrt-int8"
    mf = json.loads((art / "manifest.json").read_text())
    assert mf["export"]["runtime_precision"] == "int8 GEMMs + fp16"
    assert mf["export"]["precision_map"]["fp32_ops_outside_norms"] == 0
    assert json.loads((out / "results" / "validate.json").read_text())["tensorrt-int8"]["runtime_precision"] \
        == "int8 GEMMs + fp16"
    assert "Precision of the graph that ships" in (out / "report.md").read_text()
    res = CliRunner().invoke(app, ["inspect", str(art), "--ops", "--json", str(tmp_path / "map.json")])
    assert res.exit_code == 0, res.output
    assert "int8 GEMMs + fp16" in res.output and "attention matmuls quantized" in res.output
    assert "/blocks/blocks.0/attn/qkv/MatMul" in res.output  # --ops lists every op
    assert json.loads((tmp_path / "map.json").read_text())["graph"]["summary"]["linear_layers_quantized"] == 8
    bad = CliRunner().invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert bad.exit_code != 0 and "manifest" in bad.output.lower()


def test_inspect_reads_openvino_runtime_and_engine_layers(int8_run):
    from edgevit import api

    ov = api.inspect(int8_run / "artifacts" / "openvino-int8")["runtime"]
    assert ov["summary"]["int8_gemms"] > 0 and ov["summary"]["gemm_kernels"]
    assert all({"name", "op", "precision", "kernel"} <= set(o) for o in ov["ops"])
    art = int8_run / "artifacts" / "tensorrt-int8"
    layers = {"layers": [{"name": "fc1", "type": "gemm", "precision": "Int8"}], "summary": {"attention_fused": True}}
    (art / "engine_layers.json").write_text(json.dumps(layers))  # as a build on a GPU machine leaves it
    try:
        assert api.inspect(art)["engine"] == layers
        res = CliRunner().invoke(app, ["inspect", str(art), "--ops"])
        assert res.exit_code == 0 and "IEngineInspector" in res.output and "fc1" in res.output, res.output
    finally:
        (art / "engine_layers.json").unlink()


def test_tensorrt_notice_and_status_name_every_route(int8_run):
    from edgevit.targets import get_target
    from edgevit.targets.trt_engine import engine_unavailable

    target, art = get_target("tensorrt-int8"), int8_run / "artifacts" / "tensorrt-int8"
    note = target.notice(json.loads((art / "manifest.json").read_text()), art)
    if engine_unavailable() is None:
        pytest.skip("an engine was built here: no notice")
    assert f"edgevit engine {art.resolve()}" in note and str((art / "build_engine.sh").resolve()) in note
    assert "edgevit_jetson.sh" in note
    assert target.status().startswith("needs") and "TensorRT" in target.status()
    assert get_target("onnx").status() == "ready"
