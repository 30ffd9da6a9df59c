"""int8 post-training quantization: one config, three backend forms, one accuracy-fallback loop.

Forms (what each int8 target builds from the float ONNX):

* ``ort-dynamic`` (``onnx-int8``): ONNX Runtime's dynamic quantization of MatMul/Gemm (and of its fused
  Attention, as QAttention, in a graph made with ``ort_fusion``), signed int8 weights per output
  channel, activations quantized per batch at run time. About 1.6x ORT fp32 on DeiT-Ti @224 here;
  it is the default because it needs no calibration and holds for any input
  distribution.
* ``ort-static`` (``onnx-int8`` with ``form=static``): Q/DQ with calibrated ranges, uint8
  activations, int8 per-channel weights, Q/DQ on layer inputs only. As fast as dynamic within
  noise here (ORT's default placement, with Q/DQ on outputs too, gained only 1.1x).
* ``trt-qdq`` (``tensorrt-int8``): explicit Q/DQ for TensorRT: int8 symmetric everywhere
  (zero-point 0), weights per output channel, activations per tensor, placed on MatMul/Gemm/Conv
  inputs only so that LayerNorm and Softmax stay float and TensorRT fuses the rest.
* ``nncf`` (``openvino-int8``): NNCF post-training quantization of the OpenVINO model with
  ``ModelType.TRANSFORMER`` (SmoothQuant on MatMuls, LayerNorm/Softmax kept float by NNCF).

What stays float is the :class:`~edgevit.float_scope.FloatScope` of the options (:meth:`QuantConfig.float_scope`):
the classifier head unless ``quantize_head``, LayerNorm inputs unless ``quantize_norms`` (Softmax inputs
always), the attention matmuls of blocks above 512 tokens or whose softmax scores tokens (EViT), and every
layer in ``exclude``, which is how :func:`fallback` meets ``--max-drop``: it measures each layer's error
when quantized alone (KL divergence of the logits from the float model on the control images), then keeps
the most sensitive layers float, fewest first, until the validated top-1 drop is within the bound. In the
Q/DQ forms an attention softmax output is quantized with the fixed range [0, 1] (scale 1/127 in int8,
1/255 in uint8, zero-point 0), as NVIDIA's BERT demo and ModelOpt do, instead of a calibrated range
that may clip.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..float_scope import NORM_OP, FloatScope
from ..graph import external_data_facts, has_external_data
from .attention import attention_plan, kept_float
from .config import INT8_OPS, QuantConfig, QuantizationError, calibrator_for, pretty

# what the dynamic form quantizes: Attention is ONNX Runtime's fused op (onnx-int8 --ort-fusion), made QAttention
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention")


def onnx_layers(onnx_path: Path, cfg: QuantConfig, with_conv: bool = True) -> list[str]:
    """Names of the nodes an ORT form quantizes, in graph order: the scope's head left out and, in the
    Q/DQ forms (``with_conv``), the attention matmuls it keeps float."""
    import onnx

    scope = cfg.float_scope()
    ops = set(INT8_OPS) if with_conv else set(DYNAMIC_OPS)
    nodes = [n for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if n.op_type in ops]
    held = set(kept_float(onnx_path, scope)) if with_conv else set()
    return [n.name for n in nodes if not (scope.head and scope.is_head(n.name)) and n.name not in held]


class _Reader:
    """onnxruntime CalibrationDataReader over a preprocessed array, in batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 16):
        # equal batches: ORT's histogram calibrators stack them
        batch = max(b for b in range(1, batch + 1) if len(x) % b == 0)
        self.x, self.name, self.batch, self.i = x, input_name, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = self.x[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: b}

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.x)

    def set_range(self, start_index: int, end_index: int):
        self.i = start_index


@contextlib.contextmanager
def _quiet_ort():
    """ORT's "consider pre-processing" warnings and its calibrators' progress prints, silenced."""
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.level = level


