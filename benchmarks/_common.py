"""Shared by the benchmark scripts: machine facts, checks, and the results files.

``benchmarks/results/<script>.json`` keeps one entry per CPU ISA class
(:func:`edgevit.eval.machine.isa_class`: avx2, avx-vnni, avx512, avx512-vnni, amx, unknown), since a
latency figure of one class says nothing about another (int8 without VNNI is not faster than float)::

    {"command": "<the latest run's command>",
     "entries": {"avx2":        {"command", "created", "machine", "versions", <extra...>,
                                 "rows": [...], "checks": [...], "figures": [...]},
                 "avx512-vnni": {...}},
     "rows":    [{"isa_class": "avx2", <row>}, ...],                    # derived: every entry's rows,
     "checks":  [{"isa_class": "avx2", "name", "value", "op", "bar", "ok"}, ...],   # checks
     "figures": [{"isa_class": "avx2", "name", "value", "why"}, ...]}  # and figures (only if any)

A run replaces its own class's entry whole (two runs' figures never mix in one entry) and leaves the
other classes' entries as they are; the top-level lists are rebuilt from the entries on every write,
so ``../shared/tools/check_results.py FILE`` checks every class's checks. A file of the older single
run layout (no ``entries``) becomes the entry of its own ``machine.isa`` class when next written.

A bar that holds only on some classes is chosen with :func:`isa_bar`; where it gives None (the
physics says the bar does not apply on this class), :func:`check` needs ``why`` and returns a
*figure* ``{"name", "value", "why"}``: the value is reported in the entry's ``figures``, not checked.
"""
from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
DERIVED = ("rows", "checks", "figures")  # the top-level lists rebuilt from the entries


def check(name: str, value: float, op: str, bar: float | None, why: str | None = None) -> dict[str, Any]:
    """A check ``value op bar``; with ``bar`` None (see :func:`isa_bar`) a figure, reported with ``why``."""
    assert op in (">=", "<=")
    if bar is None:
        assert why, f"{name}: a check without a bar needs the reason the bar does not apply"
        return {"name": name, "value": float(value), "why": why}
    return {"name": name, "value": float(value), "op": op, "bar": bar,
            "ok": bool(value >= bar if op == ">=" else value <= bar)}


def is_figure(c: dict[str, Any]) -> bool:
    return "ok" not in c


def isa_bar(bars: dict[str, float | None], default: float | None = None) -> float | None:
    """The bar for this machine's ISA class: ``bars[class]`` where listed, else ``default``; None means
    the bar does not apply on this class (pass :func:`check` a ``why`` then)."""
    from edgevit.eval.machine import ISA_CLASSES, isa_class

    wrong = set(bars) - {*ISA_CLASSES, "unknown"}
    assert not wrong, f"not ISA classes: {sorted(wrong)}"
    return bars.get(isa_class(isa()), default)


def machine() -> dict[str, Any]:
    import platform

    from edgevit.eval.machine import cpu_facts

    facts = cpu_facts()
    return {"cpu": facts["cpu"], "cores": facts["cores"], "isa": isa(), "python": platform.python_version(),
            "platform": platform.platform()}


def isa() -> list[str] | None:
    """The instruction-set extensions that decide int8 and bf16 speed (OpenVINO, ONNX Runtime) on this CPU
    (:data:`edgevit.eval.machine.ISA_FLAGS`); None where they cannot be read."""
    from edgevit.eval.machine import cpu_facts

    return cpu_facts()["isa"]


def results_path(script: str) -> Path:
    return RESULTS / f"{Path(script).stem}.json"


def load_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a results file by ISA class ({} without a file); a file of the single-run layout
    is one entry, of the class of its ``machine.isa``."""
    from edgevit.eval.machine import isa_class

    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if "entries" in data:
        return data["entries"]
    return {isa_class((data.get("machine") or {}).get("isa")): data}


def compose(entries: dict[str, dict[str, Any]], command: str) -> dict[str, Any]:
    """The whole file: ``command``, the entries (in ISA class order) and the lists derived from them."""
    from edgevit.eval.machine import ISA_CLASSES

    order = {c: i for i, c in enumerate(ISA_CLASSES)}
    entries = dict(sorted(entries.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    out: dict[str, Any] = {"command": command, "entries": entries}
    for key in DERIVED:
        tagged = [{"isa_class": cls, **{k: v for k, v in item.items() if k != "isa_class"}}
                  for cls, entry in entries.items() for item in entry.get(key) or []]
        if tagged or key != "figures":
            out[key] = tagged
    return out


def write_entries(path: Path, entries: dict[str, dict[str, Any]], command: str) -> Path:
    from edgevit.manifest import write_json

    return write_json(path, compose(entries, command))  # temporary file, then rename


def write_results(script: str, rows: list[dict[str, Any]], checks: list[dict[str, Any]], **extra: Any) -> Path:
    """Write this run as the entry of this machine's ISA class in ``results/<script>.json``; the other
    classes' entries are kept. ``checks`` may hold figures (:func:`check` with a None bar)."""
    from edgevit.eval.machine import isa_class
    from edgevit.manifest import library_versions

    assert not set(extra) & {"entries", "figures"}, "extra keys clash with the results layout"
    path = results_path(script)
    cmd = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(script).name}", *sys.argv[1:]])
    mach = machine()
    figures = [c for c in checks if is_figure(c)]
    entry = {"command": cmd, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "machine": mach, "versions": library_versions(), **extra, "rows": rows,
             "checks": [c for c in checks if not is_figure(c)], **({"figures": figures} if figures else {})}
    cls = isa_class(mach["isa"])
    try:
        entries = load_entries(path)
    except (OSError, ValueError) as e:  # unreadable: set aside, never silently dropped
        aside = path.with_name(f"{path.name}.unreadable-{dt.datetime.now():%Y%m%d-%H%M%S}")
        path.rename(aside)
        print(f"warning: {path} could not be read ({e}); moved to {aside}", file=sys.stderr)
        entries = {}
    kept = sorted(c for c in entries if c != cls)
    write_entries(path, {**entries, cls: entry}, cmd)
    for c in checks:
        print(f"  FIGURE {c['name']} = {c['value']:.4g} (no bar: {c['why']})" if is_figure(c) else
              f"  {'PASS' if c['ok'] else 'MISS'} {c['name']} = {c['value']:.4g} {c['op']} {c['bar']}")
    print(f"wrote {path} [{cls}]" + (f"; kept the entries of {', '.join(kept)}" if kept else ""))
    return path


def read_entry(script: str, isa_class: str | None = None) -> dict[str, Any] | None:
    """The entry of ``isa_class`` (default: this machine's) in ``results/<script>.json``, or None."""
    from edgevit.eval import machine as m

    return load_entries(results_path(script)).get(isa_class or m.isa_class(isa()))


def migrate(path: Path) -> Path:
    """Rewrite a results file in the per-class layout (an old single-run file becomes one entry); no
    figure changes. The top-level command stays that of the latest entry."""
    entries = load_entries(path)
    latest = max(entries.values(), key=lambda e: e.get("created", ""))
    return write_entries(path, entries, latest.get("command", ""))
