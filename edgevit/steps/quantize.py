"""int8 post-training quantization: one config, three backend forms, one accuracy-fallback loop.

Forms (what each int8 target builds from the float ONNX):

* ``ort-dynamic`` (``onnx-int8``): ONNX Runtime's dynamic quantization of MatMul/Gemm, signed int8
  weights per output channel, activations quantized per batch at run time. About 1.6x ORT fp32 on
  DeiT-Ti @224 here; it is the default because it needs no calibration and holds for any input
  distribution.
* ``ort-static`` (``onnx-int8`` with ``form=static``): Q/DQ with calibrated ranges, uint8
  activations, int8 per-channel weights, Q/DQ on layer inputs only. As fast as dynamic within
  noise here (ORT's default placement, with Q/DQ on outputs too, gained only 1.1x).
* ``trt-qdq`` (``tensorrt-int8``): explicit Q/DQ for TensorRT: int8 symmetric everywhere
  (zero-point 0), weights per output channel, activations per tensor, placed on MatMul/Gemm/Conv
  inputs only so that LayerNorm and Softmax stay float and TensorRT fuses the rest.
* ``nncf`` (``openvino-int8``): NNCF post-training quantization of the OpenVINO model with
  ``ModelType.TRANSFORMER`` (SmoothQuant on MatMuls, LayerNorm/Softmax kept float by NNCF).

The classifier head stays float unless ``quantize_head``; ``exclude`` keeps more layers float, which
is how :func:`fallback` meets ``--max-drop``: it measures each layer's error when quantized alone
(KL divergence of the logits from the float model on the control images), then keeps the most
sensitive layers float, fewest first, until the validated top-1 drop is within the bound.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeVitError, ExportError

CALIBRATORS = ("minmax", "percentile", "entropy", "distribution")


class QuantizationError(EdgeVitError):
    """Quantization could not meet what was asked (e.g. ``--max-drop``)."""


@dataclass
class QuantConfig:
    """Everything that changes an int8 artifact; recorded in its manifest."""

    calib: str | None = None  # images to calibrate on (default: --data's training split, else digits)
    calib_size: int = 300
    calib_seed: int = 0
    calib_grey: bool = False
    calibrator: str | None = None  # None: the backend's measured default (see DEFAULT_CALIBRATOR)
    form: str | None = None  # onnx-int8 only: dynamic (default) | static
    quantize_head: bool = False  # the classifier head stays float unless asked
    quantize_norms: bool = False  # ask for Q/DQ on LayerNorm/Softmax inputs too (aggressive)
    per_channel: bool = True
    smooth_quant: float | None = None  # openvino: SmoothQuant alpha; None = NNCF's default, -1 = off
    max_drop: float | None = None  # top-1 points on the control images; None = plain PTQ
    max_float: int | None = None  # at most this many layers kept float (default: half of them)
    control_size: int = 500
    exclude: list[str] = field(default_factory=list)  # layers kept float by the user
    qat_epochs: int = 0  # > 0: quantization-aware fine-tuning (NNCF) instead of post-training quantization
    qat_lr: float = 1e-5
    qat_batch_size: int = 64
    qat_distill: bool = True  # QAT learns from the float model's logits as well as the labels
    coreml_w8a8: bool = False  # coreml-int8 with int8 activations too (calibration runs the model: macOS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Option errors before any work (and before a run directory exists)."""
        if self.calibrator is not None and self.calibrator not in CALIBRATORS:
            raise QuantizationError(f"unknown calibrator {self.calibrator!r}", f"use one of: {', '.join(CALIBRATORS)}")
        if self.form is not None:
            check_form(self.form)
        if self.calib_size < 1:
            raise QuantizationError(f"--calib-size must be at least 1, got {self.calib_size}",
                                    "use e.g. --calib-size 300")
        if self.qat_epochs < 0 or (self.max_float is not None and self.max_float < 0):
            raise QuantizationError("--qat-epochs and --max-float cannot be negative", "pass 0 or more")
        if self.qat_epochs and self.max_drop is not None:
            raise QuantizationError("--max-drop and --qat-epochs are two ways to recover accuracy; use one",
                                    "drop --max-drop (QAT fine-tunes every layer) or set --qat-epochs 0")


DEFAULT_CALIBRATOR = {"ort-static": "percentile", "trt-qdq": "percentile", "nncf": "minmax"}


def calibrator_for(form: str, cfg: QuantConfig) -> str | None:
    if form in ("ort-dynamic",):
        return None
    name = cfg.calibrator or DEFAULT_CALIBRATOR[form]
    if name not in CALIBRATORS:
        raise QuantizationError(f"unknown calibrator {name!r}", f"use one of: {', '.join(CALIBRATORS)}")
    if form == "nncf" and name not in ("minmax", "percentile"):
        raise QuantizationError(f"calibrator {name!r} is not offered for openvino-int8",
                                "use --calibrator minmax (NNCF's default) or percentile")
    return name


