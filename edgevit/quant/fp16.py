"""fp16 outside the int8 GEMMs: the float part of TensorRT's int8 graph.

A strongly typed TensorRT network computes each op in the type the ONNX gives it. A Q/DQ graph
straight from the quantizer is float32 outside its int8 GEMMs (LayerNorm, Softmax, GELU, residual
adds, the GEMMs' fp32 outputs), so an int8 engine would run all of that in fp32: memory-bound
work at twice the bytes, and attention kernels that want fp16 left unfused. Such an engine
rarely beats ``tensorrt-fp16`` (NVIDIA/Model-Optimizer #167, #120; TensorRT #3186, #3147).

:func:`fp16_outside_gemms` rewrites the graph as ModelOpt's ONNX int8 does with
``high_precision_dtype="fp16"``:

* every float tensor becomes fp16, Q/DQ scales included: a DequantizeLinear with an fp16 scale
  outputs fp16 straight into its GEMM, so TensorRT still sees DQ -> GEMM and fuses the int8
  kernel (a Cast between them would hide the pattern). fp16 scales need opset >= 19, so the graph
  is raised to :data:`FP16_OPSET` (the ops a ViT uses changed compatibly, except the ``axes``
  attribute of Reduce* ops, which becomes an input at 18 and is moved here);
* LayerNormalization keeps fp32 arithmetic behind casts, as ``tensorrt-fp16`` does: activations
  before LayerNorm can exceed fp16's range and statistics over 192-768 channels lose digits;
* the graph's input and output stay float32 (casts at both ends).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..graph import save_onnx
from .config import QuantizationError

FP16_OPSET = 19  # DequantizeLinear/QuantizeLinear take fp16 scales from opset 19
FP32_OPS = ("LayerNormalization",)  # arithmetic kept in fp32 behind casts
FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal fp16: scales below it lose digits
PRECISION = "int8 GEMMs + fp16"  # what the engine computes: the runtime precision it reports


def fp16_outside_gemms(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``src`` (an int8 Q/DQ graph, float32 elsewhere) to ``dst`` with fp16 outside the GEMMs."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    raised_from = raise_opset(model, FP16_OPSET)
    scales32 = _scale_values(model)
    with tempfile.TemporaryDirectory(prefix="edgevit-fp16-") as work:
        path = Path(work) / "in.onnx"
        save_onnx(model, path)  # from a path: shape inference goes through a file (no 2 GB limit)
        del model
        m16 = convert_float_to_float16(str(path), keep_io_types=True,
                                       op_block_list=DEFAULT_OP_BLOCK_LIST + list(FP32_OPS))
    toposort(m16.graph)
    scales16 = _scale_values(m16)
    zero = [n for n, v in scales16.items() if np.any(v == 0) and not np.any(scales32.get(n, v) == 0)]
    if zero:
        raise QuantizationError(f"{len(zero)} int8 scale(s) underflow to 0 in fp16, e.g. {zero[0]}",
                                "this model's weights are too small for fp16 scales; use tensorrt-fp16 "
                                "or report it with the run's run.json")
    tiny = sum(int(np.sum((np.abs(v) < FP16_TINY) & (v != 0))) for v in scales16.values())
    facts = save_onnx(m16, dst)
    return {**facts, "onnx_precision": f"{PRECISION} (LayerNorm fp32, float32 inputs/outputs)",
            "runtime_precision": PRECISION, "opset": FP16_OPSET, "opset_raised_from": raised_from,
            "fp16_scales": len(scales16), "fp16_subnormal_scales": tiny,
            "fp32_ops": list(FP32_OPS), "casts": sum(n.op_type == "Cast" for n in m16.graph.node)}


def raise_opset(model, version: int) -> int:
    """Raise the default-domain opset to ``version`` in place (a ViT's ops need only Reduce*'s
    ``axes`` moved to an input, from opset 18); returns the opset it had."""
    from onnx import helper, numpy_helper

    entry = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    old = entry.version
    if old >= version:
        return old
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            axes = next((a for a in node.attribute if a.name == "axes"), None)
            if axes is None:
                continue
            name = f"{node.name or node.output[0]}_axes"
            model.graph.initializer.append(numpy_helper.from_array(np.array(axes.ints, dtype=np.int64), name))
            node.attribute.remove(axes)
            rest = list(node.input[1:])
            del node.input[1:]
            node.input.extend([name, *rest])
    entry.version = version
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for([entry]))
    return old


def toposort(graph) -> None:
    """Sort ``graph.node`` so every node follows the producers of its inputs (the fp16 converter
    appends its input casts at the end, which runtimes accept and onnx.checker does not)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise QuantizationError(f"the graph has a cycle or a dangling input near {pending[0].name}",
                                    "report this with the run's run.json")
        for n in ready:
            known.update(n.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def _scale_values(model) -> dict[str, np.ndarray]:
    """The scale initializers of the Q/DQ nodes (graph only; external data is not read)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    names = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return {n: numpy_helper.to_array(inits[n]) for n in names if n in inits and not inits[n].external_data}
