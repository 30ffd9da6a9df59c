"""Report sections that the targets declare: each artifact's target gives its rows (how an int8
graph was made, whether a device package was built and how it was checked), grouped by section
title. A new target's section appears with no edit here. Also the warnings and notes a reader needs
beside the main table: the CPU, a float model at chance level, noisy latency, int8 slower than its
float twin, a precision that differs at run time, and each drop with its paired 95 % interval."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..eval.machine import cpu_facts, isa_label, missing_int8_isa
from ..manifest import read_json
from ..targets import get_target
from ..targets.registry import float_twin_of, int8_targets
from .device import is_device_row

FLOAT_LAYERS = "layers kept float"
CHANCE_MARGIN_PTS = 5.0  # a float top-1 this close to chance (100 / classes) is a model that guesses


def load_json(path: Path) -> dict[str, Any]:
    """A results or manifest file, {} when it does not exist (yet); a corrupt one names itself."""
    return read_json(path, "results file", "re-run the step that wrote it (or delete it)") if path.exists() else {}


def target_sections(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """{section title: rows} from the manifest of every artifact in the run."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in sorted((Path(run_dir) / "artifacts").glob("*/manifest.json")):
        mf = load_json(p)
        try:
            target = get_target(mf.get("target", ""))
        except TargetError:  # a target this installation does not have: its artifact has no section
            continue
        for title, row in target.report_rows(mf).items():
            out.setdefault(title, []).append(_float_layers_known(row, mf, target.backend))
    return out


def _float_layers_known(row: dict[str, str], mf: dict[str, Any], backend: str) -> dict[str, str]:
    """A "layers kept float" cell is "N of <count>" only where the export recorded the layer count
    (CoreML's weight-only int8 has no such count: say so instead of "0 of None")."""
    e = mf.get("export") or {}
    if FLOAT_LAYERS not in row or e.get("layers") is not None:
        return row
    kept = ", ".join(e.get("float_layers") or [])
    s = e.get("structure") or {}
    if backend == "coreml":
        text = "not recorded for CoreML" + (f" ({s['int8_weight_ops']} of {s['op_total']} ops hold int8 weights)"
                                            if s.get("op_total") is not None and "int8_weight_ops" in s else "")
    else:
        text = "not recorded for this target"
    return {**row, FLOAT_LAYERS: f"{kept} (layer count {text})" if kept else text}


def _columns(rows: list[dict[str, str]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def sections_markdown(sections: dict[str, list[dict[str, str]]]) -> list[str]:
    lines: list[str] = []
    for title, rows in sections.items():
        cols = _columns(rows)
        lines += ["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "—")) for c in cols) + " |" for r in rows]
    return lines


def sections_html(sections: dict[str, list[dict[str, str]]]) -> str:
    parts = []
    for title, rows in sections.items():
        cols = _columns(rows)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(r.get(c, '—')))}</td>"
                                        for c in cols) + "</tr>" for r in rows)
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>")
    return "".join(parts)


# ------------------------------------------------------------------ beside the main table
def local_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows timed on this machine (device rows are another machine's latency)."""
    return [r for r in rows if "p50_ms" in r and not is_device_row(r)]


def recorded_cpu(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r["cpu"] for r in local_rows(rows) if isinstance(r.get("cpu"), dict)), None)


def cpu_line(rows: list[dict[str, Any]]) -> str:
    c = recorded_cpu(rows)
    if c is None and not any("p50_ms" in r for r in rows):
        return "CPU: no latency measured in this run (benchmark with `edgevit bench`)"
    if c is None:
        return "CPU: not recorded with these latency figures (benched by an older edgevit)"
    return f"CPU: {c.get('cpu') or '?'}, {c.get('cores') or '?'} cores, {isa_label(c.get('isa'))}"


def chance_warning(rows: list[dict[str, Any]]) -> str | None:
    """The float model at (or near) chance level: every agreement and drop figure is then noise."""
    v = next((r for r in rows if "float_top1" in r and (r.get("data") or {}).get("classes")), None)
    if v is None:
        return None
    classes, top1 = v["data"]["classes"], v["float_top1"]
    chance = 100.0 / classes
    if top1 > chance + CHANCE_MARGIN_PTS:
        return None
    return (f"WARNING: the float model is at chance level (top-1 {top1:.2f} % on {classes} classes; chance is "
            f"{chance:.2f} %): it guesses, so the agreement and drop figures below say nothing about accuracy. "
            "Train it (edgevit train) or pass its real checkpoint (--checkpoint).")


def noisy_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in local_rows(rows) if (r.get("noise") or {}).get("noisy")]


def noise_warning(rows: list[dict[str, Any]]) -> str | None:
    noisy = noisy_rows(rows)
    if not noisy:
        return None
    each = "; ".join(f"{r['name']} (p50 {r['p50_ms']:.2f} ms, p90 {r.get('p90_ms') or float('nan'):.2f} ms"
                     + (f": {r['noise']['why']}" if r["noise"].get("why") else "") + ")" for r in noisy)
    return (f"WARNING: latency was noisy, so no speedup is claimed: {each}. Re-run edgevit bench on an idle "
            "machine (more --iters) before comparing speeds.")


