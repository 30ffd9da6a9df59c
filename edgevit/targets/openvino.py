"""OpenVINO IR targets, converted from the float ONNX.

``openvino`` keeps fp32 weights and pins inference to f32 (bit-faithful to PyTorch up to
reassociation). ``openvino-fp16`` stores fp16 weights and lets the device pick its default
inference precision: bf16 on CPUs with AVX512-BF16/AMX, fp16 on GPUs and ARM, f32 elsewhere.
The precision the runtime really used is recorded with every prediction and benchmark.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..quant.config import QuantConfig
from .base import ExportContext, Runner, Target, option, register
from .int8 import QAT_FACTS, Int8Target


@lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()


class OpenVinoTarget(Target):
    backend = "openvino"
    label, colour, isa_sensitive = "OpenVINO", "#6a3d9a", True
    requires = ("openvino",)
    records = ("openvino",)
    model_file = "model.xml"

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        import openvino as ov

        model = ov.convert_model(str(onnx_fp32))
        ov.save_model(model, str(out_dir / self.model_file), compress_to_fp16=self.precision == "fp16")
        return {"openvino": ov.__version__, "weights": "fp16" if self.precision == "fp16" else "fp32"}

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        """Compile once per input shape: the IR keeps a dynamic batch, but OpenVINO's CPU plugin is
        about 10 % faster on a static shape (measured on DeiT-Ti @224, batch 1), so each batch size
        seen gets its own static compiled model (validation sees at most two: full and last batch)."""
        import openvino as ov

        model = _core().read_model(str(art_dir / self.model_file))
        compiled: dict[tuple[int, ...], Any] = {}

        def request_for(shape: tuple[int, ...]):
            if shape not in compiled:
                cm = self.compile(model, shape, threads)
                compiled[shape] = (cm, cm.create_infer_request())
            return compiled[shape]

        def predict(x: np.ndarray) -> np.ndarray:
            cm, request = request_for(tuple(x.shape))
            out = request.infer({0: x}, share_inputs=True)
            return np.array(out[cm.output(0)], dtype=np.float32)

        first, _ = request_for(_batch1(model))  # compile now, so load errors surface at load time
        runtime_precision = str(first.get_property("INFERENCE_PRECISION_HINT")).replace("<Type: '", "")
        precision = _short(runtime_precision)
        if self.precision == "int8":  # int8 where quantized, the device's default precision elsewhere
            precision = f"int8/{precision}"
        return Runner(predict, {"runtime": f"openvino {ov.__version__}", "device": _device(),
                                "precision": precision})

    def compile(self, model, shape: tuple[int, ...], threads: int | None = None):
        """The IR compiled for one static input shape, with this target's precision settings."""
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        m = model.clone()
        m.reshape({m.input(0).get_any_name(): ov.PartialShape(list(shape))})
        return _core().compile_model(m, _device(), config)

    def inspect(self, art_dir: Path) -> dict[str, Any]:
        """The runtime graph OpenVINO compiled here (batch 1): each layer's precision and kernel."""
        model = _core().read_model(str(art_dir / self.model_file))
        return {"target": self.name, "runtime": {"device": _device(),
                                                 **runtime_map(self.compile(model, _batch1(model)))}}


def _device() -> str:
    return os.environ.get("EDGEVIT_OV_DEVICE", "CPU")


def _batch1(model) -> tuple[int, ...]:
    return (1, *[d.get_length() for d in list(model.input(0).get_partial_shape())[1:]])


OV_GEMMS = ("FullyConnected", "MatMul", "Convolution")
OV_MOVES = ("Const", "Input", "Output", "Reshape", "Transpose", "Reorder", "Split", "Concatenation", "Gather",
            "ShapeOf", "Broadcast")


def runtime_map(compiled) -> dict[str, Any]:
    """What OpenVINO's CPU plugin runs: each executed layer's runtime precision and kernel, from the
    compiled model's runtime graph (the kernel names show the ISA used: ``jit_avx2_I8``, ``brgemm_avx512_amx``)."""
    ops = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = str(rt["layerType"].astype(str))
        if kind in OV_MOVES:
            continue
        ops.append({"name": str(rt["originalLayersNames"].astype(str)), "op": kind,
                    "precision": _short(str(rt["runtimePrecision"].astype(str))),
                    "kernel": str(rt["primitiveType"].astype(str))})
    gemms = [o for o in ops if o["op"] in OV_GEMMS]
    int8 = [o for o in gemms if o["precision"] in ("i8", "u8")]
    floats = Counter(o["precision"] for o in ops if o["op"] not in OV_GEMMS and o["op"] != "FakeQuantize")
    summary = {"int8_gemms": len(int8), "gemms": len(gemms),
               "float_gemms": [o["name"] for o in gemms if o["precision"] not in ("i8", "u8")],
               "compute_ops_by_precision": dict(floats), "gemm_kernels": dict(Counter(o["kernel"] for o in gemms)),
               "label": (f"int8 GEMMs + {'/'.join(floats)}" if int8 else "/".join(floats)) or "?"}
    warnings = []
    if int8 and not any(isa in o["kernel"].lower() for o in int8 for isa in ("vnni", "amx")):
        warnings.append("the int8 GEMM kernels use no VNNI/AMX instructions on this CPU "
                        f"({', '.join(sorted({o['kernel'] for o in int8}))}): int8 gains little over fp32 here")
    return {"ops": ops, "summary": summary, "warnings": warnings}


def _short(precision: str) -> str:
    p = precision.strip("'>").lower()
    return {"float32": "fp32", "f32": "fp32", "bfloat16": "bf16", "bf16": "bf16",
            "float16": "fp16", "f16": "fp16"}.get(p, p)


@dataclass
class OpenVinoInt8Options(QuantConfig):
    smooth_quant: float | None = option(None, "openvino-int8 SmoothQuant alpha on MatMuls (default NNCF's 0.95; "
                                       "-1 turns it off)")


class OpenVinoInt8Target(Int8Target, OpenVinoTarget):
    """NNCF post-training int8 for OpenVINO (``ModelType.TRANSFORMER``, symmetric, SmoothQuant)."""

    form = "nncf"
    requires = ("openvino", "nncf")
    records = ("openvino", "nncf")
    Options = OpenVinoInt8Options

    def convert_qat(self, qat_onnx: Path, dst: Path) -> dict[str, Any]:
        import openvino as ov

        ov.save_model(ov.convert_model(str(qat_onnx)), str(dst), compress_to_fp16=False)
        return {**QAT_FACTS, "form": "qat-qdq (converted by OpenVINO)"}


register(
    OpenVinoTarget("openvino", "fp32", "OpenVINO IR, fp32 weights, inference pinned to f32", family="openvino"),
    OpenVinoTarget("openvino-fp16", "fp16", "OpenVINO IR, fp16 weights, the device's default inference precision "
                   "(bf16 on AVX512-BF16/AMX CPUs)"),
    OpenVinoInt8Target("openvino-int8", "int8", "OpenVINO IR quantized by NNCF (transformer preset, SmoothQuant, "
                       "LayerNorm/Softmax/head float)", float_twin="openvino"),
)
