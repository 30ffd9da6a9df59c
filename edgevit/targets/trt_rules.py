"""TensorRT's explicit-quantization rules, checked on a Q/DQ ONNX without TensorRT.

TensorRT builds int8 kernels from QuantizeLinear/DequantizeLinear pairs only when (TensorRT
developer guide, "Explicit Quantization"):

1. the quantized type is signed int8 (uint8 Q/DQ is rejected). A Q/DQ without a zero-point is int8
   in TensorRT's parser (ONNX's default type is uint8, so other runtimes read it as uint8): a warning;
2. every zero-point is 0 (TensorRT's int8 is symmetric);
3. weights are quantized per output channel (Conv/ConvTranspose axis 0; MatMul weights
   ``[K, N]`` axis 1; Gemm axis 0 with ``transB=1``, else 1) or per tensor;
4. activations are quantized per tensor (a scalar scale);
5. edgevit's ViT rule, the :class:`~edgevit.float_scope.FloatScope`'s: no Q/DQ feeds Softmax (it
   breaks the attention pattern TensorRT fuses) nor LayerNormalization unless the scope quantizes norms
   (``--quantize-norms``), since TensorRT fuses those in float and int8 there costs accuracy (a "Q/DQ
   feeds X" violation); their weights (gamma, beta) are never int8, asked or not. Casts between are
   looked through.

:func:`check_tensorrt_rules` returns every violation found, each a line naming the node, and warnings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..float_scope import FloatScope
from ..graph import edges


def check_tensorrt_rules(model: str | Path | Any, scope: FloatScope = FloatScope(), base_dir: str | Path = ""
                         ) -> dict[str, Any]:
    """Check a Q/DQ graph (a path, a ModelProto, or a GraphProto already read, e.g. the typed graph the
    precision map reads, with ``base_dir`` its folder for external data) against TensorRT's int8 rules and
    ``scope``."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        g, base_dir = model.graph, str(base_dir)
    elif isinstance(model, onnx.GraphProto):
        g, base_dir = model, str(base_dir)
    else:  # the graph only: the few scales and zero-points read are loaded on demand
        g, base_dir = onnx.load(str(model), load_external_data=False).graph, str(Path(model).parent)
    tensors = {t.name: t for t in g.initializer}
    for n in g.node:  # constants folded into Constant nodes count as initializers
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value":
            tensors[n.output[0]] = n.attribute[0].t
    inits = _Arrays(tensors, base_dir)
    producers, consumers = edges(g)
    bad: list[str] = []
    warn: list[str] = []
    counts = {"quantize": 0, "dequantize": 0, "weights_per_channel": 0, "activations_per_tensor": 0}
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        counts["quantize" if n.op_type == "QuantizeLinear" else "dequantize"] += 1
        if len(n.input) < 3 or not n.input[2]:
            warn.append(f"{n.name}: no zero-point (TensorRT's parser takes int8 with zero-point 0; ONNX's default "
                        "type is uint8, so other runtimes read this node as uint8)")
        else:
            bad += _check_zero_point(n, inits)
        if n.op_type == "DequantizeLinear":
            bad += _check_dq(n, inits, consumers, counts, scope, _is_weight(n, inits, producers))
    return {"violations": bad, "count": len(bad), "warnings": warn, **counts, "norm_inputs_int8": not scope.norms}


class _Arrays(dict):
    """Initializer name -> numpy array, converted (and read from external data) when first asked for."""

    def __init__(self, tensors: dict[str, Any], base_dir: str):
        super().__init__()
        self.tensors, self.base_dir = tensors, base_dir

    def __contains__(self, name) -> bool:
        return super().__contains__(name) or name in self.tensors

    def get(self, name, default=None):
        if not super().__contains__(name) and name in self.tensors:
            from onnx import numpy_helper

            self[name] = numpy_helper.to_array(self.tensors[name], base_dir=self.base_dir)
        return super().get(name, default)


def _check_zero_point(n, inits) -> list[str]:
    zp = inits.get(n.input[2])
    if zp is None:
        return [f"{n.name}: zero-point {n.input[2]} is not a constant"]
    out = []
    if zp.dtype != np.int8:
        out.append(f"{n.name}: quantized type {zp.dtype} (TensorRT needs signed int8)")
    if np.any(zp != 0):
        out.append(f"{n.name}: zero-point not 0 (TensorRT int8 is symmetric)")
    return out


def _is_weight(dq, inits, producers) -> bool:
    """A DQ of a stored int8 tensor, or of a Q of a stored float tensor (QAT exports): a weight."""
    if dq.input[0] in inits:
        return True
    q = producers.get(dq.input[0])
    return q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits


def _check_dq(n, inits, consumers, counts, scope: FloatScope, is_weight: bool) -> list[str]:
    out = []
    scale = inits.get(n.input[1])
    if scale is None:
        return [f"{n.name}: scale {n.input[1]} is not a constant"]
    axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
    for user, index in _users(n.output[0], consumers):
        if is_weight and index > 0 and not scope.int8_weights_allowed(user.op_type):
            out.append(f"{n.name}: int8 weights feed {user.op_type} {user.name} input {index} (gamma/beta stay "
                       "float, also with --quantize-norms)")
        elif scope.forbids_qdq_into(user.op_type):
            why = "never int8: it breaks fused attention" if user.op_type == "Softmax" else "kept float unless asked"
            out.append(f"{n.name}: Q/DQ feeds {user.op_type} {user.name} ({why})")
        if is_weight and scale.size > 1:
            want = _weight_axis(user)
            if want is not None and axis != want:
                out.append(f"{n.name}: weight scales on axis {axis}, {user.op_type} {user.name} needs the "
                           f"output-channel axis {want}")
    if is_weight:
        counts["weights_per_channel"] += int(scale.size > 1)
    elif scale.size != 1:
        out.append(f"{n.name}: activation quantized per channel ({scale.size} scales); TensorRT needs per-tensor")
    else:
        counts["activations_per_tensor"] += 1
    return out


def _users(tensor: str, consumers) -> list[tuple[Any, int]]:
    """The nodes reading ``tensor`` and at which input, looking through Casts (the fp16 graph casts
    into LayerNorm's fp32 arithmetic)."""
    out = []
    for user in consumers.get(tensor, []):
        if user.op_type == "Cast":
            out += _users(user.output[0], consumers)
        else:
            out += [(user, i) for i, name in enumerate(user.input) if name == tensor]
    return out


def _weight_axis(user) -> int | None:
    if user.op_type in ("Conv", "ConvTranspose"):
        return 0 if user.op_type == "Conv" else 1
    if user.op_type == "MatMul":
        return 1
    if user.op_type == "Gemm":
        trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None