def quantize_onnx(form: str, onnx_fp32: Path, dst: Path, calib: np.ndarray | None, cfg: QuantConfig,
                  exclude: list[str], range_cache: Path | None = None) -> dict[str, Any]:
    """Write the int8 ONNX of ``form`` to ``dst``; ``range_cache`` reuses calibrated ranges."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    scope = cfg.float_scope(exclude)
    layers = onnx_layers(onnx_fp32, cfg, with_conv=form != "ort-dynamic")
    large = has_external_data(onnx_fp32)  # then the int8 model keeps its tensors in <dst>.data too
    keep = [n for n in layers if n in scope.exclude]
    quantize = [n for n in layers if n not in keep]
    facts: dict[str, Any] = {"form": form, "layers": len(layers), "float_layers": [pretty(n) for n in keep]}
    if not quantize:
        raise QuantizationError("no layer is left to quantize", "keep fewer layers float (--exclude/--max-float)")
    if form == "ort-dynamic":
        with _quiet_ort():
            quantize_dynamic(onnx_fp32, dst, weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                             nodes_to_quantize=quantize, op_types_to_quantize=list(DYNAMIC_OPS),
                             extra_options={"MatMulConstBOnly": False}, use_external_data_format=large)
        return {**facts, **external_data_facts(dst), "activations": "dynamic per batch (uint8)",
                "weights": "int8 per-channel" if cfg.per_channel else "int8 per-tensor", "calibrator": None}
    trt = form == "trt-qdq"
    overrides = _softmax_overrides(onnx_fp32, scope, set(quantize), trt, facts)
    if not scope.norms:
        quantize += [n for n in _norm_nodes(onnx_fp32) if not scope.keeps_float(n, NORM_OP)]
    method = _quantize_static(form, onnx_fp32, dst, calib, cfg, scope, quantize, overrides, range_cache, large)
    if not scope.norms:
        facts.update(limit_norm_qdq(dst, onnx_fp32))
    return {**facts, **external_data_facts(dst), "calibrator": method,
            "calib_images": None if calib is None else len(calib),
            "activations": "int8 symmetric per-tensor" if trt else "uint8 asymmetric per-tensor",
            "weights": "int8 symmetric per-channel" if cfg.per_channel else "int8 symmetric per-tensor"}


def _quantize_static(form: str, onnx_fp32: Path, dst: Path, calib: np.ndarray | None, cfg: QuantConfig,
                     scope: FloatScope, quantize: list[str], overrides: dict[str, Any], range_cache: Path | None,
                     large: bool) -> str | None:
    """ONNX Runtime's static Q/DQ quantization as ``form`` wants it; returns the calibrator used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = calibrator_for(form, cfg)
    trt = form == "trt-qdq"
    extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "DedicatedQDQPair": False,
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Gemm": 0}, "CalibPercentile": 99.999,
             "CalibMaxIntermediateOutputs": 64, "TensorQuantOverrides": overrides,
             # Q/DQ on inputs only: an output Q/DQ would feed Softmax/LayerNorm/Add in int8
             "OpTypesToExcludeOutputQuantization": list(INT8_OPS),
             "QuantizeBias": not trt}  # TensorRT takes float biases (it has no int32 DQ)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    with _quiet_ort():
        quantize_static(onnx_fp32, dst, _Reader(calib, _input_name(onnx_fp32)) if calib is not None else None,
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(scope.quantized_ops()),
                        per_channel=cfg.per_channel, activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=quantize, calibrate_method=methods[method],
                        extra_options=extra, calibration_cache_path=range_cache, use_external_data_format=large)
    return method


def _softmax_overrides(onnx_fp32: Path, scope: FloatScope, quantized: set[str], signed: bool,
                       facts: dict[str, Any]) -> dict[str, Any]:
    """ORT's TensorQuantOverrides fixing each int8 attention softmax output at [0, 1]; records in ``facts``
    what it fixed and which attention matmuls the scope keeps float, and why."""
    scale, zp = scope.softmax_qparams(signed)
    plan = attention_plan(onnx_fp32, scope)
    fixed = [a.probs for a, why in plan if why is None and a.context in quantized]
    facts["attention_kept_float"] = [{"softmax": pretty(a.softmax), "matmuls": [pretty(m) for m in a.matmuls],
                                      "why": why} for a, why in plan if why]
    facts["softmax_output_range"] = {"range": [0.0, 1.0], "scale": scale, "zero_point": zp, "tensors": len(fixed),
                                     "how": "fixed (NVIDIA's BERT demo, ModelOpt), not calibrated"}
    value = {"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(zp, np.int8 if signed else np.uint8)}
    return {t: [dict(value)] for t in fixed}


def _input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name


def _norm_nodes(onnx_path: Path) -> list[str]:
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in g.node if n.op_type == NORM_OP]


def limit_norm_qdq(qdq: Path, onnx_fp32: Path) -> dict[str, int]:
    """``quantize_norms`` means LayerNorm's activation input only. ONNX Runtime's quantizer also makes
    gamma/beta int8 (TensorRT's LayerNorm takes float weights) and rewires every reader of a quantized
    tensor to its DequantizeLinear (the residual Add too). Put the float gamma/beta back and give the
    other readers the float tensor again; returns how many of each were restored."""
    import onnx

    from ..graph import save_onnx

    q, f = onnx.load(str(qdq)), onnx.load(str(onnx_fp32))
    weights = _float_norm_weights(q.graph, f.graph)
    readers = _norm_input_readers(q.graph)
    if weights or readers:
        _drop_dead(q.graph)
        save_onnx(q, qdq)
    return {"norm_weights_kept_float": weights, "norm_qdq_readers_restored": readers}


def _float_norm_weights(q, f) -> int:
    orig = {n.name: n for n in f.node if n.op_type == NORM_OP}
    f_inits = {t.name: t for t in f.initializer}
    have = {t.name for t in q.initializer}
    restored = 0
    for node in (n for n in q.node if n.name in orig):
        for i in range(1, min(len(node.input), len(orig[node.name].input))):
            want = orig[node.name].input[i]
            if node.input[i] != want and want in f_inits:
                node.input[i] = want
                restored += 1
                if want not in have:
                    q.initializer.append(f_inits[want])
                    have.add(want)
    return restored


def _norm_input_readers(g) -> int:
    """Readers of a LayerNorm input's DequantizeLinear that are neither LayerNorm nor int8 GEMMs read the
    float tensor again (ORT puts the residual Add behind the norm's Q/DQ)."""
    producers = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    norm_dq = {n.input[0]: producers[n.input[0]] for n in g.node if n.op_type == NORM_OP and n.input[0] in producers
               and producers[n.input[0]].op_type == "DequantizeLinear"}
    restored = 0
    for dq in norm_dq.values():
        quant = producers.get(dq.input[0])
        if quant is None or quant.op_type != "QuantizeLinear" or quant.input[0] in inits:
            continue
        for n in g.node:
            if n.op_type in (NORM_OP, *INT8_OPS):
                continue
            for i, name in enumerate(n.input):
                if name == dq.output[0]:
                    n.input[i] = quant.input[0]
                    restored += 1
    return restored


def _drop_dead(graph) -> None:
    """Remove nodes and initializers nothing reads any more (the norm weights' Q/DQ)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
