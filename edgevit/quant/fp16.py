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
  before LayerNorm can exceed fp16's range and statistics over 192-768 channels lose digits. With
  ``--quantize-norms`` its input's Q/DQ pair stays fp32 too (Cast -> Q -> DQ -> LayerNorm), so no Cast
  sits between a DequantizeLinear and the LayerNorm (the DQ -> Cast -> LayerNorm of TensorRT issue 4832);
* the graph's input and output stay float32 (casts at both ends);
* no int8 scale changes: ORT's converter clamps values below 5.96e-8 and stores those below fp16's
  smallest normal (6.1e-5) as subnormals with fewer digits, silently. Every scale is compared with its
  fp32 value; one that changes beyond fp16 rounding is an error, and :func:`fp16_subnormal_layers` names
  the layers the float scope keeps float instead (:func:`edgevit.quant.ptq.build` re-quantizes without them).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..float_scope import FP32_OPS, FloatScope
from ..graph import edges, save_onnx
from .config import QuantizationError

FP16_OPSET = 19  # DequantizeLinear/QuantizeLinear take fp16 scales from opset 19
PRECISION = "int8 GEMMs + fp16"  # what the engine computes: the runtime precision it reports
QDQ = ("QuantizeLinear", "DequantizeLinear")


def fp16_outside_gemms(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``src`` (an int8 Q/DQ graph, float32 elsewhere) to ``dst`` with fp16 outside the GEMMs."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    raised_from = raise_opset(model, FP16_OPSET)
    scales32 = scale_values(model)
    fp32_qdq = norm_input_qdq(model.graph)
    with tempfile.TemporaryDirectory(prefix="edgevit-fp16-") as work:
        path = Path(work) / "in.onnx"
        save_onnx(model, path)  # from a path: shape inference goes through a file (no 2 GB limit)
        del model
        m16 = convert_float_to_float16(str(path), keep_io_types=True, node_block_list=fp32_qdq,
                                       op_block_list=DEFAULT_OP_BLOCK_LIST + list(FP32_OPS))
    folded = fold_cast_pairs(m16.graph, set(fp32_qdq))
    toposort(m16.graph)
    scales16 = scale_values(m16)
    changed = scale_changes(scales32, scales16)
    if changed:
        name, (v32, v16) = next(iter(changed.items()))
        raise QuantizationError(f"{len(changed)} int8 scale(s) change when stored in fp16 (subnormal or clamped), "
                                f"e.g. {name}: {v32:.3g} -> {v16:.3g}",
                                "keep those layers float (--exclude LAYER; post-training quantization does it "
                                "itself), or use tensorrt-fp16")
    facts = save_onnx(m16, dst)
    return {**facts, "onnx_precision": f"{PRECISION} (LayerNorm fp32, float32 inputs/outputs)",
            "runtime_precision": PRECISION, "opset": FP16_OPSET, "opset_raised_from": raised_from,
            "fp16_scales": len(scales16), "fp16_scale_changes": 0, "fp32_qdq_into_layernorm": len(fp32_qdq) // 2,
            "cast_pairs_folded": folded,
            "fp32_ops": list(FP32_OPS), "casts": sum(n.op_type == "Cast" for n in m16.graph.node)}


def scale_changes(scales32: dict[str, np.ndarray], scales16: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """The scales whose fp16 value differs from the fp32 one beyond fp16 rounding: name -> (fp32, fp16) of the
    element that changed most."""
    out = {}
    for name, v16 in scales16.items():
        if name not in scales32:
            continue
        a, b = scales32[name].astype(np.float64).ravel(), v16.astype(np.float64).ravel()
        moved = [i for i in range(a.size) if FloatScope.fp16_scale_changes(float(a[i]), float(b[i]))]
        if moved:
            i = max(moved, key=lambda j: abs(b[j] - a[j]) / max(abs(a[j]), 1e-45))
            out[name] = (float(a[i]), float(b[i]))
    return out


def fp16_subnormal_layers(model) -> list[str]:
    """The GEMMs of a float32 Q/DQ ``model`` (a ModelProto) reading a Q/DQ whose scale is subnormal in fp16:
    the layers :class:`~edgevit.float_scope.FloatScope` keeps float in an fp16 graph."""
    scales = scale_values(model)
    tiny = {n for n, v in scales.items() if any(FloatScope.scale_keeps_float(float(x)) for x in v.ravel())}
    _, readers = edges(model.graph)
    layers = []
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in tiny):
        layers += [r.name for r in readers.get(dq.output[0], []) if r.op_type in ("MatMul", "Gemm", "Conv")]
    return list(dict.fromkeys(layers))


def norm_input_qdq(graph) -> list[str]:
    """The Q/DQ pairs that feed only LayerNorm (``--quantize-norms``): kept fp32, so the DQ feeds the norm's
    fp32 arithmetic directly and the Cast goes before the Q."""
    producers, readers = edges(graph)
    names = []
    for dq in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        users = readers.get(dq.output[0], [])
        quant = producers.get(dq.input[0])
        if users and all(FloatScope.computes_fp32(u.op_type) for u in users) and quant is not None \
                and quant.op_type == "QuantizeLinear" and len(readers.get(quant.output[0], [])) == 1:
            names += [quant.name, dq.name]
    return names


def fold_cast_pairs(graph, fp32_nodes: set[str]) -> int:
    """The converter casts between two nodes it keeps fp32 (fp32 -> Cast fp16 -> Cast fp32): the reader of such a
    pair after one of ``fp32_nodes`` (a LayerNorm input's DequantizeLinear) reads the fp32 tensor directly, so the
    DequantizeLinear feeds the LayerNorm with no Cast between. Returns how many pairs were folded."""
    producers, readers = edges(graph)
    to = {n.name: next((a.i for a in n.attribute if a.name == "to"), None) for n in graph.node if n.op_type == "Cast"}
    dead, folded, outputs = set(), 0, {o.name for o in graph.output}
    for back in (n for n in graph.node if to.get(n.name) == 1):  # Cast to fp32 ...
        down = producers.get(back.input[0])
        src = producers.get(down.input[0]) if down is not None and to.get(down.name) == 10 else None  # ... of fp16
        if src is None or src.name not in fp32_nodes:
            continue
        for reader in readers.get(back.output[0], []):
            reader.input[:] = [down.input[0] if i == back.output[0] else i for i in reader.input]
        dead.add(back.name)
        folded += 1
        if down.output[0] not in outputs and all(r.name in dead for r in readers.get(down.output[0], [])):
            dead.add(down.name)
    gone = {o for n in graph.node if n.name in dead for o in n.output}
    keep = [n for n in graph.node if n.name not in dead]
    del graph.node[:]
    graph.node.extend(keep)
    infos = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return folded


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


def scale_values(model) -> dict[str, np.ndarray]:
    """The scale initializers of the Q/DQ nodes (graph only; external data is not read)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    names = {n.input[1] for n in model.graph.node if n.op_type in QDQ}
    return {n: numpy_helper.to_array(inits[n]) for n in names if n in inits and not inits[n].external_data}
