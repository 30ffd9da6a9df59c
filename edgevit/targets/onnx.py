"""The ONNX Runtime targets: ``onnx`` (the float graph), ``onnx-fp16`` and ``onnx-int8``.

``onnx-int8`` is ONNX Runtime's dynamic quantization by default (int8 per-channel weights,
activations quantized per batch: no calibration needed) or, with ``form=static``, calibrated Q/DQ
(see :mod:`edgevit.quant.ort`). Which is faster depends on the CPU: dynamic int8 pays off on CPUs
with VNNI (AVX512_VNNI / AVX_VNNI) or AMX; on AVX2-only CPUs it measured 0.9-1.3x ONNX Runtime fp32
and static Q/DQ about 1.2x. Time both on the deployment CPU (`edgevit bench`, `edgevit optimize`).

``ort_fusion`` (``onnx``, and ``onnx-int8`` in its dynamic form) ships the graph with ONNX Runtime's
transformer contrib ops (com.microsoft). ONNX Runtime's optimizer
(``onnxruntime.transformers.optimizer``, model type ``vit``) matches attention only where q, k and v
have projections of their own (Hugging Face's ViT); timm's packed ``qkv`` projection (one MatMul,
Reshape to (B, N, 3, H, D), Split) never matches, so :func:`pack_attention` first rewrites each such
block into one ``Attention`` node (the packed weights are exactly that op's layout), then ORT's
optimizer fuses the rest (bias + GELU). Its SkipLayerNormalization fusion stays off: on DeiT-Ti @224
(ORT 1.32, AMD EPYC with AVX512_VNNI, batch 1) it made the graph 1.05-1.12x slower than the unfused one
(ORT fuses LayerNorm itself at session load). What the fusion gives there, timed in paired rounds against
the unfused artifact: fp32 0.98x at 1 thread (tied at 2 busy threads), dynamic int8 0.97-0.98x.
Dynamic int8 of the fused graph quantizes each Attention to QAttention; static Q/DQ would leave it
float, so that form refuses the option. Large models (over 1.8 GB, not simplified) compute the
attention scale at run time, which the packing does not follow: the manifest then warns that no
attention was fused.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, OptionError
from ..graph import copy_onnx, save_onnx
from ..quant.config import QuantConfig, check_form
from .base import ExportContext, NoOptions, Runner, Target, option, register
from .int8 import Int8Target

FUSED_OPS = ("Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization",
             "Gelu", "FastGelu", "BiasGelu")
SPINNING = "session.intra_op.allow_spinning"  # ORT's session config key: idle intra-op workers spin
FUSION_FIX = "drop --ort-fusion for this model (ONNX Runtime's transformer fusion is for ViT attention)"


FUSION_HELP = ("onnx / onnx-int8 (dynamic form): fuse each ViT attention block into ONNX Runtime's Attention op "
               "(QAttention in int8) and run ORT's transformer optimizer; measured 0-3 % faster on DeiT-Ti @224")


@dataclass
class OnnxOptions:
    ort_fusion: bool = option(False, FUSION_HELP)  # ships ORT's fused transformer ops (Attention, BiasGelu)


class OnnxTarget(Target):
    backend = "onnxruntime"
    label, colour, isa_sensitive = "ONNX Runtime", "#1f77b4", True
    requires = ("onnx", "onnxruntime")
    model_file = "model.onnx"
    Options: type = OnnxOptions

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        dst = out_dir / self.model_file
        if self.precision == "fp32":
            if getattr(ctx.options, "ort_fusion", False):
                fusion, files = fuse_transformer(onnx_fp32, dst, ctx.torch_model)
                return {**files, "ort_fusion": fusion}
            return copy_onnx(onnx_fp32, dst)
        if self.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            # inputs/outputs stay float32 so callers need not cast; LayerNorm/Softmax run in fp16
            # where the provider has kernels (CUDA, ARM); ORT inserts casts elsewhere. From the path:
            # shape inference then goes through a file, which has no 2 GB limit.
            m16 = convert_float_to_float16(str(onnx_fp32), keep_io_types=True)
            return {"keep_io_types": True, **save_onnx(m16, dst)}
        raise ExportError(f"target {self.name!r}: precision {self.precision} is not built by OnnxTarget")

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        return self.load_file(art_dir / self.model_file, threads)

    def session_options(self, threads: int | None = None, spinning: bool = False):
        """edgevit's ORT session options; ``spinning`` off: spinning idle workers slow the next session timed
        on the same cores (benchmarks/ort_spinning.py: two protocols 8-26 % apart with it on, <1 % off)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # fp16 graphs: ORT_ENABLE_ALL's CPU layout passes crash ORT 1.32 (a segfault creating the session) on
        # nn.MultiheadAttention's fp16 graph (open_clip's towers); they speed up only fp32 NCHW work anyway
        level = "ORT_ENABLE_EXTENDED" if self.precision == "fp16" else "ORT_ENABLE_ALL"
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads or 0, 1  # 0: ORT's own default
        opts.add_session_config_entry(SPINNING, "1" if spinning else "0")
        return opts

    def load_file(self, path: Path, threads: int | None = None) -> Runner:
        import onnxruntime as ort

        opts = self.session_options(threads)
        sess = ort.InferenceSession(str(path), opts, providers=_providers())
        name = sess.get_inputs()[0].name

        def predict(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0].astype(np.float32, copy=False)

        return Runner(predict, {"runtime": f"onnxruntime {ort.__version__}", "providers": sess.get_providers(),
                                "precision": self.precision,
                                "intra_op_spinning": opts.get_session_config_entry(SPINNING) == "1"})

    def notice(self, manifest: dict[str, Any], art_dir: Path) -> str | None:
        warns = (manifest.get("export", {}).get("ort_fusion") or {}).get("warnings", [])
        return "\n".join(f"warning: {w}" for w in warns) or None


