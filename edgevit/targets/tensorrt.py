"""The TensorRT targets: ``tensorrt-fp16`` and ``tensorrt-int8``.

Both build strongly typed engines from an ONNX whose types say the precision (see
:mod:`edgevit.targets.trt_engine`): fp16 with LayerNorm in fp32, or the explicit Q/DQ int8 graph
of :func:`edgevit.quant.ptq.quantize` (``trt-qdq``: int8 GEMMs, fp16 elsewhere, LayerNorm fp32;
:mod:`edgevit.quant.fp16`), checked against TensorRT's int8 rules. Its precision map
(:mod:`edgevit.precision`, ``edgevit inspect``) is recorded in the manifest and the report. Each
artifact holds ``model.onnx`` and ``build_engine.sh`` always, and ``model.plan`` + ``engine.json``
where TensorRT and a CUDA GPU exist; elsewhere the ONNX is validated with ONNX Runtime and the
end-of-run notice says how to build the engine on the device.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..graph import external_data_facts
from ..manifest import write_json
from ..precision import precision_map, summary_line, typed_graph
from ..quant.config import QuantConfig
from ..quant.fp16 import fp16_outside_gemms
from .base import MANIFEST, ExportContext, Runner, register
from .int8 import QAT_FACTS, Int8Target
from .onnx import OnnxTarget
from .trt_engine import (
    BUILD_SCRIPT,
    ENGINE,
    ENGINE_LAYERS,
    EngineOptions,
    EngineUnavailable,
    build_engine,
    engine_layers,
    engine_unavailable,
    input_size_of,
    load_engine,
    prepare_fp16,
    trtexec_args,
    trtexec_command,
    write_build_script,
)
from .trt_rules import check_tensorrt_rules

ENGINE_BUILD_S = 60.0  # an engine build, where TensorRT and a GPU are here (the quickstart's time estimate)
DEVICE_SECTION = "Device packages"
PRECISION_SECTION = "Precision of the graph that ships"


class TensorRtTarget(OnnxTarget):
    """``model.onnx`` + ``build_engine.sh`` always; ``model.plan`` + ``engine.json`` where TensorRT runs."""

    backend = "tensorrt"
    label, colour, timed_elsewhere = "TensorRT", "#ff7f0e", "TensorRT engines are timed on their GPU"
    records = ("tensorrt",)
    fp16_peer = "tensorrt-fp16"
    Options = EngineOptions

    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        return self.finish(out_dir, ctx, prepare_fp16(onnx_fp32, out_dir / self.model_file))

    def finish(self, out_dir: Path, ctx: ExportContext, facts: dict[str, Any], graph: Any = None) -> dict[str, Any]:
        """Write the trtexec script and, where possible, build the engine from ``model.onnx`` (``graph``: its
        typed graph, when already read)."""
        eopts: EngineOptions = ctx.options
        pmap = precision_map(out_dir / self.model_file, graph=graph)  # what the strongly typed engine will compute
        facts.update(precision_map={**pmap["summary"], "warnings": pmap["warnings"]},
                     runtime_precision=pmap["summary"]["label"])
        size = list(ctx.input_size or input_size_of(out_dir / self.model_file))
        args = trtexec_args(eopts, size)
        label = pmap["summary"]["label"]
        write_build_script(out_dir, args, precision=label)
        facts.update(trtexec_args=args, trtexec=trtexec_command(args),
                     engine_options={k: getattr(eopts, k) for k in asdict(EngineOptions())})
        facts.update(external_data_facts(out_dir / self.model_file))  # trtexec reads it from beside model.onnx
        try:
            facts["engine"] = {"built": True, **build_engine(out_dir / self.model_file, out_dir, eopts, size,
                                                             precision=label)}
        except EngineUnavailable as e:
            facts["engine"] = {"built": False, "reason": e.what,
                               "build_on_device": f"cd artifacts/{self.name} && ./{BUILD_SCRIPT}"}
        return facts

    def build_seconds(self) -> float:
        return ENGINE_BUILD_S if engine_unavailable() is None else 0.0

    def status(self) -> str:
        if (why := engine_unavailable()) is None:
            return "ready"
        what = "TensorRT" if importlib.util.find_spec("tensorrt") is None else why.split(" (")[0]
        return f"needs {what} for the engine (writes the ONNX + build script here)"

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        if (art_dir / ENGINE).is_file() and engine_unavailable() is None:
            runner = load_engine(art_dir)
            runner.info["precision"] = runner.info.get("precision") or self.precision  # engine.json's when known
            return runner
        runner = super().load(art_dir, threads)
        why = engine_unavailable() or "no engine in the artifact"
        runner.info["runtime"] += f" (the ONNX TensorRT compiles; engine not run here: {why})"
        return runner

    def build(self, art_dir: Path, eopts: EngineOptions | None = None) -> dict[str, Any]:
        """Build (or rebuild) the engine of an existing artifact: ``edgevit engine DIR``."""
        eopts = (eopts or EngineOptions()).check()
        meta = build_engine(art_dir / self.model_file, art_dir, eopts, input_size_of(art_dir / self.model_file),
                            precision=self.graph_label(art_dir))
        mf_path = art_dir / MANIFEST
        if mf_path.is_file():  # the manifest records the engine now in the artifact
            mf = json.loads(mf_path.read_text())
            mf.setdefault("export", {})["engine"] = {"built": True, "built_by": "edgevit engine", **meta}
            mf["files"], mf["size_bytes"] = [p.name for p in self.files(art_dir)], self.size_bytes(art_dir)
            write_json(mf_path, mf)
        return meta

    def graph_label(self, art_dir: Path) -> str:
        """What the artifact's graph computes ('fp16', 'int8 GEMMs + fp16'): the manifest's, else the graph's."""
        mf = art_dir / MANIFEST
        if mf.is_file() and (label := json.loads(mf.read_text()).get("export", {}).get("runtime_precision")):
            return label
        return precision_map(art_dir / self.model_file)["summary"]["label"]

    def inspect(self, art_dir: Path) -> dict[str, Any]:
        """The graph's precision map, and the engine's per-layer view where an engine was built (from
        engine_layers.json, or read from the engine where TensorRT runs)."""
        res = super().inspect(art_dir)
        if (art_dir / ENGINE_LAYERS).is_file():
            res["engine"] = json.loads((art_dir / ENGINE_LAYERS).read_text())
        elif (art_dir / ENGINE).is_file() and engine_unavailable() is None:
            res["engine"] = engine_layers(art_dir)
        elif (art_dir / ENGINE).is_file():
            res["engine"] = {"summary": {"not read": engine_unavailable()}}
        return res

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        e = manifest.get("export", {})
        eng = e.get("engine", {})
        status = (f"engine built: TensorRT {eng.get('tensorrt')} on {eng.get('gpu')} in {eng.get('build_s')} s"
                  if eng.get("built") else f"no engine built here: {eng.get('reason')}")
        size = f"{manifest.get('size_bytes', 0) / 2**20:.1f}"
        rows = {DEVICE_SECTION: {"target": manifest["target"], "size MB": size, "status": status,
                                 "detail": f"build on the device: {e.get('trtexec')}"}}
        if pm := e.get("precision_map"):
            rows[PRECISION_SECTION] = {"target": manifest["target"], "precision": summary_line(pm),
                                       "warning": "; ".join(pm.get("warnings", [])) or "—"}
        return rows

    def notice(self, manifest: dict[str, Any], art_dir: Path) -> str | None:
        e = manifest["export"]
        if e.get("engine", {}).get("built") is not False:
            return None
        where = art_dir.resolve()
        return (f"no TensorRT engine built here ({e['engine']['reason']}).\n"
                f"  Written: {where / self.model_file} (checked with ONNX Runtime) and {where / BUILD_SCRIPT}.\n"
                f"  On an x86-64 machine with an NVIDIA GPU and TensorRT: edgevit engine {where}\n"
                f"  or with trtexec: {where / BUILD_SCRIPT}  ({e['trtexec']})\n"
                f"  or on a Jetson: deploy/jetson/edgevit_jetson.sh --artifact {where}")


