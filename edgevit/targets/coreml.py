"""CoreML packages: ``coreml`` (fp16) and ``coreml-int8`` (int8 weights; W8A8 on macOS).

Converted from the PyTorch model through ``torch.export`` and coremltools' ML Program backend
(``torch.jit.trace`` fails for timm's DeiT on current torch), with float32 input/output, batch 1
(static: Apple devices classify one image per call) and iOS 17 / macOS 14 as the minimum target.

* ``coreml``: fp16 weights and compute (the Neural Engine's precision).
* ``coreml-int8``: weights linearly quantized to int8, symmetric per output channel
  (``constexpr_blockwise_shift_scale``/``constexpr_affine_dequantize`` ops; compute stays fp16).
  With ``--coreml-w8a8`` the activations are int8 too, calibrated by coremltools'
  ``linear_quantize_activations``, which runs the model and so needs macOS.

CoreML runs only on Apple platforms. Elsewhere the package is checked structurally (the spec
loads, input/output names, shapes and types, op counts, weight size, quantized weight ops) and
skipped by validation and benchmarks, which say so; on macOS it is predicted and validated like
any other artifact.
"""
from __future__ import annotations

import logging
import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, TargetError
from ..graph import INPUT, OUTPUT
from ..quant.config import CalibOptions
from .base import ExportContext, Runner, Target, option, register
from .int8 import CALIB_HELP, INT8_SECTION, int8_row
from .tensorrt import DEVICE_SECTION

PACKAGE = "model.mlpackage"
INT8_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")