# -- which layers can be int8 ------------------------------------------------------------
def onnx_layers(onnx_path: Path, cfg: QuantConfig, with_conv: bool = True) -> list[str]:
    """Names of the nodes an ORT form quantizes, in graph order (head excluded unless asked)."""
    import onnx

    ops = {"MatMul", "Gemm", *({"Conv"} if with_conv else set())}
    nodes = [n for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if n.op_type in ops]
    return [n.name for n in nodes if cfg.quantize_head or not _is_head(n.name)]


def _is_head(name: str) -> bool:
    return name.strip("/").split("/")[0] in ("head", "head_dist", "fc", "classifier")


def pretty(layer: str) -> str:
    """'/blocks/blocks.3/attn/qkv/MatMul' -> 'blocks.3/attn/qkv/MatMul'."""
    parts = [p for p in layer.split("/") if p and p != "WithoutBiases"]
    if len(parts) > 1 and parts[0] == "blocks":
        parts = parts[1:]
    return "/".join(parts)


# -- ONNX Runtime forms ----------------------------------------------------------------------
class _Reader:
    """onnxruntime CalibrationDataReader over a preprocessed array, in batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 16):
        # equal batches: ORT's histogram calibrators stack them
        batch = max(b for b in range(1, batch + 1) if len(x) % b == 0)
        self.x, self.name, self.batch, self.i = x, input_name, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = self.x[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: b}

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.x)

    def set_range(self, start_index: int, end_index: int):
        self.i = start_index


def quantize_onnx(form: str, onnx_fp32: Path, dst: Path, calib: np.ndarray | None, cfg: QuantConfig,
                  exclude: list[str], range_cache: Path | None = None) -> dict[str, Any]:
    """Write the int8 ONNX of ``form`` to ``dst``; ``range_cache`` reuses calibrated ranges."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from ..targets.onnx import external_data_facts, has_external_data

    layers = onnx_layers(onnx_fp32, cfg, with_conv=form != "ort-dynamic")
    large = has_external_data(onnx_fp32)  # then the int8 model keeps its tensors in <dst>.data too
    keep = [n for n in layers if n in set(exclude) | set(cfg.exclude)]
    quantize = [n for n in layers if n not in keep]
    facts: dict[str, Any] = {"form": form, "layers": len(layers), "float_layers": [pretty(n) for n in keep]}
    if not quantize:
        raise QuantizationError("no layer is left to quantize", "keep fewer layers float (--exclude/--max-float)")
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # ORT's "consider pre-processing" warnings
    try:
        if form == "ort-dynamic":
            quantize_dynamic(onnx_fp32, dst, weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                             nodes_to_quantize=quantize, op_types_to_quantize=["MatMul", "Gemm"],
                             extra_options={"MatMulConstBOnly": False}, use_external_data_format=large)
            return {**facts, **external_data_facts(dst), "activations": "dynamic per batch (uint8)",
                    "weights": "int8 per-channel" if cfg.per_channel else "int8 per-tensor", "calibrator": None}
        method = calibrator_for(form, cfg)
        trt = form == "trt-qdq"
        ops = ["MatMul", "Gemm", "Conv"] + (["LayerNormalization", "Softmax"] if cfg.quantize_norms else [])
        extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "DedicatedQDQPair": False,
                 "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Gemm": 0}, "CalibPercentile": 99.999,
                 "CalibMaxIntermediateOutputs": 64,
                 # Q/DQ on inputs only: an output Q/DQ would feed Softmax/LayerNorm/Add in int8
                 "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"],
                 "QuantizeBias": not trt}  # TensorRT takes float biases (it has no int32 DQ)
        if cfg.quantize_norms:
            quantize += [n for n in _norm_nodes(onnx_fp32) if n not in keep]
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print their progress
            quantize_static(onnx_fp32, dst, _Reader(calib, _input_name(onnx_fp32)) if calib is not None else None,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=cfg.per_channel,
                            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=quantize,
                            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                              "percentile": CalibrationMethod.Percentile,
                                              "distribution": CalibrationMethod.Distribution}[method],
                            extra_options=extra, calibration_cache_path=range_cache,
                            use_external_data_format=large)
    finally:
        root.level = level
    return {**facts, **external_data_facts(dst), "calibrator": method, "calib_images": None if calib is None else len(calib),
            "activations": "int8 symmetric per-tensor" if trt else "uint8 asymmetric per-tensor",
            "weights": "int8 symmetric per-channel" if cfg.per_channel else "int8 symmetric per-tensor"}


def _input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name


def _norm_nodes(onnx_path: Path) -> list[str]:
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in g.node if n.op_type in ("LayerNormalization", "Softmax")]


# -- OpenVINO through NNCF ---------------------------------------------------------------------
def openvino_layers(onnx_fp32: Path, cfg: QuantConfig) -> list[str]:
    import openvino as ov

    return [n for n in _ov_layers(ov.Core().read_model(str(onnx_fp32))) if cfg.quantize_head or not _is_head(n)]


