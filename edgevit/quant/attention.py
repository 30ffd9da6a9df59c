"""The attention blocks of a ViT's ONNX graph, and what the float scope asks of them.

A block's attention is found by its Softmax: the MatMul before it (through the scaling Mul/Div/Add)
computes q @ kᵀ, the MatMul reading its output computes attn @ v. Any other reader of the softmax
output (EViT's token scoring: Gather/Slice/ReduceMean into TopK) makes the block one whose
probabilities also decide which tokens are kept. :func:`attention_plan` asks the
:class:`~edgevit.float_scope.FloatScope` which blocks keep their attention matmuls float and why;
:func:`softmax_output_qparams` reads back the scale every attention softmax output was quantized with.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..float_scope import SOFTMAX_OP, FloatScope
from ..graph import edges

THROUGH = ("Mul", "Div", "Add", "Sub", "Where", "Cast")  # between q @ kᵀ and the Softmax (scale, mask, casts)


@dataclass(frozen=True)
class Attention:
    """One attention block: its Softmax node, the probabilities tensor and the two matmuls around it."""

    softmax: str
    probs: str
    scores: str | None  # the q @ kᵀ MatMul node
    context: str | None  # the attn @ v MatMul node
    tokens: int | None  # keys each query attends to (the softmax's last dimension); None when not static
    readers: tuple[str, ...]  # other nodes reading the probabilities (EViT's token scoring)

    @property
    def matmuls(self) -> tuple[str, ...]:
        return tuple(n for n in (self.scores, self.context) if n)


def find_attention(graph, shapes: dict[str, list[Any]] | None = None) -> list[Attention]:
    """Every Softmax of ``graph`` that sits between attention matmuls, in graph order."""
    producers, consumers = edges(graph)
    found = []
    for sm in (n for n in graph.node if n.op_type == SOFTMAX_OP):
        scores = _matmul_before(sm.input[0], producers)
        readers = consumers.get(sm.output[0], [])
        context = next((r for r in readers if r.op_type == "MatMul" and r.input[0] == sm.output[0]), None)
        if scores is None or context is None:
            continue  # a softmax that is not attention (e.g. a classifier's)
        dims = (shapes or {}).get(sm.output[0]) or []
        tokens = dims[-1] if dims and isinstance(dims[-1], int) and dims[-1] > 0 else None
        found.append(Attention(sm.name, sm.output[0], scores.name, context.name, tokens,
                               tuple(r.name for r in readers if r is not context)))
    return found


def _matmul_before(tensor: str, producers: dict[str, Any], depth: int = 0):
    p = producers.get(tensor)
    if p is None or depth > 4:
        return None
    if p.op_type == "MatMul":
        return p
    return _matmul_before(p.input[0], producers, depth + 1) if p.op_type in THROUGH else None


def attention_plan(onnx_path: Path, scope: FloatScope) -> list[tuple[Attention, str | None]]:
    """Each attention block of the ONNX at ``onnx_path`` with why its matmuls stay float (None: int8)."""
    return [(a, scope.attention_float_reason(a.tokens, bool(a.readers))) for a in _attention_of(*_key(onnx_path))]


def kept_float(onnx_path: Path, scope: FloatScope) -> list[str]:
    """The attention matmuls the scope keeps float in this graph."""
    return [m for a, why in attention_plan(onnx_path, scope) if why for m in a.matmuls]


def _key(path: Path) -> tuple[str, int, int]:
    st = Path(path).stat()
    return str(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _attention_of(path: str, mtime_ns: int, size: int) -> tuple[Attention, ...]:
    """The blocks of one file version (the --max-drop search asks once per candidate graph)."""
    from ..precision import typed_graph

    g = typed_graph(Path(path))
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in [*g.value_info, *g.output]}
    return tuple(find_attention(g, shapes))


def softmax_output_qparams(model) -> list[dict[str, Any]]:
    """For each attention Softmax of a Q/DQ ``model`` (a ModelProto), the scale and zero-point of the
    QuantizeLinear reading its output (through Casts); None where the output is not quantized."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    _, consumers = edges(model.graph)

    def quantizer(tensor: str, depth: int = 0):
        for r in consumers.get(tensor, []):
            if r.op_type == "QuantizeLinear":
                return r
            if r.op_type == "Cast" and depth < 2 and (q := quantizer(r.output[0], depth + 1)) is not None:
                return q
        return None

    out = []
    for n in (n for n in model.graph.node if n.op_type == SOFTMAX_OP):
        q = quantizer(n.output[0])
        scale = zp = None
        if q is not None and q.input[1] in inits:
            scale = float(numpy_helper.to_array(inits[q.input[1]]).reshape(-1)[0])
            if len(q.input) > 2 and q.input[2] in inits:
                zp = numpy_helper.to_array(inits[q.input[2]])
        out.append({"softmax": n.name, "scale": scale, "zero_point": None if zp is None else int(zp.reshape(-1)[0]),
                    "zero_point_type": None if zp is None else str(zp.dtype)})
    return out
