"""The int8 targets: onnx-int8 (ONNX Runtime CPU), openvino-int8 (NNCF), tensorrt-int8 (Q/DQ ONNX -> engine).

Each builds its int8 graph from the float ONNX with :mod:`edgevit.steps.quantize`. The options
the pipeline passes hold the :class:`~edgevit.steps.quantize.QuantConfig`, the calibration images
and, for ``--max-drop``, the labelled control images. With ``max_drop`` set, the most sensitive
layers stay float until the control-set drop is within the bound; the manifest lists them.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..steps import quantize as q
from .base import Target
from .onnx import OnnxTarget, copy_onnx
from .openvino import OpenVinoTarget
from .tensorrt import TensorRtTarget
from .trt_rules import check_tensorrt_rules


class _Int8Mixin:
    """The export flow shared by the int8 targets; subclasses define ``_layers`` and ``_build``."""

    name: str
    model_file: str

    def _layers(self, onnx_fp32: Path, cfg: q.QuantConfig) -> list[str]:
        raise NotImplementedError

    def _build(self, onnx_fp32: Path, dst: Path, calib, cfg: q.QuantConfig, exclude: list[str],
               cache: Path) -> dict[str, Any]:
        raise NotImplementedError

    def export(self, onnx_fp32: Path, out_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
        cfg: q.QuantConfig = options.get("quant") or q.QuantConfig()
        calib = options.get("calib")
        x = calib.images if calib is not None else None
        if x is None and self.needs_calibration_for(cfg):
            raise ExportError(f"target {self.name!r} needs calibration images", "pass --calib DIR or --data")
        say: Callable[[str], None] = options.get("progress") or (lambda s: None)
        made = {"quant_config": cfg.to_dict(),
                "calibration": {"key": calib.key, "cached": calib.cached, **calib.meta}
                if calib and (self.needs_calibration_for(cfg) or options.get("qat_onnx")) else None}
        if options.get("qat_onnx"):
            facts = self._from_qat(Path(options["qat_onnx"]), out_dir / self.model_file, cfg)
            return {**facts, **options.get("qat_facts", {}), **made}
        with tempfile.TemporaryDirectory(prefix="edgevit-int8-") as work:
            work_dir = Path(work)
            cache = work_dir / "ranges.json"
            exclude: list[str] = []
            search: dict[str, Any] | None = None
            if cfg.max_drop is not None:
                search = self._search(onnx_fp32, work_dir, x, cfg, cache, options["control"], say)
                exclude = search["float_layers"]
            facts = {**self._build(onnx_fp32, out_dir / self.model_file, x, cfg, exclude, cache), **made}
        if search is not None:
            facts["max_drop"] = {"bound_pts": cfg.max_drop, "control_drop_pts": search["control_drop_pts"],
                                 "control_images": len(options["control"][1]),
                                 "float_layers": [q.pretty(n) for n in search["float_layers"]],
                                 "tried": {str(k): v for k, v in sorted(search["tried"].items())},
                                 "sensitivity_kl": search["sensitivity"]}
        return facts

    def needs_calibration_for(self, cfg: q.QuantConfig) -> bool:
        return True

    def _from_qat(self, qat_onnx: Path, dst: Path, cfg: q.QuantConfig) -> dict[str, Any]:
        """The QAT model's Q/DQ graph, as this target takes it."""
        return {**copy_onnx(qat_onnx, dst), "form": "qat-qdq", "activations": "int8 symmetric per-tensor (learned)",
                "weights": "int8 symmetric per-channel (learned)", "float_layers": ["head"]}

    def _search(self, onnx_fp32: Path, work: Path, x, cfg: q.QuantConfig, cache: Path,
                control: tuple[np.ndarray, np.ndarray], say) -> dict[str, Any]:
        float_logits = q.batched(OnnxTarget("onnx", "fp32", "").load_file(onnx_fp32), control[0])
        layers = self._layers(onnx_fp32, cfg)
        count = [0]

        def build(exclude: list[str]):
            count[0] += 1
            d = work / f"try{count[0]}"
            d.mkdir()
            self._build(onnx_fp32, d / self.model_file, x, cfg, exclude, cache)
            runner = self.load(d)
            shutil.rmtree(d, ignore_errors=True)  # the runtimes hold the model in memory
            return runner

        say(f"{self.name}: --max-drop {cfg.max_drop}: checking on {len(control[1])} control images")
        return q.fallback(build, layers, control, float_logits, cfg.max_drop, cfg.max_float, progress=say)


