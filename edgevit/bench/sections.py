"""Report sections on how artifacts were made: int8 (calibration, layers kept float) and device
packages (TensorRT engines, CoreML packages: built or not, checked how)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..manifest import read_json


def load_json(path: Path) -> dict[str, Any]:
    """A results or manifest file, {} when it does not exist (yet); a corrupt one names itself."""
    return read_json(path, "results file", "re-run the step that wrote it (or delete it)") if path.exists() else {}


def _manifests(run_dir: Path) -> list[dict[str, Any]]:
    return [load_json(p) for p in sorted((Path(run_dir) / "artifacts").glob("*/manifest.json"))]


def int8_facts(run_dir: Path) -> list[dict[str, Any]]:
    """How each int8 artifact was made: form, calibration, and the layers kept float (and why)."""
    out = []
    for mf in _manifests(run_dir):
        if mf.get("precision") != "int8":
            continue
        e, cal, md = mf.get("export", {}), mf.get("export", {}).get("calibration") or {}, mf.get("export", {}).get("max_drop")
        out.append({"target": mf["target"], "form": e.get("form"), "calibrator": e.get("calibrator"),
                    "calibration": f"{cal['size']} images of {cal['source']}" if cal else
                    "none (weight-only)" if str(e.get("activations", "")).startswith("fp16") else "none (dynamic)",
                    "activations": e.get("activations"), "weights": e.get("weights"),
                    "float_layers": e.get("float_layers", []), "layers": e.get("layers"),
                    "max_drop": None if not md else f"bound {md['bound_pts']} pts: {md['control_drop_pts']:.2f} pts "
                                                    f"on {md['control_images']} held-out images"})
    return out


def int8_markdown(items: list[dict[str, Any]]) -> list[str]:
    if not items:
        return []
    lines = ["", "## int8 artifacts", "", "| target | form | calibrator | calibration | --max-drop | layers kept float |",
             "|---|---|---|---|---|---|"]
    for i in items:
        kept = ", ".join(i["float_layers"]) or "none"
        lines.append(f"| {i['target']} | {i['form']} | {i['calibrator'] or '—'} | {i['calibration']} | "
                     f"{i['max_drop'] or '—'} | {len(i['float_layers'])} of {i['layers']}: {kept} |")
    return lines


def int8_html(items: list[dict[str, Any]]) -> str:
    if not items:
        return ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            i["target"], i["form"], i["calibrator"] or "—", i["calibration"], i["max_drop"] or "—",
            f"{len(i['float_layers'])} of {i['layers']}")) + "</tr>"
        + (f"<tr><td colspan=6 class='note' style='text-align:left'>kept float: "
           f"{html.escape(', '.join(i['float_layers']))}</td></tr>" if i["float_layers"] else "") for i in items)
    return ("<h2>int8 artifacts</h2><table><tr><th>target</th><th>form</th><th>calibrator</th><th>calibration</th>"
            f"<th>--max-drop</th><th>layers kept float</th></tr>{rows}</table>")


def package_facts(run_dir: Path) -> list[dict[str, Any]]:
    """TensorRT and CoreML artifacts: engine built or not (and how to build it), structure checks."""
    out = []
    for mf in _manifests(run_dir):
        e, check = mf.get("export", {}), mf.get("check_vs_pytorch", {})
        size = mf.get("size_bytes", 0) / 2**20
        if "skipped" in check:
            s = e.get("structure", {})
            ins = ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in s.get("inputs", []))
            outs = ", ".join(f"{o['name']} {o['shape']} {o['dtype']}" for o in s.get("outputs", []))
            out.append({"target": mf["target"], "size_mb": size, "status": f"not run here: {check['skipped']}",
                        "detail": f"structure checked: {ins} -> {outs}; {s.get('op_total')} ops, "
                                  f"{s.get('int8_weight_ops')} int8 weight ops, weights "
                                  f"{s.get('weights_bytes', 0) / 2**20:.1f} MB"})
        elif "engine" in e:
            eng = e["engine"]
            status = (f"engine built: TensorRT {eng.get('tensorrt')} on {eng.get('gpu')} in {eng.get('build_s')} s"
                      if eng.get("built") else f"no engine built here: {eng.get('reason')}")
            out.append({"target": mf["target"], "size_mb": size, "status": status,
                        "detail": f"build on the device: {e.get('trtexec')}"})
    return out


def package_markdown(items: list[dict[str, Any]]) -> list[str]:
    if not items:
        return []
    lines = ["", "## Device packages", "", "| target | size MB | status | detail |", "|---|---|---|---|"]
    lines += [f"| {i['target']} | {i['size_mb']:.1f} | {i['status']} | {i['detail']} |" for i in items]
    return lines


def package_html(items: list[dict[str, Any]]) -> str:
    if not items:
        return ""
    rows = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(v))}</td>" for v in (
        i["target"], f"{i['size_mb']:.1f}", i["status"], i["detail"])) + "</tr>" for i in items)
    return ("<h2>Device packages</h2><table><tr><th>target</th><th>size MB</th><th>status</th><th>detail</th></tr>"
            f"{rows}</table>")
