"""LiteRT (TensorFlow Lite) models for phones and ARM boards: ``litert`` (fp32) and ``litert-int8`` (static
int8), one ``model.tflite`` each, run by LiteRT's interpreter with its default XNNPACK delegate.

Converted from the PyTorch model (a token-pruned one too) by ``litert-torch`` (``torch.export`` at batch 1,
then LiteRT's converter; no TensorFlow), on a copy with timm's fused attention off (see :mod:`.pt2e`).

* ``litert``: fp32 weights and compute.
* ``litert-int8``: PT2E static int8 with litert-torch's quantizer (symmetric, weights per output channel,
  activations per tensor), calibrated on the run's calibration images. The file's input and output are
  int8: the runner quantizes each image and dequantizes the logits with the parameters the file carries
  (the manifest records them, for the app on the device). LayerNorm's pieces, the attention matmuls,
  Softmax and the residual adds stay float inside it, with quantize/dequantize around them.

The manifest and ``edgevit inspect`` carry LiteRT's op list: each op type, how many of its results are
int8, and how many ops XNNPACK took (read from the delegate's partitions in the interpreter).

Needs the ``mobile`` extra (``pip install -e '.[mobile]'``); importing edgevit never imports LiteRT.
"""
from __future__ import annotations

import contextlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ExportError
from .base import ExportContext, Runner, register
from .int8 import CALIB_HELP
from .pt2e import Pt2eInt8Options, Pt2eTarget, calibrate, one_at_a_time, op_in

TFLITE = "model.tflite"
DELEGATE = "DELEGATE"  # a node of the interpreter's plan that runs one XNNPACK partition
TRAINING_MODE = "converted in training mode"  # litert-torch's warning on every PT2E graph (a torch.fx
# GraphModule cannot be set to eval mode; the converted graph is the inference one): not the user's to fix


def _version() -> str:
    from importlib.metadata import version

    return f"litert-torch {version('litert-torch')}, ai-edge-litert {version('ai-edge-litert')}"


