"""A toy target, defined in one file the way a new backend would be: it declares its options,
report section and notice, and registers itself. tests/test_toy_target.py shows that export,
validate, bench, recipes and reports take it with no other edit."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevit.graph import copy_onnx
from edgevit.targets import ExportContext, Runner, Target, register


@dataclass
class ToyOptions:
    toy_note: str = ""  # written into the artifact, to show a typed option reaching the target


class ToyTarget(Target):
    backend = "onnxruntime"
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
        return Runner(lambda x: sess.run(None, {"input": x})[0], {"runtime": "toy", "precision": "fp32"})

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {"Toy artifacts": {"target": manifest["target"], "note": manifest["export"]["note"]}}

    def notice(self, manifest: dict[str, Any], art_dir: Path) -> str | None:
        return f"toy artifact at {art_dir}"


TOY = ToyTarget("toy", "fp32", "a toy target for the tests")
register(TOY)