def _ov_layers(model) -> list[str]:
    return [o.get_friendly_name() for o in model.get_ordered_ops() if o.get_type_name() in ("MatMul", "Convolution")]


def quantize_openvino(onnx_fp32: Path, dst_xml: Path, calib: np.ndarray, cfg: QuantConfig,
                      exclude: list[str]) -> dict[str, Any]:
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
    layers = [n for n in every if cfg.quantize_head or not _is_head(n)]
    keep = [n for n in layers if n in set(exclude) | set(cfg.exclude)]
    ignored = keep + [n for n in every if n not in layers]  # the head, unless asked
    method = calibrator_for("nncf", cfg)
    adv = AdvancedQuantizationParameters()
    if cfg.smooth_quant is not None:
        adv.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant)
    if method == "percentile":
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        adv.activations_range_estimator_params = RangeEstimatorParametersSet.MEAN_QUANTILE
    q = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE,
                      subset_size=len(calib), advanced_parameters=adv,
                      ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
    ov.save_model(q, str(dst_xml), compress_to_fp16=False)
    return {"form": "nncf", "layers": len(layers), "float_layers": [pretty(n) for n in keep],
            "calibrator": method, "calib_images": len(calib), "preset": "performance",
            "model_type": "transformer", "smooth_quant": cfg.smooth_quant if cfg.smooth_quant is not None
            else "nncf default (0.95 on MatMul)", "activations": "int8 symmetric per-tensor",
            "weights": "int8 symmetric per-channel"}


# -- sensitivity and --max-drop ------------------------------------------------------------
Build = Callable[[list[str]], Callable[[np.ndarray], np.ndarray]]  # exclude -> predict


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean() * 100)


def _kl(ref: np.ndarray, got: np.ndarray) -> float:
    def logsoftmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lp, lq = logsoftmax(ref.astype(np.float64)), logsoftmax(got.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def batched(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([predict(x[i:i + batch]) for i in range(0, len(x), batch)])


def sensitivity(build: Build, layers: list[str], x: np.ndarray, ref: np.ndarray,
                progress: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """KL divergence of the logits from the float model with each layer quantized alone."""
    out: dict[str, float] = {}
    for i, layer in enumerate(layers):
        others = [n for n in layers if n != layer]
        out[layer] = _kl(ref, batched(build(others), x))
        progress(f"sensitivity {i + 1}/{len(layers)}: {pretty(layer)} KL {out[layer]:.2e}")
    return out


def fallback(build: Build, layers: list[str], control: tuple[np.ndarray, np.ndarray], float_logits: np.ndarray,
             max_drop: float, max_float: int | None = None, rank_images: int = 128,
             progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Keep the fewest most-sensitive layers float so that the control top-1 drop is <= ``max_drop``.

    Tries 0, 1, 2, 4, ... float layers, then bisects between the last miss and the first hit.
    Raises :class:`QuantizationError` with what was reached when ``max_float`` layers do not do it.
    """
    x, y = control
    ref_top1 = top1(float_logits, y)
    limit = max(1, len(layers) // 2) if max_float is None else min(max_float, len(layers))
    tried: dict[int, float] = {}

    def drop_with(k: int, order: list[str]) -> float:
        if k not in tried:
            tried[k] = ref_top1 - top1(batched(build(order[:k]), x), y)
            progress(f"{k} layer(s) float: control top-1 drop {tried[k]:.2f} pts (bound {max_drop})")
        return tried[k]

    if drop_with(0, []) <= max_drop:
        return {"float_layers": [], "control_drop_pts": tried[0], "tried": tried, "sensitivity": {}}
    sens = sensitivity(build, layers, x[:rank_images], float_logits[:rank_images], progress)
    order = sorted(layers, key=lambda n: -sens[n])
    lo, k = 0, 1
    while k < limit and drop_with(k, order) > max_drop:
        lo, k = k, min(2 * k, limit)
    if drop_with(k, order) > max_drop:
        best = min(tried, key=lambda j: tried[j])
        raise QuantizationError(
            f"--max-drop {max_drop} was not met: the best control-set drop reached was {tried[best]:.2f} pts, "
            f"with {best} of {len(layers)} layers float (at most {limit} allowed)",
            f"raise --max-drop to {tried[best]:.2f}, allow more float layers (--max-float {len(layers)}), "
            "or fine-tune with QAT (`edgevit quantize --qat-epochs N`)")
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if drop_with(mid, order) <= max_drop else (mid, hi)
    return {"float_layers": order[:hi], "control_drop_pts": tried[hi], "tried": tried,
            "sensitivity": {pretty(n): sens[n] for n in order}}


def check_form(form: str) -> str:
    forms = {"dynamic": "ort-dynamic", "static": "ort-static"}
    if form not in forms:
        raise ExportError(f"unknown onnx-int8 form {form!r}", "use --form dynamic (fastest on CPU) or static")
    return forms[form]
