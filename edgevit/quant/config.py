"""The int8 options every int8 target shares.

What stays float is the one :class:`~edgevit.float_scope.FloatScope` (torch-free: the TensorRT runtime
imports this module on a board without PyTorch); :meth:`QuantConfig.float_scope` is the scope these
options ask for, and every int8 form asks it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import EdgeVitError
from ..float_scope import GEMM_OPS, FloatScope

CALIBRATORS = ("minmax", "percentile", "entropy", "distribution")
INT8_OPS = GEMM_OPS  # what the Q/DQ forms quantize (the scope's)
is_head = FloatScope.is_head  # the scope's, for callers that name it here


class QuantizationError(EdgeVitError):
    """Quantization could not meet what was asked (e.g. ``--max-drop``)."""


def pretty(layer: str) -> str:
    """'/blocks/blocks.3/attn/qkv/MatMul' -> 'blocks.3/attn/qkv/MatMul'."""
    parts = [p for p in layer.split("/") if p and p != "WithoutBiases"]
    if len(parts) > 1 and parts[0] == "blocks":
        parts = parts[1:]
    return "/".join(parts)


@dataclass
class CalibOptions:
    """Which images calibrate int8 ranges (deterministic, class by class)."""

    calib: str | None = None  # images to calibrate on (default: the training images of --data)
    calib_size: int = 300
    calib_seed: int = 0
    calib_grey: bool = False

    def check(self) -> None:
        if self.calib_size < 1:
            raise QuantizationError(f"--calib-size must be at least 1, got {self.calib_size}",
                                    "use e.g. --calib-size 300")


@dataclass
class QuantConfig(CalibOptions):
    """The options every int8 graph honours: calibration, what stays float, --max-drop and QAT."""

    calibrator: str | None = None  # None: the backend's measured default (see DEFAULT_CALIBRATOR)
    quantize_head: bool = False  # the classifier head stays float unless asked
    quantize_norms: bool = False  # ask for Q/DQ on LayerNorm inputs too (aggressive; Softmax's never)
    per_channel: bool = True
    max_drop: float | None = None  # top-1 points on the control images; None = plain PTQ
    max_float: int | None = None  # at most this many layers kept float (default: half of them)
    control_size: int = 500
    exclude: list[str] = field(default_factory=list)  # layers kept float by the user
    qat_epochs: int = 0  # > 0: quantization-aware fine-tuning (NNCF) instead of post-training quantization
    qat_lr: float = 1e-5
    qat_batch_size: int = 64
    qat_distill: bool = True  # QAT learns from the float model's logits as well as the labels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def float_scope(self, exclude=()) -> FloatScope:
        """What these options keep float, with ``exclude`` (e.g. the ``--max-drop`` search's layers) added."""
        return FloatScope.of(self.quantize_head, self.quantize_norms, [*self.exclude, *exclude])

    def check(self) -> None:
        """Option errors before any work (and before a run directory exists)."""
        super().check()
        if self.calibrator is not None and self.calibrator not in CALIBRATORS:
            raise QuantizationError(f"unknown calibrator {self.calibrator!r}", f"use one of: {', '.join(CALIBRATORS)}")
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


def check_form(form: str) -> str:
    """The onnx-int8 ``form`` option -> the ORT form it builds."""
    forms = {"dynamic": "ort-dynamic", "static": "ort-static"}
    if form not in forms:
        raise QuantizationError(f"unknown onnx-int8 form {form!r}",
                                "use --form dynamic (no calibration) or static (calibrated Q/DQ)")
    return forms[form]