def _quiet() -> None:
    """coremltools logs a warning per untested torch/scikit-learn version and per missing macOS-only
    proxy at import, and one per int64 constant at conversion: none of them actionable here."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)


def not_on_mac() -> str | None:
    if platform.system() != "Darwin":
        return f"CoreML runs only on macOS/iOS (this is {platform.system()})"
    return None


def refuse_w8a8_off_mac() -> None:
    if why := not_on_mac():
        raise TargetError(f"--coreml-w8a8 calibrates int8 activations by running the model, and {why}",
                          "build W8A8 packages on a Mac, or leave out --coreml-w8a8 for int8 weights")


def convert(model, input_size: list[int], precision: str = "fp16"):
    """PyTorch model -> ML Program (fp16 compute, float32 I/O, batch 1)."""
    _quiet()
    import coremltools as ct
    import torch

    x = torch.zeros(1, *input_size)
    try:
        with torch.no_grad():
            program = torch.export.export(model.eval(), (x,)).run_decompositions({})
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds; name the step
        raise ExportError(f"torch.export failed on the model ({type(e).__name__}: {str(e)[:300]})",
                          "report this with the run's run.json; the ONNX targets are unaffected") from e
    return ct.convert(program, inputs=[ct.TensorType(name=INPUT, shape=tuple(x.shape), dtype=np.float32)],
                      outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)], convert_to="mlprogram",
                      minimum_deployment_target=ct.target.iOS17,
                      compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)


def quantize_weights(mlmodel):
    import coremltools.optimize.coreml as cto

    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                     weight_threshold=2048)
    return cto.linear_quantize_weights(mlmodel, config=cto.OptimizationConfig(global_config=op))


def quantize_activations(mlmodel, images: np.ndarray):
    """W8A8: int8 activations calibrated on ``images`` (runs the model: macOS only)."""
    import coremltools.optimize.coreml as cto

    refuse_w8a8_off_mac()
    config = cto.OptimizationConfig(global_config=cto.experimental.OpActivationLinearQuantizerConfig(
        mode="linear_symmetric"))
    samples = [{INPUT: images[i:i + 1]} for i in range(len(images))]
    return cto.experimental.linear_quantize_activations(mlmodel, config, samples)


def inspect_package(pkg: Path) -> dict[str, Any]:
    """What can be checked without running CoreML: the spec, I/O, op counts, weight storage."""
    _quiet()
    import coremltools as ct

    try:
        spec = ct.utils.load_spec(str(pkg))
    except Exception as e:  # noqa: BLE001 - a broken package raises protobuf/OS errors
        raise ExportError(f"{pkg} does not load as a CoreML package ({e})", "re-export it") from e
    ops: Counter[str] = Counter()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            ops.update(op.type for op in block.operations)

    def io(features):
        return [{"name": f.name, "shape": list(f.type.multiArrayType.shape),
                 "dtype": ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(
                     f.type.multiArrayType.dataType)} for f in features]

    weights = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file() and "weights" in p.parts)
    return {"spec_version": spec.specificationVersion, "inputs": io(spec.description.input),
            "outputs": io(spec.description.output), "ops": dict(ops.most_common()), "op_total": sum(ops.values()),
            "int8_weight_ops": sum(ops[o] for o in INT8_WEIGHT_OPS),
            "int8_activation_ops": ops.get("quantize", 0), "weights_bytes": weights}


@dataclass
class CoreMLInt8Options(CalibOptions):
    coreml_w8a8: bool = option(False, "coreml-int8: int8 activations as well as weights (calibrated on --calib; "
                               "coremltools runs the model for it: macOS only)")


class CoreMLTarget(Target):
    backend = "coreml"
    label, colour, timed_elsewhere = "CoreML", "#e377c2", "CoreML packages are timed on a Mac"
    requires = ("coremltools",)
    records = ("coremltools",)
    model_file = PACKAGE

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        model, size = ctx.torch_model, ctx.input_size
        if model is None or size is None:
            raise ExportError(f"target {self.name!r} converts the PyTorch model, and none was passed",
                              "export through edgevit.api.export (or pass ExportContext.torch_model)")
        mlmodel = convert(model, list(size))
        facts: dict[str, Any] = {"converter": "torch.export + coremltools mlprogram", "minimum_target": "iOS17",
                                 "compute_precision": "fp16", "batch": "1 (static)"}
        if self.precision == "int8":
            w8a8 = bool(ctx.options.coreml_w8a8)
            if w8a8:
                mlmodel = quantize_activations(mlmodel, ctx.calib.images)
            mlmodel = quantize_weights(mlmodel)
            facts.update(weights="int8 symmetric per-channel", activations="int8 (calibrated)" if w8a8 else
                         "fp16 (weight-only int8)", form="coremltools linear_quantize_weights"
                         + (" + linear_quantize_activations" if w8a8 else ""))
        mlmodel.save(str(out_dir / PACKAGE))
        facts["structure"] = self.check_structure(out_dir, list(size))
        return facts

    def needs_calibration(self, options) -> bool:
        return bool(getattr(options, "coreml_w8a8", False))

    def check_options(self, options) -> None:
        super().check_options(options)
        if getattr(options, "coreml_w8a8", False):
            refuse_w8a8_off_mac()

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        rows = {INT8_SECTION: int8_row(manifest)} if self.precision == "int8" else {}
        s, check = manifest.get("export", {}).get("structure", {}), manifest.get("check_vs_pytorch", {})
        ins = ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in s.get("inputs", []))
        outs = ", ".join(f"{o['name']} {o['shape']} {o['dtype']}" for o in s.get("outputs", []))
        status = f"not run here: {check['skipped']}" if "skipped" in check else "run and checked here"
        rows[DEVICE_SECTION] = {"target": manifest["target"], "size MB": f"{manifest.get('size_bytes', 0) / 2**20:.1f}",
                                "status": status, "detail": f"structure checked: {ins} -> {outs}; {s.get('op_total')} "
                                f"ops, {s.get('int8_weight_ops')} int8 weight ops, weights "
                                f"{s.get('weights_bytes', 0) / 2**20:.1f} MB"}
        return rows

    def check_structure(self, art_dir: Path, input_size: list[int]) -> dict[str, Any]:
        s = inspect_package(art_dir / PACKAGE)
        want = [1, *input_size]
        problems = []
        if [i["name"] for i in s["inputs"]] != [INPUT] or s["inputs"][0]["shape"] != want:
            problems.append(f"input {s['inputs']} is not {INPUT} {want}")
        if [o["name"] for o in s["outputs"]] != [OUTPUT]:
            problems.append(f"outputs {s['outputs']} are not [{OUTPUT}]")
        if self.precision == "int8" and not s["int8_weight_ops"]:
            problems.append("no int8 weight ops in an int8 package")
        if problems:
            raise ExportError(f"target {self.name!r}: the package fails its structural check: {'; '.join(problems)}",
                              "report this with the run's run.json")
        return s

    def not_runnable(self) -> str | None:
        return not_on_mac()

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        _quiet()
        import coremltools as ct

        if why := not_on_mac():
            raise TargetError(f"cannot run {art_dir / PACKAGE}: {why}", "validate and bench it on a Mac")
        mlmodel = ct.models.MLModel(str(art_dir / PACKAGE), compute_units=ct.ComputeUnit.ALL)

        def predict(x: np.ndarray) -> np.ndarray:  # the package takes one image per call
            return np.concatenate([np.asarray(mlmodel.predict({INPUT: x[i:i + 1]})[OUTPUT], dtype=np.float32)
                                   for i in range(len(x))])

        return Runner(predict, {"runtime": f"coremltools {ct.__version__} (compute units ALL)",
                                "precision": "int8/fp16" if self.precision == "int8" else "fp16"})

    def files(self, art_dir: Path) -> list[Path]:
        return sorted(p for p in art_dir.iterdir() if p.name != "manifest.json")

    def size_bytes(self, art_dir: Path) -> int:
        return sum(p.stat().st_size for p in (art_dir / PACKAGE).rglob("*") if p.is_file())


class CoreMLInt8Target(CoreMLTarget):
    Options = CoreMLInt8Options
    option_help = CALIB_HELP


register(
    CoreMLTarget("coreml", "fp16", "CoreML ML Program package, fp16 (torch.export + coremltools); runs on "
                 "macOS/iOS, checked structurally elsewhere"),
    CoreMLInt8Target("coreml-int8", "int8", "CoreML package with int8 per-channel weights (--coreml-w8a8: int8 "
                     "activations too, built on macOS)", float_twin="coreml"),
)