class _DropTrainingMode(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TRAINING_MODE not in record.getMessage()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch's own progress lines off (edgevit reports progress) and its training-mode warning
    dropped, both for the conversion only."""
    from litert_torch import _config

    shown, drop = _config.config.show_progress, _DropTrainingMode()
    _config.config.show_progress = False
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        _config.config.show_progress = shown
        logging.getLogger().removeFilter(drop)


def convert(model, example, quantizer=None):
    """litert-torch's conversion (a quantized PT2E graph with its quantizer); an ExportError naming the op
    where the converter names one."""
    import litert_torch

    kw: dict[str, Any] = {}
    if quantizer is not None:
        from litert_torch.quantize.quant_config import QuantConfig

        kw["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    try:
        with _quiet():
            return litert_torch.convert(model, (example,), **kw)
    except Exception as e:  # noqa: BLE001 - torch.export, MLIR lowering and the converter raise many kinds
        raise ExportError(f"LiteRT could not convert the model{op_in(e)} ({type(e).__name__}: "
                          f"{str(e).strip()[:300]})", "export another target (onnx, openvino, executorch), or "
                          "report this with the run's run.json") from e


def quantize(model, example, images: np.ndarray):
    """PT2E static int8 with litert-torch's quantizer: (the converted graph, the quantizer)."""
    from litert_torch.quantize import pt2e_quantizer

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    return calibrate(model, example, images, quantizer, "litert-int8", fold_quantize=False), quantizer


def interpreter(path: Path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
    it.allocate_tensors()
    return it


def op_report(it) -> dict[str, Any]:
    """LiteRT's op list of a loaded interpreter: per op type its count, int8 results and how many XNNPACK
    took. A partition's ops are those reached walking back from its DELEGATE node's outputs to its inputs
    (the interpreter keeps the replaced nodes in its node list, beside the DELEGATE nodes)."""
    nodes = it._get_ops_details()  # the only Python view of the node list (TF Lite's own tools read it too)
    by_index = {n["index"]: n for n in nodes}
    producer = {int(t): n["index"] for n in nodes if n["op_name"] != DELEGATE for t in n["outputs"]}
    taken: set[int] = set()
    for d in (n for n in nodes if n["op_name"] == DELEGATE):
        stop, todo = {int(t) for t in d["inputs"]}, [int(t) for t in d["outputs"]]
        while todo:
            t = todo.pop()
            if t in stop or t not in producer or producer[t] in taken:
                continue
            taken.add(producer[t])
            todo.extend(int(u) for u in by_index[producer[t]]["inputs"] if u >= 0)
    ops = [n for n in nodes if n["op_name"] != DELEGATE]
    count, int8 = Counter(n["op_name"] for n in ops), Counter()
    for n in ops:
        int8[n["op_name"]] += any(np.dtype(t) == np.int8 for t in n["result_types"])
    left = Counter(n["op_name"] for n in ops if n["index"] not in taken)
    return {"backend": "XNNPACK", "subgraphs": sum(n["op_name"] == DELEGATE for n in nodes),
            "ops": len(ops), "delegated_ops": len(ops) - sum(left.values()), "non_delegated_ops": sum(left.values()),
            "non_delegated": dict(left.most_common()),
            "op_list": {k: {"count": count[k], "int8": int8[k], "delegated": count[k] - left[k]}
                        for k in sorted(count)}}


def _io(details: dict[str, Any]) -> dict[str, Any]:
    scale, zero = details["quantization"]
    out = {"name": details["name"], "shape": [int(s) for s in details["shape"]],
           "dtype": np.dtype(details["dtype"]).name}
    return {**out, "scale": float(scale), "zero_point": int(zero)} if scale else out


def delegation_line(d: dict[str, Any]) -> str:
    left = ", ".join(f"{k} {n}" for k, n in d.get("non_delegated", {}).items()) or "none"
    return (f"{d.get('delegated_ops')} of {d.get('ops')} ops in {d.get('subgraphs')} XNNPACK partitions, "
            f"not delegated: {left}")


class LiteRTTarget(Pt2eTarget):
    backend = "litert"
    label, colour = "LiteRT", "#17becf"
    isa_sensitive = True  # XNNPACK's int8 kernels follow the CPU's instruction sets (VNNI; ARM dot product)
    requires = ("litert_torch", "ai_edge_litert")
    records = ("litert-torch", "ai-edge-litert", "torchao")
    model_file = TFLITE
    runs_on = "LiteRT interpreter"
    describe = staticmethod(delegation_line)

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        model, example, facts = self.start(ctx)
        facts, quantizer = {"litert": _version(), "converter": "litert_torch.convert (torch.export, LiteRT "
                            "converter)", **facts}, None
        if self.int8:
            model, quantizer = quantize(model, example, self.calibration(ctx, facts, "pt2e-litert"))
        ctx.progress(f"{self.name}: converting with litert-torch")
        edge = convert(model, example, quantizer)
        with _quiet():
            edge.export(str(out_dir / TFLITE))
        it = interpreter(out_dir / TFLITE, threads=1)
        facts.update(tflite_bytes=(out_dir / TFLITE).stat().st_size, delegation=op_report(it),
                     input=_io(it.get_input_details()[0]), output=_io(it.get_output_details()[0]))
        return facts

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        it = interpreter(self.model_path(art_dir), threads)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        (si, zi), (so, zo) = inp["quantization"], out["quantization"]

        def one(x: np.ndarray) -> np.ndarray:  # the model takes one image per call
            if inp["dtype"] == np.int8:  # an int8 input: quantized with the file's scale and zero point
                x = np.clip(np.round(x / si) + zi, -128, 127).astype(np.int8)
            it.set_tensor(inp["index"], x)
            it.invoke()
            y = it.get_tensor(out["index"])
            return (y.astype(np.float32) - zo) * so if out["dtype"] == np.int8 else y.astype(np.float32)

        io = "int8 input and output, (de)quantized by the runner" if inp["dtype"] == np.int8 else "fp32 I/O"
        return Runner(one_at_a_time(one), {"runtime": f"LiteRT interpreter, {_version()} (XNNPACK delegate, batch 1)",
                                "precision": "int8/fp32" if self.int8 else "fp32", "io": io})

    def inspect(self, art_dir: Path) -> dict[str, Any]:
        """LiteRT's op list of the file (read again from it) and what XNNPACK takes of it."""
        d = op_report(interpreter(self.model_path(art_dir), threads=1))
        summary = {"backend": d["backend"], "XNNPACK partitions": d["subgraphs"], "ops": d["ops"],
                   "delegated ops": d["delegated_ops"], "non-delegated ops": d["non_delegated_ops"],
                   "not delegated": d["non_delegated"]}
        warnings = [f"{k} runs on LiteRT's built-in CPU kernels ({n}x), outside XNNPACK"
                    for k, n in d["non_delegated"].items()]
        ops = [{"op": k, "kind": f"{v['count']}x: int8 {v['int8']}, delegated {v['delegated']}"}
               for k, v in d["op_list"].items()]
        return {"target": self.name, "delegation": {"summary": summary, "warnings": warnings, "ops": ops}}


class LiteRTInt8Target(LiteRTTarget):
    Options = Pt2eInt8Options
    option_help = CALIB_HELP


register(
    LiteRTTarget("litert", "fp32", "LiteRT .tflite for phones and ARM boards, fp32, XNNPACK delegate, batch 1 "
                 "(litert-torch)", family="litert"),
    LiteRTInt8Target("litert-int8", "int8", "LiteRT .tflite, PT2E static int8 (litert-torch's quantizer, "
                     "per-channel), int8 I/O, XNNPACK delegate, batch 1", float_twin="litert"),
)