class OnnxFp16Target(OnnxTarget):
    Options = NoOptions  # fusion before the fp16 conversion is not built


def _providers() -> list[str]:
    import onnxruntime as ort

    want = os.environ.get("EDGEVIT_ORT_PROVIDERS")
    if want:
        return want.split(",")
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


@dataclass
class OnnxInt8Options(QuantConfig):
    form: str | None = option(None, "onnx-int8 form: dynamic (default, no calibration; fast on VNNI/AMX CPUs) | "
                              "static (calibrated Q/DQ, often faster on AVX2-only CPUs)")
    ort_fusion: bool = option(False, FUSION_HELP)  # dynamic form only: the fused graph quantized (QAttention)

    def check(self) -> None:
        super().check()
        if self.form is not None:
            check_form(self.form)
        if self.ort_fusion and (self.form or "dynamic") != "dynamic":
            raise OptionError("--ort-fusion with onnx-int8 --form static: static Q/DQ leaves ONNX Runtime's fused "
                              "Attention float (only dynamic quantization makes it QAttention)",
                              "use --form dynamic with --ort-fusion, or drop --ort-fusion")
        if self.ort_fusion and self.qat_epochs:
            raise OptionError("--ort-fusion with --qat-epochs: the QAT graph is NNCF's Q/DQ, which the fusion "
                              "does not take", "drop --ort-fusion or --qat-epochs")


class OnnxInt8Target(Int8Target, OnnxTarget):
    """ONNX Runtime int8: dynamic (default, no calibration) or static Q/DQ (often faster without VNNI)."""

    Options = OnnxInt8Options
    search_options = {"form": "static"}  # calibrated Q/DQ: fast without VNNI, where dynamic int8 is not

    def form_for(self, options: OnnxInt8Options) -> str:
        return check_form(options.form or "dynamic")

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        if not ctx.options.ort_fusion:
            return super().export(onnx_fp32, out_dir, ctx)
        with tempfile.TemporaryDirectory(prefix=".edgevit-fused-", dir=onnx_fp32.parent) as work:
            fused = Path(work) / "fused.onnx"
            fusion, _ = fuse_transformer(onnx_fp32, fused, ctx.torch_model)
            facts = super().export(fused, out_dir, ctx)
        return {**facts, "ort_fusion": {**fusion, "fused_ops": fused_ops(out_dir / self.model_file)}}