class OnnxInt8Target(_Int8Mixin, OnnxTarget):
    """ONNX Runtime int8: dynamic (default, fastest on CPU) or static Q/DQ."""

    def _form(self, cfg: q.QuantConfig) -> str:
        return q.check_form(cfg.form or "dynamic")

    def needs_calibration_for(self, cfg: q.QuantConfig) -> bool:
        return self._form(cfg) != "ort-dynamic"

    def _layers(self, onnx_fp32: Path, cfg: q.QuantConfig) -> list[str]:
        return q.onnx_layers(onnx_fp32, cfg, with_conv=self._form(cfg) != "ort-dynamic")

    def _build(self, onnx_fp32, dst, calib, cfg, exclude, cache) -> dict[str, Any]:
        form = self._form(cfg)
        return q.quantize_onnx(form, onnx_fp32, dst, calib if form != "ort-dynamic" else None, cfg, exclude,
                               range_cache=cache)


class TensorRtInt8Target(_Int8Mixin, TensorRtTarget):
    """Explicit Q/DQ ONNX checked against TensorRT's int8 rules, then the engine where TensorRT runs."""

    def export(self, onnx_fp32: Path, out_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
        return self.finish(out_dir, options, _Int8Mixin.export(self, onnx_fp32, out_dir, options))

    def _layers(self, onnx_fp32: Path, cfg: q.QuantConfig) -> list[str]:
        return q.onnx_layers(onnx_fp32, cfg, with_conv=True)

    def _build(self, onnx_fp32, dst, calib, cfg, exclude, cache) -> dict[str, Any]:
        return self._checked(q.quantize_onnx("trt-qdq", onnx_fp32, dst, calib, cfg, exclude, range_cache=cache),
                             dst, cfg)

    def _from_qat(self, qat_onnx: Path, dst: Path, cfg: q.QuantConfig) -> dict[str, Any]:
        return self._checked(super()._from_qat(qat_onnx, dst, cfg), dst, cfg)

    def _checked(self, facts: dict[str, Any], dst: Path, cfg: q.QuantConfig) -> dict[str, Any]:
        rules = check_tensorrt_rules(dst, allow_norms=cfg.quantize_norms)
        if rules["violations"]:
            raise ExportError(f"target {self.name!r}: the Q/DQ graph breaks {len(rules['violations'])} TensorRT "
                              f"int8 rule(s), e.g. {rules['violations'][0]}", "report this with the run's run.json")
        facts["tensorrt_rules"] = rules
        facts["onnx_precision"] = "int8 Q/DQ, float32 elsewhere (float32 inputs/outputs)"
        return facts


class OpenVinoInt8Target(_Int8Mixin, OpenVinoTarget):
    """NNCF post-training int8 for OpenVINO (``ModelType.TRANSFORMER``, symmetric, SmoothQuant)."""

    requires = ("openvino", "nncf")

    def _layers(self, onnx_fp32: Path, cfg: q.QuantConfig) -> list[str]:
        return q.openvino_layers(onnx_fp32, cfg)

    def _build(self, onnx_fp32, dst, calib, cfg, exclude, cache) -> dict[str, Any]:
        return q.quantize_openvino(onnx_fp32, dst, calib, cfg, exclude)

    def _from_qat(self, qat_onnx: Path, dst: Path, cfg: q.QuantConfig) -> dict[str, Any]:
        import openvino as ov

        ov.save_model(ov.convert_model(str(qat_onnx)), str(dst), compress_to_fp16=False)
        return {"form": "qat-qdq (converted by OpenVINO)", "activations": "int8 symmetric per-tensor (learned)",
                "weights": "int8 symmetric per-channel (learned)", "float_layers": ["head"]}


INT8_TARGETS: list[Target] = [
    OnnxInt8Target("onnx-int8", "int8", "ONNX Runtime int8 (dynamic MatMul/Gemm, int8 per-channel weights: "
                   "fastest on CPU; --form static for calibrated Q/DQ)"),
    OpenVinoInt8Target("openvino-int8", "int8", "OpenVINO IR quantized by NNCF (transformer preset, SmoothQuant, "
                       "LayerNorm/Softmax/head float)"),
    TensorRtInt8Target("tensorrt-int8", "int8", "TensorRT engine from explicit Q/DQ ONNX (symmetric int8, "
                       "per-channel weights, checked against TensorRT's rules); without TensorRT: the ONNX + "
                       "trtexec script, validated with ONNX Runtime"),
]
