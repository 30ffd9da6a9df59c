"""Rich progress bars that stay quiet when output is not a terminal (CI logs, tests)."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


def _enabled() -> bool:
    if os.environ.get("EDGEVIT_PROGRESS") in ("0", "1"):
        return os.environ["EDGEVIT_PROGRESS"] == "1"
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, unit: str = "it") -> Iterator[Callable[..., None]]:
    """``with progress_bar("x", 100) as advance: advance(1, loss=0.3)`` (extra fields are shown)."""
    if not _enabled():
        yield lambda n=1, **fields: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(label, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            prog.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


def say(msg: str) -> None:
    console.print(msg, highlight=False)
