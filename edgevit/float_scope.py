"""What stays float when edgevit quantizes a ViT: the one :class:`FloatScope`.

Every place that decides or checks what is int8 asks it: the ONNX Runtime and TensorRT Q/DQ forms
(:mod:`edgevit.quant.ort`), NNCF PTQ and QAT (:mod:`edgevit.quant.nncf_ptq`, :mod:`edgevit.quant.qat`),
the fp16 conversions (:mod:`edgevit.quant.fp16`, ``tensorrt-fp16``), TensorRT's int8 rules
(:mod:`edgevit.targets.trt_rules`) and the precision map (:mod:`edgevit.precision`). ModelOpt keeps
these rules in one config; so does edgevit. The rules:

* the classifier head (the modules named in :data:`HEAD_MODULES`) stays float unless asked
  (``quantize_head``);
* LayerNorm's activation input stays float unless asked (``quantize_norms``); its gamma/beta are never
  int8, and its arithmetic stays fp32 in the fp16 graphs (:data:`FP32_OPS`);
* Softmax's input is never quantized: Q/DQ there breaks the attention pattern TensorRT fuses;
* Softmax's output, where the attention matmul reading it is int8, has the fixed range [0, 1]
  (:data:`SOFTMAX_RANGE`: scale 1/127, zero-point 0 in int8), as NVIDIA's BERT demo and ModelOpt do;
* the attention matmuls stay float above :data:`ATTENTION_TOKEN_LIMIT` tokens (ModelOpt's rule) and
  in blocks whose softmax output is also read by other ops (EViT scores tokens with it: int8
  rounding there changes which tokens are kept);
* a layer whose int8 scale is subnormal in fp16 (below :data:`FP16_TINY`) stays float in an fp16 graph;
* the layers named in ``exclude`` stay float.

This module imports neither torch nor onnx: the TensorRT runtime imports it on a board without PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass

HEAD_MODULES = ("head", "head_dist", "fc", "classifier")  # ViT/DeiT head and head_dist, ResNet fc, others'
NORM_OP, SOFTMAX_OP = "LayerNormalization", "Softmax"
GEMM_OPS = ("MatMul", "Gemm", "Conv")  # what the Q/DQ forms quantize
FP32_OPS = (NORM_OP,)  # computed in fp32 (behind casts) inside an fp16 graph
SOFTMAX_RANGE = (0.0, 1.0)
ATTENTION_TOKEN_LIMIT = 512  # ModelOpt keeps the attention matmuls float above this many tokens
FP16_TINY = 2.0 ** -14  # the smallest normal fp16 (6.1e-5): a scale below it loses digits or is clamped
FP16_ROUNDING = 2.0 ** -11  # fp16's relative rounding error for a normal number (half a unit in the last place)


@dataclass(frozen=True)
class FloatScope:
    """What stays float in one int8 graph. ``head``/``norms``: the classifier head / LayerNorm inputs stay
    float (the defaults); ``exclude``: node names kept float by the user or by ``--max-drop``."""

    head: bool = True
    norms: bool = True
    exclude: tuple[str, ...] = ()
    max_attention_tokens: int = ATTENTION_TOKEN_LIMIT

    @classmethod
    def of(cls, quantize_head: bool = False, quantize_norms: bool = False, exclude=()) -> FloatScope:
        """The scope the int8 options ask for (``--quantize-head``, ``--quantize-norms``, ``--exclude``)."""
        return cls(head=not quantize_head, norms=not quantize_norms, exclude=tuple(dict.fromkeys(exclude)))

    def excluding(self, names) -> FloatScope:
        """This scope with more layers kept float."""
        return FloatScope(self.head, self.norms, tuple(dict.fromkeys([*self.exclude, *names])),
                          self.max_attention_tokens)

    @staticmethod
    def is_head(layer: str) -> bool:
        """Is this graph node (ONNX '/head/Gemm', OpenVINO 'head/WithoutBiases', ...) in the classifier head?"""
        return layer.strip("/").split("/")[0].split(".")[0] in HEAD_MODULES

    @staticmethod
    def head_pattern() -> str:
        """:meth:`is_head` as a regular expression over NNCF's PyTorch node names."""
        return rf"^({'|'.join(HEAD_MODULES)})/.*"

    def quantized_ops(self) -> tuple[str, ...]:
        """The op types whose inputs get Q/DQ: the GEMMs, and LayerNorm when asked (never Softmax)."""
        return GEMM_OPS if self.norms else (*GEMM_OPS, NORM_OP)

    def keeps_float(self, name: str, op_type: str) -> bool:
        """Does node ``name`` (of ``op_type``) keep float inputs?"""
        if name in self.exclude or op_type not in self.quantized_ops():
            return True
        return op_type in GEMM_OPS and self.head and self.is_head(name)

    def forbids_qdq_into(self, op_type: str) -> bool:
        """Must no Q/DQ feed this op's activation input (Softmax always; LayerNorm unless asked)?"""
        return op_type == SOFTMAX_OP or (op_type == NORM_OP and self.norms)

    @staticmethod
    def int8_weights_allowed(op_type: str) -> bool:
        """May int8 weights feed this op? Not LayerNorm's gamma/beta, not Softmax, asked or not."""
        return op_type not in (NORM_OP, SOFTMAX_OP)

    @staticmethod
    def computes_fp32(op_type: str) -> bool:
        """Does this op keep fp32 arithmetic inside an fp16 graph?"""
        return op_type in FP32_OPS

    def attention_float_reason(self, tokens: int | None, scores_tokens: bool) -> str | None:
        """Why a block's attention matmuls (q @ kᵀ, attn @ v) stay float, or None when they are int8."""
        if tokens is not None and tokens > self.max_attention_tokens:
            return f"{tokens} tokens > {self.max_attention_tokens} (ModelOpt keeps attention float above it)"
        if scores_tokens:
            return "its softmax output also scores tokens (EViT): int8 there changes which tokens are kept"
        return None

    @staticmethod
    def softmax_qparams(signed: bool = True) -> tuple[float, int]:
        """(scale, zero-point) of an attention softmax output: [0, 1] in int8 (1/127, 0) or uint8 (1/255, 0)."""
        lo, hi = SOFTMAX_RANGE
        return (hi - lo) / (127 if signed else 255), 0

    @staticmethod
    def fp16_scale_changes(scale32: float, scale16: float) -> bool:
        """Does an int8 scale stored in fp16 differ from its fp32 value beyond fp16's rounding (a subnormal
        or clamped fp16 scale does)?"""
        return abs(scale16 - scale32) > FP16_ROUNDING * abs(scale32)

    @staticmethod
    def scale_keeps_float(smallest_scale: float) -> bool:
        """Does a layer whose smallest nonzero int8 scale is this stay float in an fp16 graph?"""
        return 0.0 < abs(smallest_scale) < FP16_TINY
