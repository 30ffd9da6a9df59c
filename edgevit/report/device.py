"""Results measured on an edge device (deploy/jetson/edgevit_jetson.sh), merged into a run's report.

A device-results file (format ``edgevit-device-results/1``) holds the device's facts (model,
JetPack, TensorRT, power mode, clocks), the artifact it measured (target, model, sha256 of its ONNX),
one row per benchmark (latency, throughput, power and energy per image over the benchmark window,
the engine's optimisation profile) and ``warnings`` about the measurement (e.g. too few power
samples). :func:`merge_device_results` validates files and keeps their rows in
``RUN/results/device.json``, keyed by row name (a later file replaces a row of the same name), so
``edgevit report`` shows them on every later run of the report.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..manifest import now, read_run, write_json

FORMAT = "edgevit-device-results/1"
MERGED_FORMAT = "edgevit-device-merged/1"
MERGED = Path("results") / "device.json"
MAKE_IT = "make it on the board with deploy/jetson/edgevit_jetson.sh --artifact DIR --out FILE.json"


def _bad(path: Path, what: str, fix: str = MAKE_IT) -> ArtifactError:
    return ArtifactError(f"device results {path}: {what}", fix)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_device_results(path: str | Path) -> dict[str, Any]:
    """Read and check one device-results file; every problem is an ArtifactError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise _bad(path, "no such file",
                   "pass the JSON that edgevit_jetson.sh wrote (its --out), copied from the board")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"not valid JSON ({e})", "copy the file from the board again; " + MAKE_IT) from None
    if not isinstance(data, dict):
        raise _bad(path, f"expected a JSON object, got {type(data).__name__}")
    fmt = data.get("format")
    if fmt is None:
        raise _bad(path, "no 'format' field: not an edgevit device-results file")
    if fmt != FORMAT:
        fix = ("update edgevit to read it" if isinstance(fmt, str) and fmt.startswith("edgevit-device-results/")
               else MAKE_IT)
        raise _bad(path, f"'format' is {fmt!r}, this edgevit reads {FORMAT!r}", fix)
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise _bad(path, "'rows' must be a non-empty list of benchmark rows")
    for i, row in enumerate(rows):
        _check_row(path, i, row)
    for key in ("device", "artifact"):
        if not isinstance(data.get(key, {}), dict):
            raise _bad(path, f"'{key}' must be an object")
    warnings = data.get("warnings", [])
    if not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
        raise _bad(path, f"'warnings' must be a list of strings, got {warnings!r}")
    return data


def _check_row(path: Path, i: int, row: Any) -> None:
    if not isinstance(row, dict):
        raise _bad(path, f"rows[{i}] is not an object")
    if not isinstance(row.get("name"), str) or not row["name"]:
        raise _bad(path, f"rows[{i}] has no 'name' (e.g. 'tensorrt-int8@jetson')")
    if not _is_number(row.get("p50_ms")):
        raise _bad(path, f"rows[{i}] ({row['name']}) has no numeric 'p50_ms' (got {row.get('p50_ms')!r})",
                   "run the benchmark again; " + MAKE_IT)
    for key in ("p90_ms", "p99_ms", "power_w_mean", "energy_mj_per_image"):
        if key in row and row[key] is not None and not _is_number(row[key]):
            raise _bad(path, f"rows[{i}] ({row['name']}) has a non-numeric {key!r}: {row[key]!r}")


def _check_same_model(path: Path, data: dict[str, Any], run: dict[str, Any], run_dir: Path) -> None:
    art, model = data.get("artifact") or {}, (run.get("model") or {}).get("name")
    if art.get("model") and model and art["model"] != model:
        raise _bad(path, f"measured model {art['model']!r}, but {run_dir} is a run of {model!r}",
                   "pass the results of this run's artifact, or the run directory it was exported in")
    size = (run.get("data_config") or {}).get("input_size")
    if art.get("input_size") and size and list(art["input_size"]) != list(size):
        raise _bad(path, f"measured input size {art['input_size']}, but {run_dir} uses {size}",
                   "pass the results of this run's artifact")


def _onnx_sha256(run_dir: Path, target: str | None) -> str | None:
    onnx = run_dir / "artifacts" / str(target) / "model.onnx"
    if not target or not onnx.is_file():
        return None
    from ..manifest import sha256_file

    return sha256_file(onnx)


def _merged_rows(path: Path, data: dict[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    art = data.get("artifact") or {}
    local = _onnx_sha256(run_dir, art.get("target"))
    same = None if not (local and art.get("onnx_sha256")) else local == art["onnx_sha256"]
    return {row["name"]: {**row, "measured_on": "device", "device": data.get("device") or {},
                          "artifact_measured": art, "onnx_matches_run": same, "source": str(path),
                          "created": data.get("created"), "command": data.get("command"),
                          "warnings": list(data.get("warnings") or [])} for row in data["rows"]}


def merge_device_results(run_dir: str | Path, paths: list[str | Path]) -> Path:
    """Check every file, then keep their rows in ``run_dir/results/device.json`` (atomic write); return its path.

    Rows are keyed by name: a later file (or a later call) replaces a row of the same name.
    Nothing is written unless every file is valid and measured this run's model.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if not paths:
        raise ArtifactError("no device-results file given", "pass --device-results FILE.json (repeatable)")
    new: dict[str, dict[str, Any]] = {}
    for p in map(Path, paths):
        data = load_device_results(p)
        _check_same_model(p, data, run, run_dir)
        new.update(_merged_rows(p, data, run_dir))
    rows = {**load_merged(run_dir), **new}
    return write_json(run_dir / MERGED, {"format": MERGED_FORMAT, "updated": now(), "rows": rows})


def load_merged(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The device rows kept in a run directory, by name ({} when there are none)."""
    path = Path(run_dir) / MERGED
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise _bad(path, f"not valid JSON ({e})", "delete it and merge the device results again "
                   "(edgevit report RUN --device-results FILE.json)") from None
    if not isinstance(data, dict) or data.get("format") != MERGED_FORMAT or not isinstance(data.get("rows"), dict):
        raise _bad(path, f"not an {MERGED_FORMAT!r} file", "delete it and merge the device results again")
    return data["rows"]


def device_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The kept device rows as report rows: the engine's size as size_mb, no accuracy (measured elsewhere)."""
    out = []
    for name, r in sorted(load_merged(run_dir).items()):
        row = {**r, "name": name, "measured_on": "device"}
        if row.get("size_mb") is None and row.get("engine_size_mb") is not None:
            row["size_mb"] = row["engine_size_mb"]
        out.append(row)
    return out


def is_device_row(row: dict[str, Any]) -> bool:
    return row.get("measured_on") == "device"
