"""``edgevit inspect``: what precision each op of an artifact computes in, and why int8 may not be faster."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..manifest import write_json
from ..progress import table
from .common import friendly, out


def register(app: typer.Typer) -> None:
    app.command("inspect")(friendly(inspect))


def inspect(
    artifact: Path = typer.Argument(..., help="an artifact directory (runs/<run>/artifacts/<target>) or a .onnx file"),
    ops: bool = typer.Option(False, "--ops", help="also list every op with its kind and precision"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the whole map (every op) here"),
):
    """The precision map of the graph that ships: int8 GEMMs, fp16 and fp32 ops, attention matmuls quantized
    or not, and a warning when the configuration cannot beat fp16.

    ONNX graphs (onnx*, tensorrt-*) are read as TensorRT compiles them (a strongly typed network keeps the
    graph's types); OpenVINO IR is compiled here and its runtime graph read (layer precisions and the CPU
    kernels chosen, which show the instruction set); a TensorRT engine adds its inspector's per-layer view;
    an ExecuTorch program shows which ops XNNPACK took and which run on the portable kernels.

    Example: edgevit inspect runs/deit_tiny/artifacts/tensorrt-int8
    """
    from .. import api

    res = api.inspect(artifact)
    if json_out is not None:
        write_json(json_out, res)
    for key, title in (("graph", "graph (as TensorRT / ONNX Runtime compile it)"),
                       ("runtime", f"runtime graph compiled here ({res.get('runtime', {}).get('device')})"),
                       ("engine", "TensorRT engine (IEngineInspector)"),
                       ("delegation", "ExecuTorch delegation (recorded at export)")):
        if part := res.get(key):
            _print_part(part, f"{res.get('target') or artifact}: {title}", ops)
    if json_out is not None:
        out.print(f"written: {json_out}")


def _print_part(part: dict[str, Any], title: str, ops: bool) -> None:
    s = part.get("summary", {})
    t = table("", "", title=title)
    for key, value in s.items():
        if isinstance(value, list):
            value = f"{len(value)}: {', '.join(map(str, value[:6]))}{' …' if len(value) > 6 else ''}" if value else "none"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "—"
        t.add_row(key.replace("_", " "), str(value))
    out.print(t)
    for w in part.get("warnings", []):
        out.print(f"[yellow]warning:[/] {w}")
    rows = part.get("ops") or part.get("layers") or []
    if ops and rows:
        cols = [c for c in ("name", "op", "type", "kind", "precision", "kernel") if c in rows[0]]
        t = table(*cols, title="ops" if part.get("ops") else "engine layers")
        for o in rows:
            t.add_row(*(str(o.get(c, "")) for c in cols))
        out.print(t)
