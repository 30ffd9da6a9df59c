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

The classifier head stays float unless ``quantize_head``; ``exclude`` keeps more layers float, which
is how :func:`fallback` meets ``--max-drop``: it measures each layer's error when quantized alone
(KL divergence of the logits from the float model on the control images), then keeps the most
sensitive layers float, fewest first, until the validated top-1 drop is within the bound.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..graph import external_data_facts, has_external_data
from .config import INT8_OPS, NORM_OPS, QuantConfig, QuantizationError, calibrator_for, is_head, pretty

# what the dynamic form quantizes: Attention is ONNX Runtime's fused op (onnx-int8 --ort-fusion), made QAttention
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention")


def onnx_layers(onnx_path: Path, cfg: QuantConfig, with_conv: bool = True) -> list[str]:
    """Names of the nodes an ORT form quantizes, in graph order (head excluded unless asked)."""
    import onnx

    ops = set(INT8_OPS) if with_conv else set(DYNAMIC_OPS)
    nodes = [n for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if n.op_type in ops]
    return [n.name for n in nodes if cfg.quantize_head or not is_head(n.name)]


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


def quantize_onnx(form: str, onnx_fp32: Path, dst: Path, calib: np.ndarray | None, cfg: QuantConfig,
                  exclude: list[str], range_cache: Path | None = None) -> dict[str, Any]:
    """Write the int8 ONNX of ``form`` to ``dst``; ``range_cache`` reuses calibrated ranges."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    layers = onnx_layers(onnx_fp32, cfg, with_conv=form != "ort-dynamic")
    large = has_external_data(onnx_fp32)  # then the int8 model keeps its tensors in <dst>.data too
    keep = [n for n in layers if n in set(exclude) | set(cfg.exclude)]
    quantize = [n for n in layers if n not in keep]
    facts: dict[str, Any] = {"form": form, "layers": len(layers), "float_layers": [pretty(n) for n in keep]}
    if not quantize:
        raise QuantizationError("no layer is left to quantize", "keep fewer layers float (--exclude/--max-float)")
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # ORT's "consider pre-processing" warnings
    try:
        if form == "ort-dynamic":
            quantize_dynamic(onnx_fp32, dst, weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                             nodes_to_quantize=quantize, op_types_to_quantize=list(DYNAMIC_OPS),
                             extra_options={"MatMulConstBOnly": False}, use_external_data_format=large)
            return {**facts, **external_data_facts(dst), "activations": "dynamic per batch (uint8)",
                    "weights": "int8 per-channel" if cfg.per_channel else "int8 per-tensor", "calibrator": None}
        method = calibrator_for(form, cfg)
        trt = form == "trt-qdq"
        ops = [*INT8_OPS, *(NORM_OPS if cfg.quantize_norms else ())]
        extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "DedicatedQDQPair": False,
                 "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Gemm": 0}, "CalibPercentile": 99.999,
                 "CalibMaxIntermediateOutputs": 64,
                 # Q/DQ on inputs only: an output Q/DQ would feed Softmax/LayerNorm/Add in int8
                 "OpTypesToExcludeOutputQuantization": list(INT8_OPS),
                 "QuantizeBias": not trt}  # TensorRT takes float biases (it has no int32 DQ)
        if cfg.quantize_norms:
            quantize += [n for n in _norm_nodes(onnx_fp32) if n not in keep]
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print their progress
            quantize_static(onnx_fp32, dst, _Reader(calib, _input_name(onnx_fp32)) if calib is not None else None,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=cfg.per_channel,
                            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=quantize,
                            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                              "percentile": CalibrationMethod.Percentile,
                                              "distribution": CalibrationMethod.Distribution}[method],
                            extra_options=extra, calibration_cache_path=range_cache,
                            use_external_data_format=large)
    finally:
        root.level = level
    if cfg.quantize_norms:
        facts["norm_weights_kept_float"] = float_norm_weights(dst, onnx_fp32)
    return {**facts, **external_data_facts(dst), "calibrator": method,
            "calib_images": None if calib is None else len(calib),
            "activations": "int8 symmetric per-tensor" if trt else "uint8 asymmetric per-tensor",
            "weights": "int8 symmetric per-channel" if cfg.per_channel else "int8 symmetric per-tensor"}


def _input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name


def _norm_nodes(onnx_path: Path) -> list[str]:
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in g.node if n.op_type in NORM_OPS]


def float_norm_weights(qdq: Path, onnx_fp32: Path) -> int:
    """Put the float gamma/beta back into every LayerNormalization of ``qdq`` (ONNX Runtime's
    quantizer makes them int8 when norms are quantized; TensorRT's LayerNorm takes float weights,
    and ``quantize_norms`` means its activation input only). Returns how many were restored."""
    import onnx

    from ..graph import save_onnx

    q, f = onnx.load(str(qdq)), onnx.load(str(onnx_fp32))
    orig = {n.name: n for n in f.graph.node if n.op_type in NORM_OPS}
    f_inits = {t.name: t for t in f.graph.initializer}
    have = {t.name for t in q.graph.initializer}
    restored = 0
    for node in (n for n in q.graph.node if n.name in orig):
        for i in range(1, min(len(node.input), len(orig[node.name].input))):
            want = orig[node.name].input[i]
            if node.input[i] != want and want in f_inits:
                node.input[i] = want
                restored += 1
                if want not in have:
                    q.graph.initializer.append(f_inits[want])
                    have.add(want)
    if restored:
        _drop_dead(q.graph)
        save_onnx(q, qdq)
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