# -- ONNX Runtime's transformer fusion ---------------------------------------------------------
def fuse_transformer(onnx_fp32: Path, dst: Path, model: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``onnx_fp32`` with timm's attention packed (:func:`pack_attention`) and ONNX Runtime's
    transformer fusion applied to ``dst``; returns (what the fusion did, :func:`save_onnx`'s facts)."""
    import onnx
    import onnxruntime
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    graph = onnx.load(str(onnx_fp32))
    before = Counter(n.op_type for n in graph.graph.node)
    if not before["Softmax"]:
        name = ((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
                if model is not None else "this model")
        raise OptionError(f"--ort-fusion: model {name} has no attention (no Softmax in its graph), so ONNX "
                          "Runtime's transformer fusion has nothing to fuse", FUSION_FIX)
    packed, not_fused = pack_attention(graph)
    opts = FusionOptions("vit")
    opts.enable_skip_layer_norm = opts.enable_bias_skip_layer_norm = False  # measured slower on CPU: see above
    heads = next((a.i for n in graph.graph.node if n.op_type == "Attention" for a in n.attribute
                  if a.name == "num_heads"), 0)  # 0: ORT reads them from the graph
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # the optimizer's per-fusion notes
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            optimizer = optimize_model(graph, model_type="vit", num_heads=heads, hidden_size=0,
                                       optimization_options=opts, opt_level=0)
    finally:
        root.level = level
    _declare_contrib(optimizer.model)
    after = fused_ops(optimizer.model)
    facts: dict[str, Any] = {
        "optimizer": f"onnxruntime {onnxruntime.__version__} transformers.optimizer (model_type vit, opt_level 0, "
                     "SkipLayerNormalization off) after edgevit's packed-qkv Attention",
        "fused_ops": after, "attention_blocks": before["Softmax"],
        "attention_fused": packed, "not_fused": not_fused, "warnings": []}
    if packed < before["Softmax"]:
        facts["warnings"].append(f"attention fused in {packed} of {before['Softmax']} blocks; the rest run unfused "
                                 f"({'; '.join(not_fused)})")
    if all(after[op] == before[op] for op in FUSED_OPS):
        facts["warnings"].append("ONNX Runtime's transformer fusion fused nothing: model.onnx is the unfused graph")
    return facts, save_onnx(optimizer.model, dst)


def fused_ops(model: Any) -> dict[str, int]:
    """How many of each fused op a graph (a ModelProto or an ONNX file) holds."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    return {op: ops[op] for op in FUSED_OPS + ("QAttention",) if ops[op] or op in FUSED_OPS}


def pack_attention(model) -> tuple[int, list[str]]:
    """Rewrite each timm attention block of ``model`` (an onnx ModelProto, in place) into ONNX Runtime's
    ``Attention`` op: returns how many, and why each other Softmax's block was not."""
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
    found, not_fused = [], []
    for i, sm in enumerate(n for n in model.graph.node if n.op_type == "Softmax"):
        m = _match_attention(g, sm)
        if isinstance(m, str):
            not_fused.append(f"attention {i} ({sm.name}): {m}")
        else:
            found.append(m)
    for m in found:
        if m["bias"] is None:
            m["bias"] = f"{m['w']}.attention_bias"
            zeros = np.zeros(3 * m["heads"] * m["dim"], np.float32)
            model.graph.initializer.append(numpy_helper.from_array(zeros, m["bias"]))
        scale = {} if abs(m["scale"] * m["dim"] ** 0.5 - 1) < 1e-6 else {"scale": m["scale"]}
        node = helper.make_node("Attention", [m["x"], m["w"], m["bias"]], [m["out"]], domain="com.microsoft",
                                name=f"{m['nodes'][0].name.rsplit('/', 2)[0]}/Attention", num_heads=m["heads"],
                                **scale)
        nodes = list(model.graph.node)
        model.graph.node.insert(nodes.index(m["nodes"][0]), node)  # where the qkv MatMul was: inputs ready
        for n in m["nodes"]:
            model.graph.node.remove(n)
    _declare_contrib(model)
    return len(found), not_fused


def _declare_contrib(model) -> None:
    """Declare the com.microsoft domain where the graph uses it, and its ops' outputs float (onnx's shape
    inference knows neither, and ORT's quantizer needs the type of every MatMul input)."""
    from onnx import TensorProto, helper

    contrib = [n for n in model.graph.node if n.domain == "com.microsoft"]
    if contrib and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    typed = {v.name for v in model.graph.value_info} | {o.name for o in model.graph.output}
    model.graph.value_info.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                  for n in contrib for o in n.output if o and o not in typed)


def _attr(node, key: str, default: Any = None) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)


class _Graph:
    """Who makes and who reads each tensor of an ONNX graph, and its constants."""

    def __init__(self, graph):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info
                      if v.type.tensor_type.HasField("shape")}

    def const(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        return numpy_helper.to_array(n.attribute[0].t) if n is not None and n.op_type == "Constant" \
            and n.attribute[0].name == "value" else None

    def sole(self, name: str):
        """The one node reading ``name``, or None (several readers, none, or a graph output)."""
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def scaled(self, node) -> tuple[str, float] | None:
        """A Mul or Div by a constant scalar: (its other input, the factor it applies)."""
        for k in (1, 0) if node.op_type == "Mul" else (1,) if node.op_type == "Div" else ():
            c = self.const(node.input[k])
            if c is not None and c.size == 1:
                f = float(c.ravel()[0])
                return node.input[1 - k], f if node.op_type == "Mul" else 1 / f
        return None


def _operand(g: _Graph, name: str) -> tuple[int, float, int, list, str] | str:
    """Follow q, k or v back to the stacked (3, B, H, N, D) qkv: (its index there, the scale it gets,
    how often its last two axes are swapped, the nodes on the way, the stacked tensor), or why not."""
    nodes, scale, swaps = [], 1.0, 0
    while (n := g.producer.get(name)) is not None:
        if g.sole(name) is None:
            return f"{name} is read outside the attention"
        nodes.append(n)
        if s := g.scaled(n):
            name, scale = s[0], scale * s[1]
        elif n.op_type in ("Mul", "Div"):
            return "q or k is scaled by a tensor computed at run time (an unsimplified graph: over 1.8 GB?)"
        elif n.op_type == "Transpose" and list(_attr(n, "perm", [])) == [0, 1, 3, 2]:
            name, swaps = n.input[0], swaps + 1
        elif n.op_type == "Squeeze":
            name = n.input[0]
        elif n.op_type == "Split" and _attr(n, "axis", 0) == 0 and len(n.output) == 3:
            return list(n.output).index(name), scale, swaps, nodes, n.input[0]
        elif n.op_type == "Gather" and _attr(n, "axis", 0) == 0 and (i := g.const(n.input[1])) is not None \
                and i.size == 1:
            return int(i.ravel()[0]) % 3, scale, swaps, nodes, n.input[0]
        else:
            return f"a {n.op_type} between the qkv projection and the attention"
    return "q, k or v is not computed from a packed qkv projection"


def _match_attention(g: _Graph, sm) -> dict[str, Any] | str:
    """Softmax(scale * q @ k^T) @ v -> Transpose -> Reshape of timm's packed qkv, or why ``sm`` is not one."""
    av = g.sole(sm.output[0])
    if _attr(sm, "axis", -1) not in (-1, 3) or av is None or av.op_type != "MatMul" or av.input[0] != sm.output[0]:
        return "its attention weights are read elsewhere (token pruning?)"
    tr = g.sole(av.output[0])
    end = g.sole(tr.output[0]) if tr is not None and tr.op_type == "Transpose" else None
    if end is None or end.op_type != "Reshape" or list(_attr(tr, "perm", [])) != [0, 2, 1, 3]:
        return "its output is not transposed and reshaped back to (B, N, C)"
    name, scale, pre, reader = sm.input[0], 1.0, [], sm
    while (n := g.producer.get(name)) is not None and g.sole(name) is reader and (s := g.scaled(n)):
        name, scale, reader = s[0], scale * s[1], n
        pre.append(n)
    qk = g.producer.get(name)
    if qk is None or qk.op_type != "MatMul" or g.sole(name) is not reader:
        return "its logits are not a plain scaled q @ k^T (a mask or bias is added)"
    ops = [_operand(g, qk.input[0]), _operand(g, qk.input[1]), _operand(g, av.input[1])]
    if why := next((o for o in ops if isinstance(o, str)), None):
        return why
    if [o[0] for o in ops] != [0, 1, 2] or [o[2] for o in ops] != [0, 1, 0] or ops[2][1] != 1.0 \
            or len({o[4] for o in ops}) != 1:
        return "q, k and v are not the packed qkv's thirds, k transposed"
    body = [n for o in ops for n in o[3]]
    qkv = _match_qkv(g, ops[0][4], body)
    if isinstance(qkv, str):
        return qkv
    return {**qkv, "scale": scale * ops[0][1] * ops[1][1], "out": end.output[0],
            "nodes": [*qkv["nodes"], *{id(n): n for n in body}.values(), qk, *pre, sm, av, tr, end]}


def _match_qkv(g: _Graph, stacked: str, body: list) -> dict[str, Any] | str:
    """x @ W (+ b) -> Reshape (B, N, 3, H, D) -> Transpose (2, 0, 3, 1, 4) = ``stacked``, or why not."""
    st = g.producer.get(stacked)
    if st is None or st.op_type != "Transpose" or list(_attr(st, "perm", [])) != [2, 0, 3, 1, 4] \
            or any(r not in body for r in g.readers.get(stacked, [])) or stacked in g.outputs:
        return "q, k and v do not come from one (3, B, H, N, D) transpose of the qkv projection"
    rs = g.producer.get(st.input[0])
    shape = g.const(rs.input[1]) if rs is not None and rs.op_type == "Reshape" else None
    if shape is None or len(shape) != 5 or shape[2] != 3 or min(shape[3:]) < 1 or g.sole(rs.output[0]) is None:
        return "the qkv projection is not reshaped to (B, N, 3, H, D)"
    heads, dim = int(shape[3]), int(shape[4])
    nodes, bias, lin = [rs, st], None, g.producer.get(rs.input[0])
    if lin is not None and lin.op_type == "Add" and g.sole(lin.output[0]) is not None:
        k = next((k for k in (1, 0) if (c := g.const(lin.input[k])) is not None and c.shape == (3 * heads * dim,)),
                 None)
        if k is None:
            return "the qkv bias is not a constant vector"
        nodes, bias, lin = [lin, *nodes], lin.input[k], g.producer.get(lin.input[1 - k])
    w = g.inits.get(lin.input[1]) if lin is not None and lin.op_type == "MatMul" else None
    if w is None or list(w.dims)[1:] != [3 * heads * dim] or len(w.dims) != 2 or g.sole(lin.output[0]) is None \
            or g.ranks.get(lin.input[0], 3) != 3:
        return "no qkv MatMul of the (B, N, C) tokens by constant weights"
    return {"x": lin.input[0], "w": lin.input[1], "bias": bias, "heads": heads, "dim": dim, "nodes": [lin, *nodes]}


register(
    OnnxTarget("onnx", "fp32", "ONNX opset 17, dynamic batch, simplified; run by ONNX Runtime", family="onnx"),
    OnnxFp16Target("onnx-fp16", "fp16", "ONNX with fp16 weights and math (float32 inputs/outputs)"),
    OnnxInt8Target("onnx-int8", "int8", "ONNX Runtime int8 (dynamic MatMul/Gemm, int8 per-channel weights, no "
                   "calibration: fast on VNNI/AMX CPUs; --form static for calibrated Q/DQ, often faster on AVX2-only)",
                   float_twin="onnx"),
)
