"""The one table of export targets. The CLI, validation, benchmarks and tests all read it.

Targets that later stages add (TensorRT engines, CoreML) are listed in ``PLANNED`` so that asking
for one gives a clear answer instead of "unknown target".
"""
from __future__ import annotations

from .base import MANIFEST, Runner, Target, read_manifest
from .onnx import OnnxTarget, export_onnx
from .int8 import INT8_TARGETS
from .openvino import OpenVinoTarget
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
        *INT8_TARGETS,
    ]
}

PLANNED: dict[str, str] = {
    "tensorrt-fp16": "TensorRT engine, fp16 (the device-backend stage)",
    "coreml": "CoreML package, fp16 (the device-backend stage)",
    "coreml-int8": "CoreML package, int8 weights (the device-backend stage)",
}


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
