"""Progress for people and for logs.

On a terminal a long step draws a rich progress bar. When stderr is not a terminal (CI, ``nohup``,
``| tee``) the same step prints one plain line every ``EDGEVIT_LOG_EVERY`` seconds (default 30) and
one at its end, e.g. ``epoch 3/20: 120/400 (30%) 1m12s elapsed, ~2m48s left  loss 0.53``; a
step shorter than that prints nothing. ``EDGEVIT_PROGRESS`` overrides the choice: ``1`` draws the
bar, ``plain`` prints the lines, ``0`` prints neither (the tests use it).

The consoles made here never wrap a message mid-sentence when they do not write to a terminal, and
``table()`` makes tables whose cells are never cut to ``pytor…``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

LOG_WIDTH = 500  # columns of a console that is not a terminal: tables are never squeezed


def _for_logs(c: Console) -> Console:
    """Off a terminal: no wrapping of messages (soft wrap) and room for the widest table."""
    if not c.is_terminal:
        c.soft_wrap = True
        c.width = max(LOG_WIDTH, c.width)
    return c


def stdout_console() -> Console:
    """The console for results (tables, paths); see the module docstring."""
    return _for_logs(Console())


def stderr_console() -> Console:
    """A console for messages; prefer the shared ``console`` so messages and bars interleave cleanly."""
    return _for_logs(Console(stderr=True))


console = stderr_console()


def table(*headers: str, title: str | None = None, **kwargs: Any) -> Table:
    """A rich Table whose cells wrap (at spaces, else fold) instead of being cut to ``name…``."""
    t = Table(title=title, **kwargs)
    for h in headers:
        t.add_column(h, overflow="fold")
    return t


def _mode() -> str:
    """'bar', 'plain' or 'off'."""
    env = os.environ.get("EDGEVIT_PROGRESS", "").strip().lower()
    if env in ("0", "off", "false", "no"):
        return "off"
    if env in ("1", "bar", "true", "yes"):
        return "bar"
    if env == "plain":
        return "plain"
    return "bar" if sys.stderr.isatty() else "plain"


def log_every() -> float:
    """Seconds between two plain progress lines (``EDGEVIT_LOG_EVERY``, default 30)."""
    try:
        return max(0.01, float(os.environ.get("EDGEVIT_LOG_EVERY", "30")))
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _info(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


class _Plain:
    """The state of one plain-line step; ``line()`` describes it now."""

    def __init__(self, label: str, total: int | None, unit: str):
        self.label, self.total, self.unit = label, total, unit
        self.done, self.info, self.t0 = 0, "", time.monotonic()

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        if fields:
            self.info = _info(fields)

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        if self.total:
            pct = 100.0 * self.done / self.total
            text = f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {duration(elapsed)} elapsed"
            if 0 < self.done < self.total:
                text += f", ~{duration(elapsed * (self.total - self.done) / self.done)} left"
        else:
            done = f"{self.done} {self.unit}, " if self.done else ""
            text = f"{self.label}: {done}{duration(elapsed)} elapsed"
        return text + (f"  {self.info}" if self.info else "")


@contextlib.contextmanager
def _plain_lines(label: str, total: int | None, unit: str) -> Iterator[Callable[..., None]]:
    state, stop, every = _Plain(label, total, unit), threading.Event(), log_every()
    printed = []

    def beat() -> None:
        while not stop.wait(every):
            say(state.line())
            printed.append(True)

    thread = threading.Thread(target=beat, name=f"edgevit-progress-{label}", daemon=True)
    thread.start()
    try:
        yield state.advance
    finally:
        stop.set()
        thread.join()
    if printed:  # a long step also says where it ended; a short one stays silent
        say(state.line())


@contextlib.contextmanager
def _rich_bar(label: str, total: int | None) -> Iterator[Callable[..., None]]:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(label, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            prog.update(task, advance=n, **({"info": _info(fields)} if fields else {}))

        yield advance


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, unit: str = "it") -> Iterator[Callable[..., None]]:
    """``with progress_bar("x", 100) as advance: advance(1, loss=0.3)`` (extra fields are shown).

    ``total=None`` is a step of unknown length (its plain lines give the elapsed time: a heartbeat
    for a long export or calibration); ``total=0`` shows nothing (e.g. on the other ranks).
    """
    mode = _mode()
    if mode == "off" or total == 0:
        yield lambda n=1, **fields: None
    elif mode == "bar":
        with _rich_bar(label, total) as advance:
            yield advance
    else:
        with _plain_lines(label, total, unit) as advance:
            yield advance


def heartbeat(label: str) -> contextlib.AbstractContextManager:
    """``with heartbeat("int8 calibration"):`` a long call with no steps says it is still running."""
    return progress_bar(label, total=None, unit="")


def say(msg: str, plain: str = "") -> None:
    """Print ``msg`` (rich markup) followed by ``plain`` (paths and other user text: never markup)."""
    if not plain:
        console.print(msg, highlight=False)
        return
    from rich.text import Text

    text = Text.from_markup(msg)
    text.append(plain)
    console.print(text, highlight=False)
