"""int8 post-training quantization, the one verb every int8 target calls.

``quantize(form, ...)`` writes the int8 graph of one form from the float ONNX, and with
``max_drop`` first searches the layers to keep float (:mod:`edgevit.quant.fallback`). Targets only
convert or load what it writes. Forms:

* ``ort-dynamic``, ``ort-static``, ``trt-qdq``: ONNX Runtime's quantizer (:mod:`edgevit.quant.ort`);
  ``trt-qdq`` then has fp16 outside its int8 GEMMs (:mod:`edgevit.quant.fp16`), so the graph the
  ``--max-drop`` search measures is the one TensorRT compiles.
* ``nncf``: NNCF on the OpenVINO model (:mod:`edgevit.quant.nncf_ptq`).
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from . import fallback as fb
from .config import QuantConfig, pretty

FORMS = ("ort-dynamic", "ort-static", "trt-qdq", "nncf")
Predict = Callable[[np.ndarray], np.ndarray]


def needs_calibration(form: str) -> bool:
    return form != "ort-dynamic"


def layers(form: str, onnx_fp32: Path, cfg: QuantConfig) -> list[str]:
    """The layers ``form`` quantizes (the candidates to keep float)."""
    if form == "nncf":
        from .nncf_ptq import openvino_layers

        return openvino_layers(onnx_fp32, cfg)
    from .ort import onnx_layers

    return onnx_layers(onnx_fp32, cfg, with_conv=form != "ort-dynamic")


def build(form: str, onnx_fp32: Path, dst: Path, calib: np.ndarray | None, cfg: QuantConfig,
          exclude: list[str], cache: Path | None = None, smooth_quant: float | None = None) -> dict[str, Any]:
    """Write the int8 graph of ``form`` to ``dst`` with ``exclude`` kept float; returns its facts."""
    if form == "nncf":
        from .nncf_ptq import quantize_openvino

        return quantize_openvino(onnx_fp32, dst, calib, cfg, exclude, smooth_quant)
    from .ort import quantize_onnx

    x = calib if needs_calibration(form) else None
    if form != "trt-qdq":
        return quantize_onnx(form, onnx_fp32, dst, x, cfg, exclude, range_cache=cache)
    with tempfile.TemporaryDirectory(prefix="edgevit-qdq-") as work:  # TensorRT's: fp16 outside the GEMMs
        return _trt_qdq(onnx_fp32, Path(work) / "qdq32.onnx", dst, x, cfg, exclude, cache)


def _trt_qdq(onnx_fp32: Path, qdq32: Path, dst: Path, x, cfg: QuantConfig, exclude: list[str],
             cache: Path | None) -> dict[str, Any]:
    """The Q/DQ graph, fp16 outside its GEMMs; a layer whose int8 scale is subnormal in fp16 is kept float
    (quantized again without it) rather than stored with a changed scale."""
    import onnx

    from .fp16 import fp16_outside_gemms, fp16_subnormal_layers
    from .ort import quantize_onnx

    facts = quantize_onnx("trt-qdq", onnx_fp32, qdq32, x, cfg, exclude, range_cache=cache)
    tiny = fp16_subnormal_layers(onnx.load(str(qdq32), load_external_data=False))
    if tiny:
        facts = quantize_onnx("trt-qdq", onnx_fp32, qdq32, x, cfg, [*exclude, *tiny], range_cache=cache)
    facts.pop("external_data", None)
    facts["fp16_subnormal_kept_float"] = [pretty(n) for n in tiny]
    return {**facts, **fp16_outside_gemms(qdq32, dst)}


def quantize(form: str, onnx_fp32: Path, dst: Path, cfg: QuantConfig, calib: Any = None,
             control: tuple[np.ndarray, np.ndarray] | None = None, load: Callable[[Path], Predict] | None = None,
             smooth_quant: float | None = None, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The int8 graph of ``form`` at ``dst``, meeting ``cfg.max_drop`` on ``control`` when it is set.

    ``calib`` is a :class:`~edgevit.quant.calibration.CalibSet`; ``load(path)`` loads a built graph
    as a predict function (the search runs each candidate)."""
    if form not in FORMS:
        raise ExportError(f"unknown int8 form {form!r}", f"use one of {', '.join(FORMS)}")
    x = calib.images if calib is not None else None
    if x is None and needs_calibration(form):
        raise ExportError(f"the {form} int8 graph needs calibration images", "pass --calib DIR or --data")
    made = {"quant_config": cfg.to_dict(),
            "calibration": {"key": calib.key, "cached": calib.cached, **calib.meta}
            if calib is not None and needs_calibration(form) else None}
    with tempfile.TemporaryDirectory(prefix="edgevit-int8-") as work:
        cache = Path(work) / "ranges.json"
        search = None
        if cfg.max_drop is not None:
            if control is None or load is None:
                raise ExportError("--max-drop needs control images and a loader", "pass --calib DIR or --data")
            search = _search(form, onnx_fp32, Path(work), x, cfg, cache, control, load, smooth_quant, progress)
        exclude = search["float_layers"] if search else []
        facts = {**build(form, onnx_fp32, dst, x, cfg, exclude, cache, smooth_quant), **made}
    if search is not None:
        facts["max_drop"] = {"bound_pts": cfg.max_drop, "control_drop_pts": search["control_drop_pts"],
                             "control_images": len(control[1]),
                             "float_layers": [pretty(n) for n in search["float_layers"]],
                             "tried": {str(k): v for k, v in sorted(search["tried"].items())},
                             "sensitivity_kl": search["sensitivity"]}
    return facts


def _search(form: str, onnx_fp32: Path, work: Path, x, cfg: QuantConfig, cache: Path,
            control: tuple[np.ndarray, np.ndarray], load: Callable[[Path], Predict], smooth_quant,
            progress: Callable[[str], None]) -> dict[str, Any]:
    float_logits = fb.batched(float_predict(onnx_fp32), control[0])
    count = [0]
    name = "model.xml" if form == "nncf" else "model.onnx"

    def build_one(exclude: list[str]) -> Predict:
        count[0] += 1
        d = work / f"try{count[0]}"
        d.mkdir()
        build(form, onnx_fp32, d / name, x, cfg, exclude, cache, smooth_quant)
        predict = load(d / name)
        shutil.rmtree(d, ignore_errors=True)  # the runtimes hold the model in memory
        return predict

    progress(f"{form}: --max-drop {cfg.max_drop}: checking on {len(control[1])} control images")
    return fb.fallback(build_one, layers(form, onnx_fp32, cfg), control, float_logits, cfg.max_drop, cfg.max_float,
                       progress=progress)


def float_predict(onnx_fp32: Path) -> Predict:
    """The float ONNX run by ONNX Runtime on the CPU: the reference the search compares with."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_fp32), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
