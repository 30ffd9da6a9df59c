"""The TensorRT targets: ``tensorrt-fp16`` and ``tensorrt-int8``.

Both build strongly typed engines from an ONNX whose types say the precision (see
:mod:`edgevit.targets.trt_engine`): fp16 with LayerNorm in fp32, or the explicit Q/DQ int8 graph
of :func:`edgevit.quant.ptq.quantize` (``trt-qdq``), checked against TensorRT's int8 rules. Each
artifact holds ``model.onnx`` and ``build_engine.sh`` always, and ``model.plan`` + ``engine.json``
where TensorRT and a CUDA GPU exist; elsewhere the ONNX is validated with ONNX Runtime and the
end-of-run notice says how to build the engine on the device.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..graph import external_data_facts
from ..manifest import write_json
from ..quant.config import QuantConfig
from .base import MANIFEST, ExportContext, Runner, register
from .int8 import Int8Target
from .onnx import OnnxTarget
from .trt_engine import (
    BUILD_SCRIPT,
    ENGINE,
    EngineOptions,
    EngineUnavailable,
    build_engine,
    engine_unavailable,
    input_size_of,
    load_engine,
    prepare_fp16,
    trtexec_args,
    trtexec_command,
    write_build_script,
)
from .trt_rules import check_tensorrt_rules

DEVICE_SECTION = "Device packages"


class TensorRtTarget(OnnxTarget):
    """``model.onnx`` + ``build_engine.sh`` always; ``model.plan`` + ``engine.json`` where TensorRT runs."""

    backend = "tensorrt"
    records = ("tensorrt",)
    Options = EngineOptions

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        return self.finish(out_dir, ctx, prepare_fp16(onnx_fp32, out_dir / self.model_file))

    def finish(self, out_dir: Path, ctx: ExportContext, facts: dict[str, Any]) -> dict[str, Any]:
        """Write the trtexec script and, where possible, build the engine from ``model.onnx``."""
        eopts: EngineOptions = ctx.options
        size = list(ctx.input_size or input_size_of(out_dir / self.model_file))
        args = trtexec_args(eopts, size)
        write_build_script(out_dir, args)
        facts.update(trtexec_args=args, trtexec=trtexec_command(args),
                     engine_options={k: getattr(eopts, k) for k in asdict(EngineOptions())})
        facts.update(external_data_facts(out_dir / self.model_file))  # trtexec reads it from beside model.onnx
        try:
            facts["engine"] = {"built": True, **build_engine(out_dir / self.model_file, out_dir, eopts, size)}
        except EngineUnavailable as e:
            facts["engine"] = {"built": False, "reason": e.what,
                               "build_on_device": f"cd artifacts/{self.name} && ./{BUILD_SCRIPT}"}
        return facts

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        if (art_dir / ENGINE).is_file() and engine_unavailable() is None:
            runner = load_engine(art_dir)
            runner.info["precision"] = self.precision
            return runner
        runner = super().load(art_dir, threads)
        why = engine_unavailable() or "no engine in the artifact"
        runner.info["runtime"] += f" (the ONNX TensorRT compiles; engine not run here: {why})"
        return runner

    def build(self, art_dir: Path, eopts: EngineOptions | None = None) -> dict[str, Any]:
        """Build (or rebuild) the engine of an existing artifact: ``edgevit engine DIR``."""
        eopts = (eopts or EngineOptions()).check()
        meta = build_engine(art_dir / self.model_file, art_dir, eopts, input_size_of(art_dir / self.model_file))
        mf_path = art_dir / MANIFEST
        if mf_path.is_file():  # the manifest records the engine now in the artifact
            mf = json.loads(mf_path.read_text())
            mf.setdefault("export", {})["engine"] = {"built": True, "built_by": "edgevit engine", **meta}
            mf["files"], mf["size_bytes"] = [p.name for p in self.files(art_dir)], self.size_bytes(art_dir)
            write_json(mf_path, mf)
        return meta

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        e = manifest.get("export", {})
        eng = e.get("engine", {})
        status = (f"engine built: TensorRT {eng.get('tensorrt')} on {eng.get('gpu')} in {eng.get('build_s')} s"
                  if eng.get("built") else f"no engine built here: {eng.get('reason')}")
        size = f"{manifest.get('size_bytes', 0) / 2**20:.1f}"
        return {DEVICE_SECTION: {"target": manifest["target"], "size MB": size, "status": status,
                                 "detail": f"build on the device: {e.get('trtexec')}"}}

    def notice(self, manifest: dict[str, Any], art_dir: Path) -> str | None:
        e = manifest["export"]
        if e.get("engine", {}).get("built") is not False:
            return None
        return (f"no TensorRT engine built here ({e['engine']['reason']}).\n"
                f"  Written: {art_dir}/model.onnx (checked with ONNX Runtime) and {BUILD_SCRIPT}.\n"
                f"  On the device: cd {art_dir.name} && {e['trtexec']}\n"
                f"  or on a Jetson: deploy/jetson/edgevit_jetson.sh --artifact {art_dir}")


@dataclass
class TensorRtInt8Options(QuantConfig, EngineOptions):
    def check(self) -> None:  # type: ignore[override]
        QuantConfig.check(self)
        EngineOptions.check(self)


class TensorRtInt8Target(Int8Target, TensorRtTarget):
    """Explicit Q/DQ ONNX checked against TensorRT's int8 rules, then the engine where TensorRT runs."""

    form = "trt-qdq"
    Options = TensorRtInt8Options

    def finish(self, out_dir: Path, ctx: ExportContext, facts: dict[str, Any]) -> dict[str, Any]:
        rules = check_tensorrt_rules(out_dir / self.model_file, allow_norms=ctx.options.quantize_norms)
        if rules["violations"]:
            raise ExportError(f"target {self.name!r}: the Q/DQ graph breaks {len(rules['violations'])} TensorRT "
                              f"int8 rule(s), e.g. {rules['violations'][0]}", "report this with the run's run.json")
        facts.update(tensorrt_rules=rules, onnx_precision="int8 Q/DQ, float32 elsewhere (float32 inputs/outputs)")
        return TensorRtTarget.finish(self, out_dir, ctx, facts)

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {**Int8Target.report_rows(self, manifest), **TensorRtTarget.report_rows(self, manifest)}


register(
    TensorRtTarget("tensorrt-fp16", "fp16", "TensorRT engine, fp16 with LayerNorm in fp32 (strongly typed); "
                   "without TensorRT: the ONNX + trtexec script, validated with ONNX Runtime"),
    TensorRtInt8Target("tensorrt-int8", "int8", "TensorRT engine from explicit Q/DQ ONNX (symmetric int8, "
                       "per-channel weights, checked against TensorRT's rules); without TensorRT: the ONNX + "
                       "trtexec script, validated with ONNX Runtime"),
)
