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

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ExportError, OptionError
from .base import ExportContext, Runner, option, register
from .int8 import CALIB_HELP
from .pt2e import Pt2eInt8Options, Pt2eTarget, calibrate, export_program, one_at_a_time, op_in

PTE = "model.pte"
GEMM_OPS = ("linear", "conv2d")  # what --xnnpack-quantize gemm makes int8
QUANTIZE_CHOICES = ("gemm", "all")
NOT_OPS = ("getitem",)  # tuple unpacking, counted by get_delegation_info as a node: no computation


def _version() -> str:
    from executorch.version import __version__

    return str(__version__)


def quantize(model, example, images: np.ndarray, ops: str = "gemm"):
    """PT2E static int8 for XNNPACK: symmetric, per-channel weights, per-tensor activations, on the
    linear layers and convolutions (``ops="gemm"``) or on every pattern XNNPACKQuantizer knows (``"all"``:
    the residual adds, products and concatenations too)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer()
    if ops == "all":
        quantizer.set_global(config)
    else:
        for op in GEMM_OPS:
            quantizer.set_operator_type(getattr(torch.ops.aten, op).default, config)
    return calibrate(model, example, images, quantizer, "executorch-int8")


def lower(program):
    """Lower an exported program to XNNPACK; (ExecuTorch program manager, delegation facts). A graph that
    does not lower is an ExportError naming the op where ExecuTorch names one."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(edge.exported_program().graph_module)
        lowered = edge.to_executorch()
    except Exception as e:  # noqa: BLE001 - EXIR raises many kinds (operator and dtype checks, passes)
        raise ExportError(f"ExecuTorch could not lower the model{op_in(e)} ({type(e).__name__}: "
                          f"{str(e).strip()[:300]})", "export another target (onnx, openvino, litert), or report "
                          "this with the run's run.json") from e
    if missing := missing_kernels(lowered):
        raise ExportError(f"ExecuTorch's runtime has no kernel for {', '.join(missing)}, which XNNPACK did not take: "
                          "the program would not load", "export another target (onnx, openvino, litert), or "
                          "replace that op in the model")
    return lowered, delegation_facts(info)


def missing_kernels(lowered) -> list[str]:
    """The operators of the program (those outside the XNNPACK blobs) that ExecuTorch's runtime has no
    kernel for: loading its method would fail (``Missing operator``) on this runtime build."""
    from executorch.extension.pybindings import portable_lib

    if not hasattr(portable_lib, "_get_operator_names"):  # another runtime build: loading tells
        return []
    known = set(portable_lib._get_operator_names())
    names = [f"{o.name}.{o.overload}" if o.overload else o.name
             for plan in lowered.executorch_program.execution_plan for o in plan.operators]
    return sorted({n for n in names if n not in known})


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
class ExecuTorchInt8Options(Pt2eInt8Options):
    xnnpack_quantize: str = option("gemm", "which ops XNNPACKQuantizer makes int8: gemm (the linear layers and the "
                                   "patch convolution; residual adds, products and concatenations stay float) or "
                                   "all (its every pattern: on DeiT-Ti @224 several times the logit error, no faster; "
                                   "see benchmarks/mobile_cpu.py)")

    def check(self) -> None:
        super().check()
        if self.xnnpack_quantize not in QUANTIZE_CHOICES:
            raise OptionError(f"--xnnpack-quantize {self.xnnpack_quantize!r} is not one of "
                              f"{', '.join(QUANTIZE_CHOICES)}", "use --xnnpack-quantize gemm (the default) or all")


class ExecuTorchTarget(Pt2eTarget):
    backend = "executorch"
    label, colour = "ExecuTorch", "#8c564b"
    isa_sensitive = True  # XNNPACK's int8 GEMMs follow the CPU's instruction sets (VNNI; ARM dot product)
    requires = ("executorch",)
    records = ("executorch", "torchao")
    model_file = PTE
    runs_on = "ExecuTorch Python runtime"
    describe = staticmethod(delegation_line)

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        model, example, facts = self.start(ctx)
        facts = {"executorch": _version(), "converter": "torch.export + to_edge_transform_and_lower "
                 "(XnnpackPartitioner)", **facts}
        if self.int8:
            images, ops = self.calibration(ctx, facts, "pt2e-xnnpack"), ctx.options.xnnpack_quantize
            model = quantize(model, example, images, ops)
            facts["quantized_ops"] = ("every XNNPACKQuantizer pattern" if ops == "all" else
                                      f"{', '.join(GEMM_OPS)} (residual adds, products, concatenations float)")
        program, facts["delegation"] = lower(export_program(model, example, "the quantized model" if self.int8
                                                            else "the model"))
        with open(out_dir / PTE, "wb") as f:
            program.write_to_file(f)
        facts["pte_bytes"] = (out_dir / PTE).stat().st_size
        return facts

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        import torch

        path = self.model_path(art_dir)
        from executorch.runtime import Runtime

        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))  # XNNPACK's threadpool is process-wide
        method = Runtime.get().load_program(path).load_method("forward")

        def one(x: np.ndarray) -> np.ndarray:  # the program takes one image per call
            return method.execute([torch.from_numpy(x)])[0].numpy().astype(np.float32)

        return Runner(one_at_a_time(one), {"runtime": f"executorch {_version()} (XNNPACK delegate, batch 1)",
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


class ExecuTorchInt8Target(ExecuTorchTarget):
    Options = ExecuTorchInt8Options
    option_help = CALIB_HELP


register(
    ExecuTorchTarget("executorch", "fp32", "ExecuTorch .pte for phones and ARM boards, fp32, XNNPACK delegate, "
                     "batch 1 (torch.export)", family="executorch"),
    ExecuTorchInt8Target("executorch-int8", "int8", "ExecuTorch .pte, PT2E static int8 (XNNPACKQuantizer, "
                         "per-channel), XNNPACK delegate, batch 1", float_twin="executorch"),
)
