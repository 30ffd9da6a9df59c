"""A toy backend, defined in one file the way a new backend would be: a float target and an int8 target
with it as its float twin. They declare their options (with help), report sections, notice, backend
label and colour, ISA sensitivity and the family `edgevit optimize` searches them in, and register
themselves. tests/test_toy_target.py shows that the command line (`edgevit targets`, the flags and their
help), export, validate, bench, recipes, the report's tables and plot, `quantize` and `optimize` take
them with no other edit."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevit.graph import copy_onnx
from edgevit.targets import ExportContext, Runner, Target, register
from edgevit.targets.base import option
from edgevit.targets.int8 import Int8Target

TOY_COLOUR = "#17becf"


@dataclass
class ToyOptions:
    toy_note: str = option("", "a note written into the toy artifact")  # shows a typed option reaching the target


class ToyTarget(Target):
    backend = "toyrt"
    label, colour, isa_sensitive = "Toy Runtime", TOY_COLOUR, True  # it runs on ONNX Runtime's CPU kernels
    requires = ("onnxruntime",)
    records = ("onnxruntime",)
    model_file = "toy.onnx"
    Options = ToyOptions

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        (out_dir / "note.txt").write_text(ctx.options.toy_note)
        return {"note": ctx.options.toy_note, **copy_onnx(onnx_fp32, out_dir / self.model_file)}

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(art_dir / self.model_file), providers=["CPUExecutionProvider"])
        return Runner(lambda x: sess.run(None, {"input": x})[0], {"runtime": "toy", "precision": self.precision})

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {"Toy artifacts": {"target": manifest["target"], "note": manifest["export"]["note"]}}

    def notice(self, manifest: dict[str, Any], art_dir: Path) -> str | None:
        return f"toy artifact at {art_dir}"


class ToyInt8Target(Int8Target, ToyTarget):
    """edgevit.quant's dynamic int8 graph (no calibration), loaded by the toy runtime."""

    form = "ort-dynamic"
    search_options = {"per_channel": False}  # what `edgevit optimize` exports it with


TOY = ToyTarget("toy", "fp32", "a toy target for the tests", family="toy")
TOY_INT8 = ToyInt8Target("toy-int8", "int8", "a toy int8 target for the tests", float_twin="toy")
register(TOY, TOY_INT8)
