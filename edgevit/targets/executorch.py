"""ExecuTorch programs for phones and ARM boards: ``executorch`` (fp32) and ``executorch-int8`` (static int8),
both delegated to XNNPACK, ExecuTorch's CPU backend.

Exported from the PyTorch model (a token-pruned one too) through ``torch.export``, with batch 1 (static: a
phone classifies one image per call; the runner loops over a batch) into one ``model.pte``. Before export,
timm's fused attention is turned off on a copy of the model (``fused_attn=False``): the decomposition of
``scaled_dot_product_attention`` leaves ops XNNPACK does not take, and the plain form runs ~1.5x faster.

* ``executorch``: fp32 weights and compute, lowered with ``XnnpackPartitioner``.
* ``executorch-int8``: PT2E static int8 (``XNNPACKQuantizer``, symmetric, weights per output channel,
  activations per tensor), calibrated on the run's calibration images, then lowered the same way.

LayerNorm is never delegated by ExecuTorch 1.5 (it runs on the portable CPU kernels between the XNNPACK
subgraphs); the manifest and ``edgevit inspect`` list what was and was not delegated. The ``.pte`` runs here
through ExecuTorch's Python runtime, so the output check, validation and benchmarks run as for any target.

Needs the ``mobile`` extra (``pip install -e '.[mobile]'``); importing edgevit never imports ExecuTorch.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ExportError
from ..quant.config import CalibOptions, QuantizationError
from .base import ExportContext, Runner, Target, register
from .int8 import CALIB_HELP, INT8_SECTION, int8_row
from .tensorrt import DEVICE_SECTION

PTE = "model.pte"
MIN_CALIB = 8  # fewer images give int8 ranges from noise
NOT_OPS = ("getitem",)  # tuple unpacking, counted by get_delegation_info as a node: no computation


def _version() -> str:
    from executorch.version import __version__

    return str(__version__)


def eager_attention_copy(model) -> tuple[Any, int]:
    """A copy of ``model`` with timm's fused attention off (the caller's model is left as it is), and how
    many attention modules were switched."""
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


def quantize(model, example, images: np.ndarray):
    """PT2E static int8 for XNNPACK: symmetric, per-channel weights, calibrated one image at a time
    (the exported batch is 1: another batch size fails torch.export's guards)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(images) < MIN_CALIB:
        raise QuantizationError(f"executorch-int8 calibrates on at least {MIN_CALIB} images, and the calibration "
                                f"set has {len(images)}", f"pass --calib-size {MIN_CALIB} or more (e.g. 300) and "
                                "a --calib/--data source with that many images")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(export_program(model, example).module(), quantizer)
    with torch.no_grad():
        for i in range(len(images)):
            prepared(torch.from_numpy(np.ascontiguousarray(images[i:i + 1], dtype=np.float32)))
    return convert_pt2e(prepared)


def lower(program):
    """Lower an exported program to XNNPACK; (ExecuTorch program manager, delegation facts). A graph that
    does not lower is an ExportError naming the op where ExecuTorch names one."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(edge.exported_program().graph_module)
        return edge.to_executorch(), delegation_facts(info)
    except Exception as e:  # noqa: BLE001 - EXIR raises many kinds (operator and dtype checks, passes)
        raise ExportError(f"ExecuTorch could not lower the model{_op_in(e)} ({type(e).__name__}: "
                          f"{str(e).strip()[:300]})", "export another target (onnx, openvino), or report this "
                          "with the run's run.json") from e


def _op_in(e: Exception) -> str:
    """' at op aten.xxx' where the error message names an ATen/edge op."""
    import re

    m = re.search(r"\b(aten[._:][\w.]+)", str(e))
    return f" at op {m.group(1)}" if m else ""


def delegation_facts(info) -> dict[str, Any]:
    """What XNNPACK took and what runs on ExecuTorch's portable kernels, by op type."""
    ops = {k: v for k, v in info.delegation_by_operator.items() if k not in NOT_OPS}
    left = Counter({k: v.non_delegated for k, v in ops.items() if v.non_delegated})
    return {"backend": "XNNPACK", "subgraphs": info.num_delegated_subgraphs,
            "delegated_ops": sum(v.delegated for v in ops.values()), "non_delegated_ops": sum(left.values()),
            "non_delegated": dict(left.most_common()),
            "delegated": {k: v.delegated for k, v in sorted(ops.items()) if v.delegated}}


def delegation_line(d: dict[str, Any]) -> str:
    left = ", ".join(f"{k.removeprefix('aten_')} {n}" for k, n in d.get("non_delegated", {}).items()) or "none"
    return (f"{d.get('delegated_ops')} ops in {d.get('subgraphs')} XNNPACK subgraphs, "
            f"{d.get('non_delegated_ops')} not delegated: {left}")


@dataclass
class ExecuTorchInt8Options(CalibOptions):
    """The calibration options (their help: CALIB_HELP); ``check`` enforces the minimum set size."""

    def check(self) -> None:
        super().check()
        if self.calib_size < MIN_CALIB:
            raise QuantizationError(f"executorch-int8 calibrates on at least {MIN_CALIB} images, got --calib-size "
                                    f"{self.calib_size}", "use e.g. --calib-size 300")


class ExecuTorchTarget(Target):
    backend = "executorch"
    label, colour = "ExecuTorch", "#8c564b"
    isa_sensitive = True  # XNNPACK's int8 GEMMs follow the CPU's instruction sets (VNNI; ARM dot product)
    requires = ("executorch",)
    extra = "mobile"  # not installed by default: the errors name it; the quickstart leaves these targets out
    records = ("executorch", "torchao")
    model_file = PTE

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        import torch

        if ctx.torch_model is None or ctx.input_size is None:
            raise ExportError(f"target {self.name!r} exports the PyTorch model, and none was passed",
                              "export through edgevit.api.export (or pass ExportContext.torch_model)")
        self.check_available()
        model, switched = eager_attention_copy(ctx.torch_model)
        example = torch.zeros(1, *ctx.input_size)
        facts: dict[str, Any] = {"executorch": _version(), "converter": "torch.export + to_edge_transform_and_lower "
                                 "(XnnpackPartitioner)", "batch": "1 (static)",
                                 "attention": f"timm fused_attn=False on {switched} attention modules"}
        if self.int8:
            if ctx.calib is None:
                raise QuantizationError("executorch-int8 needs calibration images, and none were drawn",
                                        "pass --calib DIR or --data")
            ctx.progress(f"{self.name}: calibrating on {len(ctx.calib.images)} images")
            model = quantize(model, example, ctx.calib.images)
            facts.update(form="pt2e-xnnpack", weights="int8 symmetric per-channel",
                         activations="int8 symmetric per-tensor (static)", calibrator="minmax",
                         calibration={"key": ctx.calib.key, "cached": ctx.calib.cached, **ctx.calib.meta})
        program, facts["delegation"] = lower(export_program(model, example, "the quantized model" if self.int8
                                                            else "the model"))
        with open(out_dir / PTE, "wb") as f:
            program.write_to_file(f)
        facts["pte_bytes"] = (out_dir / PTE).stat().st_size
        return facts

    def needs_calibration(self, options: Any) -> bool:
        return self.int8

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        import torch

        self.check_available()
        path = art_dir / PTE
        if not path.is_file():
            raise ArtifactError(f"artifact {art_dir} has no {PTE}", "re-run the export that made it")
        from executorch.runtime import Runtime

        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))  # XNNPACK's threadpool is process-wide
        method = Runtime.get().load_program(path).load_method("forward")

        def predict(x: np.ndarray) -> np.ndarray:  # the program takes one image per call
            return np.concatenate([method.execute([torch.from_numpy(x[i:i + 1])])[0].numpy().astype(np.float32)
                                   for i in range(len(x))])

        return Runner(predict, {"runtime": f"executorch {_version()} (XNNPACK delegate, batch 1)",
                                "precision": "int8/fp32" if self.int8 else "fp32"})

    def inspect(self, art_dir: Path) -> dict[str, Any]:
        """What XNNPACK took at export, by op type (recorded in the manifest: a .pte's delegate blobs are
        opaque to ExecuTorch's Python API)."""
        from .base import read_manifest

        _, mf = read_manifest(art_dir)
        d = mf.get("export", {}).get("delegation")
        if not d:
            raise ArtifactError(f"{art_dir}: its manifest records no delegation report", "re-export it")
        summary = {"backend": d["backend"], "delegated subgraphs": d["subgraphs"], "delegated ops":
                   d["delegated_ops"], "non-delegated ops": d["non_delegated_ops"], "not delegated":
                   d["non_delegated"], "delegated by type": d["delegated"]}
        warnings = [f"{k.removeprefix('aten_')} runs on ExecuTorch's portable CPU kernels ({n}x), between XNNPACK "
                    "subgraphs" for k, n in d["non_delegated"].items() if "layer_norm" in k]
        ops = [{"op": k, "kind": f"delegated {d['delegated'].get(k, 0)}, not delegated {d['non_delegated'].get(k, 0)}"}
               for k in sorted({*d["delegated"], *d["non_delegated"]})]
        return {"target": self.name, "delegation": {"summary": summary, "warnings": warnings, "ops": ops}}

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        rows = {INT8_SECTION: int8_row(manifest)} if self.int8 else {}
        e = manifest.get("export", {})
        rows[DEVICE_SECTION] = {"target": manifest["target"], "size MB": f"{manifest.get('size_bytes', 0) / 2**20:.1f}",
                                "status": "run and checked here (ExecuTorch Python runtime)",
                                "detail": f"batch 1; {delegation_line(e.get('delegation', {}))}"}
        return rows


class ExecuTorchInt8Target(ExecuTorchTarget):
    Options = ExecuTorchInt8Options
    option_help = CALIB_HELP


register(
    ExecuTorchTarget("executorch", "fp32", "ExecuTorch .pte for phones and ARM boards, fp32, XNNPACK delegate, "
                     "batch 1 (torch.export)", family="executorch"),
    ExecuTorchInt8Target("executorch-int8", "int8", "ExecuTorch .pte, PT2E static int8 (XNNPACKQuantizer, "
                         "per-channel), XNNPACK delegate, batch 1", float_twin="executorch"),
)
