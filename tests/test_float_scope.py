"""What stays float is declared once (edgevit.float_scope) and every int8 form asks it: the head, norms,
attention kept float above 512 tokens and in EViT blocks, fixed softmax-output ranges, fp16-subnormal scales."""
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_spec

from edgevit import float_scope
from edgevit.float_scope import FloatScope
from edgevit.graph import export_onnx
from edgevit.quant.attention import attention_plan, kept_float
from edgevit.quant.config import QuantConfig, QuantizationError, pretty
from edgevit.quant.fp16 import fp16_outside_gemms, fp16_subnormal_layers, scale_changes, scale_values
from edgevit.quant.ort import quantize_onnx
from edgevit.quant.ptq import build


def test_the_scope_answers_what_stays_float():
    s = FloatScope()
    assert s.keeps_float("/head/Gemm", "Gemm") and not s.keeps_float("/blocks/blocks.0/attn/qkv/MatMul", "MatMul")
    assert s.keeps_float("/blocks/blocks.0/norm1/LayerNormalization", "LayerNormalization")
    assert s.keeps_float("x/Softmax", "Softmax") and s.keeps_float("x/Add", "Add")
    q = FloatScope.of(quantize_head=True, quantize_norms=True, exclude=["a", "a", "b"])
    assert q.exclude == ("a", "b") and not q.keeps_float("/head/Gemm", "Gemm") and q.keeps_float("a", "MatMul")
    assert not q.keeps_float("n/LayerNormalization", "LayerNormalization") and q.keeps_float("x/Softmax", "Softmax")
    assert s.forbids_qdq_into("Softmax") and q.forbids_qdq_into("Softmax")  # never, asked or not
    assert s.forbids_qdq_into("LayerNormalization") and not q.forbids_qdq_into("LayerNormalization")
    assert not q.int8_weights_allowed("LayerNormalization") and q.int8_weights_allowed("MatMul")
    assert q.excluding(["c", "a"]).exclude == ("a", "b", "c")
    assert s.attention_float_reason(197, False) is None
    assert "513 tokens > 512" in s.attention_float_reason(513, False)
    assert "EViT" in s.attention_float_reason(65, True)
    assert s.softmax_qparams(True) == (1 / 127, 0) and s.softmax_qparams(False) == (1 / 255, 0)
    assert not s.fp16_scale_changes(1 / 127, float(np.float16(1 / 127)))  # fp16 rounding is not a change
    assert s.fp16_scale_changes(1e-7, float(np.float16(1e-7))) and s.fp16_scale_changes(1e-9, 5.96e-8)
    assert s.scale_keeps_float(3e-5) and not s.scale_keeps_float(1e-4) and not s.scale_keeps_float(0.0)
    assert QuantConfig(quantize_norms=True, exclude=["x"]).float_scope(["y"]) == FloatScope(True, False, ("x", "y"))


