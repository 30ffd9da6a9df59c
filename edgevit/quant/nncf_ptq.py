"""openvino-int8: NNCF post-training quantization of the OpenVINO model converted from the float
ONNX (``ModelType.TRANSFORMER``: SmoothQuant on MatMuls, LayerNorm/Softmax float, symmetric)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .config import QuantConfig, calibrator_for, pretty


def openvino_layers(onnx_fp32: Path, cfg: QuantConfig) -> list[str]:
    import openvino as ov

    scope = cfg.float_scope()
    return [n for n in _ov_layers(ov.Core().read_model(str(onnx_fp32))) if not (scope.head and scope.is_head(n))]


def _ov_layers(model) -> list[str]:
    return [o.get_friendly_name() for o in model.get_ordered_ops() if o.get_type_name() in ("MatMul", "Convolution")]


def quantize_openvino(onnx_fp32: Path, dst_xml: Path, calib: np.ndarray, cfg: QuantConfig,
                      exclude: list[str], smooth_quant: float | None = None) -> dict[str, Any]:
    """NNCF post-training quantization of the OpenVINO model converted from the float ONNX."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    logging.getLogger("nncf").setLevel(logging.WARNING)  # NNCF's INFO lines drown the pipeline's own
    model = ov.Core().read_model(str(onnx_fp32))
    data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    every = _ov_layers(model)
    scope = cfg.float_scope(exclude)
    layers = [n for n in every if not (scope.head and scope.is_head(n))]
    keep = [n for n in layers if n in scope.exclude]
    ignored = keep + [n for n in every if n not in layers]  # the head, unless asked
    method = calibrator_for("nncf", cfg)
    adv = AdvancedQuantizationParameters()
    if smooth_quant is not None:
        adv.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=smooth_quant)
    if method == "percentile":
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        adv.activations_range_estimator_params = RangeEstimatorParametersSet.MEAN_QUANTILE
    q = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE,
                      subset_size=len(calib), advanced_parameters=adv,
                      ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
    ov.save_model(q, str(dst_xml), compress_to_fp16=False)
    return {"form": "nncf", "layers": len(layers), "float_layers": [pretty(n) for n in keep],
            "calibrator": method, "calib_images": len(calib), "preset": "performance",
            "model_type": "transformer", "smooth_quant": smooth_quant if smooth_quant is not None
            else "nncf default (0.95 on MatMul)", "activations": "int8 symmetric per-tensor",
            "weights": "int8 symmetric per-channel"}
