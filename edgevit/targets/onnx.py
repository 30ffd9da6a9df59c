"""The ONNX Runtime targets: ``onnx`` (the float graph), ``onnx-fp16`` and ``onnx-int8``.

``onnx-int8`` is ONNX Runtime's dynamic quantization by default (int8 per-channel weights,
activations quantized per batch: no calibration needed) or, with ``form=static``, calibrated Q/DQ
(see :mod:`edgevit.quant.ort`). Which is faster depends on the CPU: dynamic int8 pays off on CPUs
with VNNI (AVX512_VNNI / AVX_VNNI) or AMX; on AVX2-only CPUs it measured 0.9-1.3x ONNX Runtime fp32
and static Q/DQ about 1.2x. Time both on the deployment CPU (`edgevit bench`, `edgevit optimize`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..graph import copy_onnx, save_onnx
from ..quant.config import QuantConfig, check_form
from .base import ExportContext, Runner, Target, register
from .int8 import Int8Target


class OnnxTarget(Target):
    backend = "onnxruntime"
    requires = ("onnx", "onnxruntime")
    model_file = "model.onnx"

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        dst = out_dir / self.model_file
        if self.precision == "fp32":
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

    def load_file(self, path: Path, threads: int | None = None) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # fp16 graphs: ORT_ENABLE_ALL's CPU layout passes crash ORT 1.32 (a segfault creating the session) on
        # nn.MultiheadAttention's fp16 graph (open_clip's towers); they speed up only fp32 NCHW work anyway
        level = "ORT_ENABLE_EXTENDED" if self.precision == "fp16" else "ORT_ENABLE_ALL"
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = _providers()
        sess = ort.InferenceSession(str(path), opts, providers=providers)
        name = sess.get_inputs()[0].name

        def predict(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0].astype(np.float32, copy=False)

        return Runner(predict, {"runtime": f"onnxruntime {ort.__version__}",
                                "providers": sess.get_providers(), "precision": self.precision})


def _providers() -> list[str]:
    import onnxruntime as ort

    want = os.environ.get("EDGEVIT_ORT_PROVIDERS")
    if want:
        return want.split(",")
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


@dataclass
class OnnxInt8Options(QuantConfig):
    form: str | None = None  # dynamic (default: no calibration; fast with VNNI) | static (calibrated Q/DQ)

    def check(self) -> None:
        super().check()
        if self.form is not None:
            check_form(self.form)


class OnnxInt8Target(Int8Target, OnnxTarget):
    """ONNX Runtime int8: dynamic (default, no calibration) or static Q/DQ (often faster without VNNI)."""

    Options = OnnxInt8Options

    def form_for(self, options: OnnxInt8Options) -> str:
        return check_form(options.form or "dynamic")


register(
    OnnxTarget("onnx", "fp32", "ONNX opset 17, dynamic batch, simplified; run by ONNX Runtime"),
    OnnxTarget("onnx-fp16", "fp16", "ONNX with fp16 weights and math (float32 inputs/outputs)"),
    OnnxInt8Target("onnx-int8", "int8", "ONNX Runtime int8 (dynamic MatMul/Gemm, int8 per-channel weights, no "
                   "calibration: fast on VNNI/AMX CPUs; --form static for calibrated Q/DQ, often faster on AVX2-only)"),
)