def int8_slower_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """An int8 artifact slower than its float twin (:func:`float_twin_of`) in the same bench, and why: the
    CPU's instruction sets where its target's int8 speed follows them (``isa_sensitive``)."""
    by_name, out = {r["name"]: r for r in local_rows(rows)}, []
    for name in int8_targets():
        twin_name = float_twin_of(name)
        q, f = by_name.get(name), by_name.get(twin_name or "")
        if q is None or f is None or q["p50_ms"] <= f["p50_ms"]:
            continue
        text = (f"WARNING: {name} is slower than its float twin {twin_name} ({q['p50_ms']:.2f} vs "
                f"{f['p50_ms']:.2f} ms p50)")
        if stand_in := _stand_in(name, q):
            out.append(f"{name} ran slower than {twin_name} here ({q['p50_ms']:.2f} vs {f['p50_ms']:.2f} ms p50), "
                       f"but both ran on {stand_in}, not on their own runtime: that says nothing of their speed "
                       f"({get_target(name).timed_elsewhere}).")
            continue
        cpu = q.get("cpu") if isinstance(q.get("cpu"), dict) else None
        why = missing_int8_isa((cpu or cpu_facts()).get("isa")) if get_target(name).isa_sensitive else None
        if why:
            where = "" if cpu else " (the CPU this report was written on; the bench did not record its own)"
            out.append(f"{text}: {why}{where}.")
        else:
            out.append(f"{text}, and the instruction sets are not the reason: see which layers stayed float with "
                       f"`edgevit inspect {q.get('artifact') or 'RUN/artifacts/' + name}`.")
    return out


def _stand_in(name: str, row: dict[str, Any]) -> str | None:
    """The runtime an artifact of a target timed elsewhere (TensorRT, CoreML) ran on here instead of its own
    (ONNX Runtime on the CPU for a TensorRT ONNX without an engine); None when it ran on its own."""
    t = get_target(name)
    runtime = str(row.get("runtime") or "")
    if not t.timed_elsewhere or not runtime or runtime.lower().startswith(t.backend.lower()):
        return None
    return runtime.split(" (")[0] + " on this machine's CPU"


def warnings(rows: list[dict[str, Any]]) -> list[str]:
    return [w for w in (chance_warning(rows), noise_warning(rows)) if w] + int8_slower_warnings(rows)


def precision_note(r: dict[str, Any]) -> str | None:
    """Why an artifact saved in one precision runs in another (None when they agree or one is unknown)."""
    saved, run = r.get("precision"), r.get("runtime_precision")
    if not saved or not run or saved == run:
        return None
    isa = (r.get("cpu") or {}).get("isa") if isinstance(r.get("cpu"), dict) else None
    if r.get("backend") == "openvino" and saved == "fp16" and run in ("fp32", "f32"):
        why = ("the CPU plugin computes in fp32 on this CPU (no AVX512_BF16/AMX); fp16 only halves the file; "
               "on a GPU/NPU it runs fp16")
    elif r.get("backend") == "openvino" and run in ("bf16", "int8/bf16"):
        why = f"the CPU plugin computes in bf16 on this CPU ({isa_label(isa)})"
    elif str(run).startswith(f"{saved}/") or str(run).startswith(f"{saved} "):
        why = f"{saved} where quantized, the rest runs {run.split('/', 1)[-1] if '/' in run else run}"
    else:
        why = f"the runtime reports it computes in {run}"
    return f"{r['name']}: saved {saved}, runs {run}: {why}."


def drop_cell(r: dict[str, Any], vs: str = "") -> str:
    """``+1.00 [-0.20, +2.10]``: a drop and its paired 95 % interval (vs "" the own float model, "dense")."""
    suffix = f"_vs_{vs}" if vs else ""
    d, ci = r.get(f"top1_drop{suffix}_pts"), r.get(f"top1_drop{suffix}_ci95_pts")
    if d is None:
        return "—"
    return f"{d:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci and None not in ci else "")


def only_cell(r: dict[str, Any], vs: str = "") -> str:
    """``12 / 4``: images only the reference (float or dense) gets right / only the artifact gets right."""
    a = r.get("only_dense_correct" if vs else "only_float_correct")
    b = r.get("only_artifact_correct_vs_dense" if vs else "only_artifact_correct")
    return "—" if a is None or b is None else f"{a} / {b}"


def drop_text(r: dict[str, Any], vs: str = "") -> str:
    """A drop in words, with its interval and the images only one model gets right."""
    suffix = f"_vs_{vs}" if vs else ""
    d, ci = r[f"top1_drop{suffix}_pts"], r.get(f"top1_drop{suffix}_ci95_pts")
    ref = "the dense (unpruned) model" if vs else "its float model"
    text = f"{abs(d):.2f} pts top-1 {'below' if d > 0 else 'above'} {ref}" if d else f"same top-1 as {ref}"
    extra = []
    if ci and None not in ci:
        extra.append(f"95 % CI {ci[0]:+.2f} to {ci[1]:+.2f} pts")
    if only_cell(r, vs) != "—":
        extra.append(f"{only_cell(r, vs)} images only {'dense' if vs else 'float'} / only the artifact gets right")
    return text + (f" ({'; '.join(extra)})" if extra else "")
