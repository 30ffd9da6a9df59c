"""Report sections that the targets declare: each artifact's target gives its rows (how an int8
graph was made, whether a device package was built and how it was checked), grouped by section
title. A new target's section appears with no edit here."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..manifest import read_json
from ..targets import get_target


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
            out.setdefault(title, []).append(row)
    return out


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