@dataclass
class TensorRtInt8Options(QuantConfig, EngineOptions):
    def check(self) -> None:  # type: ignore[override]
        QuantConfig.check(self)
        EngineOptions.check(self)


class TensorRtInt8Target(Int8Target, TensorRtTarget):
    """Explicit Q/DQ ONNX checked against TensorRT's int8 rules, then the engine where TensorRT runs."""

    form = "trt-qdq"
    Options = TensorRtInt8Options

    def convert_qat(self, qat_onnx: Path, dst: Path) -> dict[str, Any]:
        """The QAT graph with fp16 outside its int8 GEMMs, as the PTQ graph has."""
        return {**fp16_outside_gemms(qat_onnx, dst), **QAT_FACTS}

    def finish(self, out_dir: Path, ctx: ExportContext, facts: dict[str, Any], graph: Any = None) -> dict[str, Any]:
        # the shipped graph read once: the rules check and the precision map both read it
        graph = graph if graph is not None else typed_graph(out_dir / self.model_file)
        rules = check_tensorrt_rules(graph, ctx.options.float_scope(), base_dir=out_dir)
        if rules["violations"]:
            raise ExportError(f"target {self.name!r}: the Q/DQ graph breaks {len(rules['violations'])} TensorRT "
                              f"int8 rule(s), e.g. {rules['violations'][0]}", "report this with the run's run.json")
        facts.update(tensorrt_rules=rules)
        facts = TensorRtTarget.finish(self, out_dir, ctx, facts, graph)
        facts["precision_map"]["kept_float"] = {  # what the float scope kept float beyond the head, and why
            "attention": facts.get("attention_kept_float", []),
            "fp16_subnormal_scales": facts.get("fp16_subnormal_kept_float", [])}
        return facts

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        runner = TensorRtTarget.load(self, art_dir, threads)
        if not runner.info.get("precision") or runner.info["precision"] == self.precision:
            runner.info["precision"] = self.graph_label(art_dir)  # what the graph computes
        return runner

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {**Int8Target.report_rows(self, manifest), **TensorRtTarget.report_rows(self, manifest)}

    def notice(self, manifest: dict[str, Any], art_dir: Path) -> str | None:
        base = TensorRtTarget.notice(self, manifest, art_dir)
        warn = manifest.get("export", {}).get("precision_map", {}).get("warnings", [])
        if not warn:
            return base
        lines = "\n".join(f"  warning: {w}" for w in warn)
        return f"{base}\n{lines}" if base else f"{lines.strip()}\n  see: edgevit inspect {art_dir}"


register(
    TensorRtTarget("tensorrt-fp16", "fp16", "TensorRT engine, fp16 with LayerNorm in fp32 (strongly typed); "
                   "without TensorRT: the ONNX + trtexec script, validated with ONNX Runtime"),
    TensorRtInt8Target("tensorrt-int8", "int8", "TensorRT engine from explicit Q/DQ ONNX: int8 GEMMs (symmetric, "
                       "per-channel weights, checked against TensorRT's rules), fp16 elsewhere, LayerNorm fp32; "
                       "without TensorRT: the ONNX + trtexec script, validated with ONNX Runtime",
                       float_twin="tensorrt-fp16"),
)
