"""The precision map of an ONNX graph: in which type each op computes, and why an int8 model may
not be faster than fp16.

A strongly typed TensorRT network (and ONNX Runtime) computes each op in the type the graph gives
it, so the graph that ships says what runs:

* a GEMM (MatMul, Gemm, Conv) is **int8** when every one of its data inputs comes out of a
  DequantizeLinear of int8 (TensorRT fuses DQ -> GEMM -> ... into an int8 kernel), or when it is
  an integer op (MatMulInteger, ConvInteger, QLinearMatMul: ONNX Runtime's dynamic int8);
* every other op computes in the float type of its output (fp16 or fp32);
* a MatMul with a weight input (an initializer, possibly through DQ/Cast) is a **linear layer**;
  one with two activation inputs is an **attention matmul** (q @ kᵀ, attn @ v);
* data-movement ops (Reshape, Transpose, Gather, Concat, ...) and Q/DQ/Cast are listed apart: they
  compute nothing.

:func:`precision_map` returns the per-op list, a summary and the warnings a user needs: float32
compute outside LayerNorm (memory-bound at twice the bytes: such an int8 engine seldom beats
fp16), GEMMs left float, unquantized attention matmuls.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .float_scope import GEMM_OPS, FloatScope

INTEGER_OPS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
MOVE_OPS = ("Reshape", "Transpose", "Gather", "Concat", "Split", "Squeeze", "Unsqueeze", "Expand", "Shape",
            "Slice", "Flatten", "Identity", "Constant", "ConstantOfShape", "Where", "Equal", "Range", "Cast")
TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 3: "int8", 2: "uint8", 6: "int32", 7: "int64", 9: "bool"}
SCOPE = FloatScope()  # what stays float: asked for the head and the ops that keep fp32 arithmetic


def precision_map(onnx_path: str | Path, fp16_peer: str | None = "tensorrt-fp16", graph: Any = None
                  ) -> dict[str, Any]:
    """Per-op compute precision of the ONNX at ``onnx_path`` with a summary and warnings. ``fp16_peer``:
    the fp16 artifact an int8 one must beat where fp32 compute is the cost (a GPU runtime); None for a
    CPU runtime, where float32 outside the int8 GEMMs is the norm. ``graph``: :func:`typed_graph` of
    ``onnx_path`` when the caller has read it already (it is then not read again)."""
    g = graph if graph is not None else typed_graph(Path(onnx_path))
    types = _tensor_types(g)
    producers = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    ops, fp32_islands = [], []
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    io = {i.name for i in g.input} | {o.name for o in g.output}
    for n in g.node:
        kind, precision = _classify(n, types, producers, inits)
        ops.append({"name": n.name, "op": n.op_type, "kind": kind, "precision": precision})
        fp32_out = any(types.get(o) == 1 for o in n.output)  # float32, whatever the op computes in
        if fp32_out and not SCOPE.computes_fp32(n.op_type) and not _into_fp32_op(n, users, io):
            fp32_islands.append(n.name)
    summary = _summary(ops, fp32_islands)
    return {"path": str(onnx_path), "ops": ops, "summary": summary, "warnings": warnings_for(summary, fp16_peer)}


def _summary(ops: list[dict[str, Any]], fp32_islands: list[str]) -> dict[str, Any]:
    gemms = [o for o in ops if o["kind"] in ("linear", "attention", "conv")]
    count = Counter((o["kind"], o["precision"]) for o in gemms)
    compute = Counter(o["precision"] for o in ops if o["kind"] == "compute")
    head = [o for o in gemms if SCOPE.is_head(o["name"])]
    return {
        "int8_gemms": sum(o["precision"] == "int8" for o in gemms),
        "gemms": len(gemms),
        "linear_layers": sum(o["kind"] == "linear" for o in gemms),
        "linear_layers_quantized": count[("linear", "int8")],
        "attention_matmuls": sum(o["kind"] == "attention" for o in gemms),
        "attention_matmuls_quantized": count[("attention", "int8")],
        "float_gemms": [o["name"] for o in gemms if o["precision"] != "int8"],
        "head_float": bool(head) and all(o["precision"] != "int8" for o in head),
        "compute_ops_by_precision": dict(compute),
        "fp32_ops_outside_norms": len(fp32_islands),  # nodes with a float32 output, LayerNorm and its casts aside
        "fp32_islands": fp32_islands,
        "layernorm_precision": sorted({o["precision"] for o in ops if SCOPE.computes_fp32(o["op"])}),
        "label": _label(gemms, Counter(o["precision"] for o in ops if o["kind"] == "compute"
                                       and not SCOPE.computes_fp32(o["op"]))),
    }


def warnings_for(s: dict[str, Any], fp16_peer: str | None = "tensorrt-fp16") -> list[str]:
    """Why this graph may not beat fp16 (empty for a graph with no int8 at all)."""
    if not s["int8_gemms"]:
        return []
    out = []
    if s["fp32_ops_outside_norms"] and fp16_peer:
        out.append(f"{s['fp32_ops_outside_norms']} ops output fp32 outside LayerNorm (e.g. "
                   f"{s['fp32_islands'][0]}): fp32 elementwise work and fp32 GEMM outputs cost twice the "
                   f"memory traffic of fp16, so this int8 engine will likely not beat {fp16_peer}")
    linear_float = s["linear_layers"] - s["linear_layers_quantized"] - int(s["head_float"])
    if s["linear_layers"] and linear_float > s["linear_layers"] // 4:
        out.append(f"{linear_float} of {s['linear_layers']} linear layers stay float (beside the head): most "
                   "GEMM work is not int8, so expect little gain over fp16")
    if s["attention_matmuls"] and not s["attention_matmuls_quantized"]:
        out.append(f"none of the {s['attention_matmuls']} attention matmuls is int8: they run in float")
    return out


def _label(gemms: list[dict[str, Any]], compute: Counter) -> str:
    """What the graph computes in a few words: 'int8 GEMMs + fp16', 'fp16', 'int8 GEMMs + fp32'."""
    floats = [p for p in ("fp16", "bf16", "fp32") if compute.get(p)]
    rest = floats[0] if len(floats) == 1 else "/".join(floats) or "fp32"
    return f"int8 GEMMs + {rest}" if any(o["precision"] == "int8" for o in gemms) else rest


def _classify(n, types: dict[str, int], producers: dict[str, Any], inits: set[str]) -> tuple[str, str]:
    out_type = TYPES.get(types.get(n.output[0], 0), "?") if n.output else "?"
    if n.op_type in INTEGER_OPS:
        return ("linear" if _has_weight(n, producers, inits) else "attention"), "int8"
    if n.op_type in QDQ_OPS:
        return "qdq", out_type
    if n.op_type in MOVE_OPS:
        return "move", out_type
    if n.op_type not in GEMM_OPS:
        return "compute", out_type
    kind = "conv" if n.op_type == "Conv" else "linear" if _has_weight(n, producers, inits) else "attention"
    data = [i for i in n.input[:2] if i]
    int8 = all(_dequantized(i, producers) for i in data)
    return kind, "int8" if int8 else out_type


def _dequantized(tensor: str, producers: dict[str, Any]) -> bool:
    p = producers.get(tensor)
    return p is not None and p.op_type == "DequantizeLinear"


def _has_weight(n, producers: dict[str, Any], inits: set[str]) -> bool:
    """Does a data input of ``n`` come from a stored tensor (directly or through DQ/Q/Cast/Transpose)?"""
    def stored(t: str, depth: int = 0) -> bool:
        if t in inits:
            return True
        p = producers.get(t)
        if p is None or depth > 4:
            return False
        if p.op_type == "Constant":
            return True
        through = ("DequantizeLinear", "QuantizeLinear", "Cast", "Transpose")
        return p.op_type in through and stored(p.input[0], depth + 1)

    return any(stored(i) for i in n.input[:2] if i)


def _into_fp32_op(n, users: dict[str, list[Any]], io: set[str], depth: int = 0) -> bool:
    """A Cast at the graph's input or output, or a Cast/Q/DQ chain whose readers all keep fp32 arithmetic
    (LayerNorm; with --quantize-norms its input is Cast -> Q -> DQ -> LayerNorm): the fp32 it makes is allowed."""
    if n.op_type not in ("Cast", *QDQ_OPS) or depth > 3:
        return False
    if n.op_type == "Cast" and (n.output[0] in io or n.input[0] in io):
        return True
    readers = users.get(n.output[0], [])
    return bool(readers) and all(SCOPE.computes_fp32(m.op_type) or _into_fp32_op(m, users, io, depth + 1)
                                 for m in readers)


def typed_graph(path: Path):
    """The graph with every tensor's type inferred (through a file: no 2 GB limit, no data read)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="edgevit-types-") as work:
        out = Path(work) / "typed.onnx"
        try:
            onnx.shape_inference.infer_shapes_path(str(path), str(out), data_prop=True)  # shapes through Reshape
            return onnx.load(str(out), load_external_data=False).graph
        except Exception:  # an op shape inference does not know: the types the graph declares
            return onnx.load(str(path), load_external_data=False).graph


def _tensor_types(g) -> dict[str, int]:
    types = {t.name: t.data_type for t in g.initializer}
    for v in [*g.input, *g.value_info, *g.output]:
        types[v.name] = v.type.tensor_type.elem_type
    return types


def summary_line(s: dict[str, Any]) -> str:
    """One line for a report: 'int8 GEMMs + fp16: 48/48 linear, 24/24 attention int8; LayerNorm fp32'."""
    if not s["int8_gemms"]:
        parts = [f"{s['label']}, no int8 GEMM"]
    else:
        parts = [f"{s['label']}: {s['linear_layers_quantized']}/{s['linear_layers']} linear"]
    if s["attention_matmuls"] and s["int8_gemms"]:
        parts[0] += f", {s['attention_matmuls_quantized']}/{s['attention_matmuls']} attention matmuls int8"
    if s["layernorm_precision"]:
        parts.append(f"LayerNorm {'/'.join(s['layernorm_precision'])}")
    if s["fp32_ops_outside_norms"] and s["int8_gemms"]:
        parts.append(f"{s['fp32_ops_outside_norms']} fp32 ops outside LayerNorm")
    return "; ".join(parts)
