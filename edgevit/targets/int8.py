"""What the int8 targets share: the int8 graph comes from :func:`edgevit.quant.ptq.quantize` (or,
after QAT, from the fine-tuned Q/DQ graph), and the target only converts and loads it.

A backend's int8 target is a class in the backend's file that puts :class:`Int8Target` first
among its bases and names its ``form`` (see ``onnx.py``, ``openvino.py``, ``tensorrt.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..graph import copy_onnx
from ..quant import ptq
from ..quant.config import QuantConfig, pretty
from .base import ExportContext

INT8_SECTION = "int8 artifacts"
QAT_FACTS = {"form": "qat-qdq", "activations": "int8 symmetric per-tensor (learned)",
             "weights": "int8 symmetric per-channel (learned)", "float_layers": ["head"]}
# The help of the int8 options edgevit.quant declares (CalibOptions, QuantConfig), for every target honouring them.
CALIB_HELP = {
    "calib": "images to calibrate on: a folder (class sub-folders or flat), CIFAR folder or 'digits' (default: "
             "the training images of --data)",
    "calib_size": "calibration images, drawn class by class, deterministic",
    "calib_seed": "seed of the class-by-class calibration draw",
    "calib_grey": "accept a calibration set of mostly 1-channel images (models fed grey images as RGB)",
}
QUANT_HELP = {
    **CALIB_HELP,
    "calibrator": "minmax | percentile | entropy | distribution (default: the backend's measured best)",
    "quantize_head": "quantize the classifier head too",
    "quantize_norms": "also put Q/DQ on LayerNorm inputs (aggressive; costs accuracy; Softmax stays float)",
    "per_channel": "int8 weights per output channel (--no-per-channel: one scale per tensor)",
    "max_drop": "keep the most sensitive layers float until the top-1 drop on held-out calibration-source images "
                "is at most this many points",
    "max_float": "at most this many layers kept float by --max-drop (default: half)",
    "control_size": "held-out images of the calibration source that --max-drop measures the drop on",
    "exclude": "keep this layer float (ONNX node name, repeatable)",
    "qat_epochs": "quantization-aware fine-tuning epochs on --data's training images (NNCF; 0: post-training only)",
    "qat_lr": "QAT learning rate, a fraction of the training one",
    "qat_batch_size": "QAT batch size",
    "qat_distill": "QAT also learns from the float model's logits (knowledge distillation)",
}


class Int8Target:
    """Mixin (first base) of an int8 target: ``form`` is the int8 graph it converts."""

    form: str = ""
    Options: type = QuantConfig
    option_help = QUANT_HELP
    model_file: str

    def form_for(self, options: QuantConfig) -> str:
        return self.form

    def needs_calibration(self, options: QuantConfig) -> bool:
        return (ptq.needs_calibration(self.form_for(options)) or options.max_drop is not None
                or options.qat_epochs > 0)

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        opts, dst = ctx.options, out_dir / self.model_file
        if ctx.qat is not None:
            facts = {**self.convert_qat(ctx.qat.onnx, dst), **ctx.qat.facts, "quant_config": opts.to_dict(),
                     "calibration": {"key": ctx.calib.key, "cached": ctx.calib.cached, **ctx.calib.meta}
                     if ctx.calib is not None else None}
        else:
            facts = ptq.quantize(self.form_for(opts), onnx_fp32, dst, opts, ctx.calib, ctx.control,
                                 load=lambda path: self.load(path.parent),
                                 smooth_quant=getattr(opts, "smooth_quant", None), progress=ctx.progress)
        return self.finish(out_dir, ctx, facts)

    def convert_qat(self, qat_onnx: Path, dst: Path) -> dict[str, Any]:
        """The QAT model's Q/DQ graph, as this target takes it (an ONNX copy unless overridden)."""
        return {**copy_onnx(qat_onnx, dst), **QAT_FACTS}

    def finish(self, out_dir: Path, ctx: ExportContext, facts: dict[str, Any]) -> dict[str, Any]:
        return facts

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {INT8_SECTION: int8_row(manifest)}


def int8_row(mf: dict[str, Any]) -> dict[str, str]:
    """How an int8 artifact was made: form, calibration, and the layers kept float (and why)."""
    e = mf.get("export", {})
    cal, md = e.get("calibration") or {}, e.get("max_drop")
    calibration = (f"{cal['size']} images of {cal['source']}" if cal else
                   "none (weight-only)" if str(e.get("activations", "")).startswith("fp16") else "none (dynamic)")
    kept = [pretty(n) for n in e.get("float_layers", [])]
    return {"target": mf["target"], "form": str(e.get("form")), "calibrator": e.get("calibrator") or "—",
            "calibration": calibration,
            "--max-drop": "—" if not md else f"bound {md['bound_pts']} pts: {md['control_drop_pts']:.2f} pts on "
                                            f"{md['control_images']} held-out images",
            "layers kept float": (f"{len(kept)} of {e['layers']}: {', '.join(kept) or 'none'}"
                                  if e.get("layers") is not None else
                                  ", ".join(kept) or "layer count not recorded (weight-only int8)")}