def test_the_former_places_ask_the_scope():
    """The seven former declarations (quant/config NORM_OPS and is_head, precision NORM_OPS/HEAD_NAMES/_is_head,
    trt_rules FLOAT_OPS, quant/fp16 and trt_engine FP32_OPS) are the scope's now, not copies."""
    from edgevit import models, precision
    from edgevit.quant import config, fp16
    from edgevit.targets import trt_engine, trt_rules

    assert fp16.FP32_OPS is float_scope.FP32_OPS and trt_engine.FP32_OPS is float_scope.FP32_OPS
    assert config.INT8_OPS is float_scope.GEMM_OPS and config.is_head is FloatScope.is_head
    assert precision.GEMM_OPS is float_scope.GEMM_OPS
    for mod, name in ((config, "NORM_OPS"), (precision, "NORM_OPS"), (precision, "HEAD_NAMES"),
                      (precision, "_is_head"), (trt_rules, "FLOAT_OPS")):
        assert not hasattr(mod, name), f"{mod.__name__}.{name} declares what stays float again"
    assert tuple(models.HEAD_MODULES) == float_scope.HEAD_MODULES  # checkpoint loading's heads are the scope's


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The float ONNX of the tiny ViT and of an EViT one (block 1 keeps 70 % of its tokens), and calibration images."""
    from edgevit.models import create_model
    from edgevit.transforms import build_model

    d = tmp_path_factory.mktemp("scope")
    torch.manual_seed(0)
    export_onnx(create_model(tiny_spec()).eval(), 32, d / "vit.onnx")
    torch.manual_seed(0)
    evit, _, _ = build_model(tiny_spec(patch_size=4, prune="evit:0.7@1"))
    export_onnx(evit.eval(), 32, d / "evit.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    return d, x


def test_attention_blocks_and_why_they_stay_float(graphs):
    d, _ = graphs
    plan = attention_plan(d / "vit.onnx", FloatScope())
    assert [(a.tokens, why) for a, why in plan] == [(17, None), (17, None)]  # 16 patches + the class token
    assert all(a.scores.endswith("attn/MatMul") and a.context.endswith("attn/MatMul_1") for a, _ in plan)
    few = attention_plan(d / "vit.onnx", FloatScope(max_attention_tokens=16))  # the > 512 rule, at a tiny size
    assert all("17 tokens > 16" in why for _, why in few) and len(kept_float(d / "vit.onnx", FloatScope(
        max_attention_tokens=16))) == 4
    evit = attention_plan(d / "evit.onnx", FloatScope())
    assert [why is None for _, why in evit] == [True, False] and evit[1][0].readers  # block 1 scores tokens


def test_evit_blocks_keep_attention_float_and_say_why(graphs, tmp_path):
    from edgevit.precision import precision_map

    d, x = graphs
    facts = quantize_onnx("trt-qdq", d / "evit.onnx", tmp_path / "q.onnx", x, QuantConfig(), [])
    kept = facts["attention_kept_float"]
    assert len(kept) == 1 and len(kept[0]["matmuls"]) == 2 and "scores tokens" in kept[0]["why"]
    assert facts["softmax_output_range"]["tensors"] == 1  # block 0's probabilities: fixed [0, 1]
    s = precision_map(tmp_path / "q.onnx")["summary"]
    assert (s["attention_matmuls"], s["attention_matmuls_quantized"]) == (4, 2)
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    evit_softmax = next(n for n in g.node if n.op_type == "Softmax" and pretty(n.name) == kept[0]["softmax"])
    readers = [r.op_type for r in g.node if evit_softmax.output[0] in r.input]
    assert "QuantizeLinear" not in readers and "MatMul" in readers  # its probabilities stay float for the scoring


def _shrunk(d) -> str:
    """The tiny ViT with blocks.0.mlp.fc2's weights scaled by 1e-3: its per-channel int8 scales (~5e-7) are
    subnormal in fp16 (below 6.1e-5), where ORT's converter would store them with a few bits. Returns its node."""
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model(tiny_spec()).eval()
    with torch.no_grad():
        model.get_submodule("blocks.0.mlp.fc2").weight.mul_(1e-3)
    export_onnx(model, 32, d / "shrunk.onnx")
    nodes = onnx.load(str(d / "shrunk.onnx")).graph.node
    return next(n.name for n in nodes if pretty(n.name) == "blocks.0/mlp/fc2/MatMul")


def test_a_subnormal_fp16_scale_keeps_its_layer_float(graphs, tmp_path):
    d, x = graphs
    layer = _shrunk(tmp_path)
    quantize_onnx("trt-qdq", tmp_path / "shrunk.onnx", tmp_path / "q32.onnx", x, QuantConfig(), [])
    assert fp16_subnormal_layers(onnx.load(str(tmp_path / "q32.onnx"))) == [layer]
    with pytest.raises(QuantizationError, match="change when stored in fp16") as e:  # never silently
        fp16_outside_gemms(tmp_path / "q32.onnx", tmp_path / "bad.onnx")
    assert "--exclude" in e.value.fix
    facts = build("trt-qdq", tmp_path / "shrunk.onnx", tmp_path / "q16.onnx", x, QuantConfig(), [])
    assert facts["fp16_subnormal_kept_float"] == ["blocks.0/mlp/fc2/MatMul"] and facts["fp16_scale_changes"] == 0
    s16 = scale_values(onnx.load(str(tmp_path / "q16.onnx")))
    assert s16 and not scale_changes(scale_values(onnx.load(str(tmp_path / "q32.onnx"))), s16)
    g = onnx.load(str(tmp_path / "q16.onnx")).graph
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    node = next(n for n in g.node if n.name == layer)
    assert not set(node.input) & dq_out  # the layer runs in fp16, not int8


def test_manifest_records_what_the_scope_kept(tmp_path):
    from edgevit.run.export import ExportOptions, run_export

    out = run_export(tiny_spec(patch_size=4, prune="evit:0.7@1"), ExportOptions(
        targets=["tensorrt-int8"], out=tmp_path / "r", bench=False, options=dict(calib="digits", calib_size=16)))
    e = json.loads((out / "artifacts" / "tensorrt-int8" / "manifest.json").read_text())["export"]
    assert len(e["attention_kept_float"]) == 1 and e["precision_map"]["kept_float"]["attention"] == \
        e["attention_kept_float"] and e["precision_map"]["kept_float"]["fp16_subnormal_scales"] == []
    assert e["tensorrt_rules"]["count"] == 0
