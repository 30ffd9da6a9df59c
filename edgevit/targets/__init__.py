"""The one table of export targets. The CLI, validation, benchmarks and tests all read it.

Targets announced but not built yet go in ``PLANNED`` so that asking for one gives a clear answer
instead of "unknown target".
"""
from __future__ import annotations

from .base import MANIFEST, Runner, Target, read_manifest
from .onnx import OnnxTarget, export_onnx
from .int8 import INT8_TARGETS
from .openvino import OpenVinoTarget
from .tensorrt import TensorRtTarget
from .coreml import CoreMLTarget
from ..errors import TargetError

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        OnnxTarget("onnx", "fp32", "ONNX opset 17, dynamic batch, simplified; run by ONNX Runtime"),
        OnnxTarget("onnx-fp16", "fp16", "ONNX with fp16 weights and math (float32 inputs/outputs)"),
        OpenVinoTarget("openvino", "fp32", "OpenVINO IR, fp32 weights, inference pinned to f32"),
        OpenVinoTarget("openvino-fp16", "fp16",
                       "OpenVINO IR, fp16 weights, the device's default inference precision "
                       "(bf16 on AVX512-BF16/AMX CPUs)"),
        TensorRtTarget("tensorrt-fp16", "fp16", "TensorRT engine, fp16 with LayerNorm in fp32 (strongly typed); "
                       "without TensorRT: the ONNX + trtexec script, validated with ONNX Runtime"),
        *INT8_TARGETS,
        CoreMLTarget("coreml", "fp16", "CoreML ML Program package, fp16 (torch.export + coremltools); runs on "
                     "macOS/iOS, checked structurally elsewhere"),
        CoreMLTarget("coreml-int8", "int8", "CoreML package with int8 per-channel weights (--coreml-w8a8: int8 "
                     "activations too, built on macOS)"),
    ]
}

PLANNED: dict[str, str] = {}


def get_target(name: str) -> Target:
    if name in TARGETS:
        return TARGETS[name]
    if name in PLANNED:
        raise TargetError(f"target {name!r} ({PLANNED[name]}) is not built in this version of edgevit",
                          f"use one of: {', '.join(TARGETS)} (see `edgevit targets`)")
    raise TargetError(f"unknown target {name!r}", f"use one of: {', '.join(TARGETS)} (see `edgevit targets`)")


def list_targets() -> list[Target]:
    return list(TARGETS.values())


__all__ = ["TARGETS", "PLANNED", "Target", "Runner", "MANIFEST", "get_target", "list_targets",
           "read_manifest", "export_onnx"]
