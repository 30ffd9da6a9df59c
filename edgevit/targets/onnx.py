"""ONNX: the float graph every backend starts from, and the ONNX Runtime targets."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ExportError
from .base import Runner, Target

OPSET = 17  # the first opset with a native LayerNormalization
INPUT, OUTPUT = "input", "logits"


def export_onnx(model: torch.nn.Module, img_size: int, path: Path, opset: int = OPSET) -> dict[str, Any]:
    """Float32 ONNX with a dynamic batch axis, simplified with onnxslim. Returns node counts."""
    import onnx

    x = torch.zeros(1, 3, img_size, img_size)
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        try:
            torch.onnx.export(model, (x,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=opset, dynamo=False, do_constant_folding=True,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except TypeError:  # a torch without the TorchScript exporter: use torch.export's
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(model, (x,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=max(opset, 18), dynamo=True,
                              dynamic_shapes={"x": {0: batch}})
    graph = onnx.load(str(raw))
    nodes_before = len(graph.graph.node)
    graph = _simplify(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    raw.unlink(missing_ok=True)
    for extra in raw.parent.glob(raw.name + ".data"):
        extra.unlink()
    return {"opset": opset, "nodes_exported": nodes_before, "nodes": len(graph.graph.node)}


def _simplify(graph):
    try:
        import onnxslim
    except ImportError:
        return graph
    return onnxslim.slim(graph)


class OnnxTarget(Target):
    backend = "onnxruntime"
    requires = ("onnx", "onnxruntime")
    model_file = "model.onnx"

    def export(self, onnx_fp32: Path, out_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
        dst = out_dir / self.model_file
        if self.precision == "fp32":
            shutil.copyfile(onnx_fp32, dst)
            return {}
        if self.precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            # inputs/outputs stay float32 so callers need not cast; LayerNorm/Softmax run in fp16
            # where the provider has kernels (CUDA, ARM); ORT inserts casts elsewhere.
            m16 = convert_float_to_float16(onnx.load(str(onnx_fp32)), keep_io_types=True)
            onnx.save(m16, str(dst))
            return {"keep_io_types": True}
        raise ExportError(f"target {self.name!r}: precision {self.precision} is not built by OnnxTarget")

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        return self.load_file(art_dir / self.model_file, threads)

    def load_file(self, path: Path, threads: int | None = None) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = _providers()
        sess = ort.InferenceSession(str(path), opts, providers=providers)
        name = sess.get_inputs()[0].name

        def predict(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0].astype(np.float32, copy=False)

        return Runner(predict, {"runtime": f"onnxruntime {ort.__version__}",
                                "providers": sess.get_providers(), "precision": self.precision})


def _providers() -> list[str]:
    import onnxruntime as ort

    want = os.environ.get("EDGEVIT_ORT_PROVIDERS")
    if want:
        return want.split(",")
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
