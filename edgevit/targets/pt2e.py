"""What the targets built from ``torch.export`` share (ExecuTorch, LiteRT): a copy of the model with timm's
fused attention off, a static batch-1 export with a clear error, and PT2E static int8 calibration.

PT2E (``torchao.quantization.pt2e``) quantizes the exported graph with a backend's quantizer (XNNPACK's for
ExecuTorch, LiteRT's for LiteRT): ``prepare_pt2e`` inserts observers, the calibration images run through it
one at a time (the export is batch 1: another batch size fails torch.export's guards), ``convert_pt2e``
turns the observed ranges into quantize/dequantize pairs the converter folds into int8 kernels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ArtifactError, ExportError
from ..quant.config import CalibOptions, QuantizationError
from .base import ExportContext, Target
from .int8 import INT8_SECTION, int8_row
from .tensorrt import DEVICE_SECTION

MIN_CALIB = 8  # fewer images give int8 ranges from noise
PT2E_INT8 = "the PT2E int8 targets (executorch-int8, litert-int8)"


def eager_attention_copy(model) -> tuple[Any, int]:
    """A copy of ``model`` with timm's fused attention off (the caller's model is left as it is), and how
    many attention modules were switched: the decomposition of ``scaled_dot_product_attention`` leaves
    ops the mobile delegates do not take, and the plain form runs faster on them."""
    model = copy.deepcopy(model).eval()
    switched = 0
    for m in model.modules():
        if getattr(m, "fused_attn", None) is True:
            m.fused_attn = False
            switched += 1
    return model, switched


def export_program(model, example, what: str = "the model"):
    """``torch.export`` at batch 1 (static); a failure is an ExportError naming the step."""
    import torch

    try:
        with torch.no_grad():
            return torch.export.export(model, (example,))
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds; name the step
        raise ExportError(f"torch.export failed on {what} ({type(e).__name__}: {str(e)[:300]})",
                          "report this with the run's run.json; the ONNX targets are unaffected") from e


def check_calib(target: str, count: int) -> None:
    if count < MIN_CALIB:
        raise QuantizationError(f"{target} calibrates on at least {MIN_CALIB} images, and the calibration "
                                f"set has {count}", f"pass --calib-size {MIN_CALIB} or more (e.g. 300) and "
                                "a --calib/--data source with that many images")


def calibrate(model, example, images: np.ndarray, quantizer, target: str, *, fold_quantize: bool = True):
    """``model`` exported at batch 1, observed by ``quantizer`` on ``images`` one at a time, converted
    (a graph of quantize/dequantize pairs around the quantized ops)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    check_calib(target, len(images))
    prepared = prepare_pt2e(export_program(model, example).module(), quantizer)
    with torch.no_grad():
        for i in range(len(images)):
            prepared(torch.from_numpy(np.ascontiguousarray(images[i:i + 1], dtype=np.float32)))
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def op_in(e: Exception) -> str:
    """' at op aten.xxx' where the error message names an ATen/edge op."""
    import re

    m = re.search(r"\b(aten[._:][\w.]+)", str(e))
    return f" at op {m.group(1)}" if m else ""


@dataclass
class Pt2eInt8Options(CalibOptions):
    """The calibration options (their help: CALIB_HELP); ``check`` enforces the minimum set size."""

    def check(self) -> None:
        super().check()
        if self.calib_size < MIN_CALIB:
            raise QuantizationError(f"{PT2E_INT8} calibrate on at least {MIN_CALIB} images, got --calib-size "
                                    f"{self.calib_size}", "use e.g. --calib-size 300")


class Pt2eTarget(Target):
    """What a target exported from the PyTorch model through ``torch.export`` shares (ExecuTorch, LiteRT):
    the model it starts from, the int8 facts and the report rows. A subclass sets its backend's facts,
    ``runs_on`` (who runs the file here) and ``describe`` (its delegation report in one line)."""

    extra = "mobile"  # not installed by default: the errors name it; the quickstart leaves these targets out
    runs_on = ""
    describe: Callable[[dict[str, Any]], str] = staticmethod(lambda d: "")

    def start(self, ctx: ExportContext) -> tuple[Any, Any, dict[str, Any]]:
        """(a copy of the model with fused attention off, a batch-1 example input, facts for the manifest)."""
        import torch

        if ctx.torch_model is None or ctx.input_size is None:
            raise ExportError(f"target {self.name!r} exports the PyTorch model, and none was passed",
                              "export through edgevit.api.export (or pass ExportContext.torch_model)")
        self.check_available()
        model, switched = eager_attention_copy(ctx.torch_model)
        return model, torch.zeros(1, *ctx.input_size), {
            "batch": "1 (static)", "attention": f"timm fused_attn=False on {switched} attention modules"}

    def calibration(self, ctx: ExportContext, facts: dict[str, Any], form: str) -> np.ndarray:
        """The int8 export's calibration images (refused without any); ``facts`` gets the int8 facts."""
        if ctx.calib is None:
            raise QuantizationError(f"{self.name} needs calibration images, and none were drawn",
                                    "pass --calib DIR or --data")
        ctx.progress(f"{self.name}: calibrating on {len(ctx.calib.images)} images")
        facts.update(form=form, weights="int8 symmetric per-channel", activations="int8 symmetric per-tensor "
                     "(static)", calibrator="minmax",
                     calibration={"key": ctx.calib.key, "cached": ctx.calib.cached, **ctx.calib.meta})
        return ctx.calib.images

    def needs_calibration(self, options: Any) -> bool:
        return self.int8

    def model_path(self, art_dir: Path) -> Path:
        """The artifact's model file, before loading it (the runtime installed, the file there)."""
        self.check_available()
        path = art_dir / self.model_file
        if not path.is_file():
            raise ArtifactError(f"artifact {art_dir} has no {self.model_file}", "re-run the export that made it")
        return path

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        rows = {INT8_SECTION: int8_row(manifest)} if self.int8 else {}
        e = manifest.get("export", {})
        rows[DEVICE_SECTION] = {"target": manifest["target"], "size MB": f"{manifest.get('size_bytes', 0) / 2**20:.1f}",
                                "status": f"run and checked here ({self.runs_on})",
                                "detail": f"batch 1; {self.describe(e.get('delegation', {}))}"}
        return rows


def one_at_a_time(one: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """A batch predictor from ``one`` (a batch-1 model's call): the images one by one, the logits stacked."""
    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([one(x[i:i + 1]) for i in range(len(x))])

    return predict
