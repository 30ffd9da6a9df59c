"""What every command shares: one way to print an error, exit codes, option lists, default outputs."""
from __future__ import annotations

import errno
import functools
from pathlib import Path
from typing import Any, Callable

import typer
from rich.markup import escape
from rich.text import Text
from typer.core import TyperCommand

from ..errors import EdgeVitError, describe, os_error_fix
from ..progress import console as err
from ..progress import stdout_console

out = stdout_console()

# File-system failures that are the environment's, not a bug's: a full disk, no permission, a
# name too long. Anything else keeps its traceback.
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG,
               errno.ENOTDIR, errno.ELOOP, errno.EISDIR}


def print_error(what: str, fix: str | None = None) -> None:
    """One red ``error:`` line and a ``fix:`` line; user text is never read as rich markup."""
    err.print(Text.assemble(("error: ", "bold red"), what), soft_wrap=True)
    if fix:
        err.print(Text.assemble(("fix: ", "yellow"), fix), soft_wrap=True)


def friendly(fn):
    """EdgeVitError -> one clear red message and exit code 2; Ctrl-C -> exit 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeVitError as e:
            print_error(e.what, e.fix)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            if e.errno not in _ENV_ERRNOS:
                raise
            verb = "write" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
            where = f" {e.filename}" if e.filename else ""
            print_error(f"cannot {verb}{where}: {e.strerror or describe(e)}", os_error_fix(e))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted: unfinished artifacts were removed; completed ones are kept", style="bold red")
            raise typer.Exit(130) from None
    return wrapper


def split_targets(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def fresh(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : a default output never clobbers an earlier run."""
    path, i = base, 2
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def default_out(model: str, targets: list[str]) -> Path:
    return fresh(Path("runs") / f"{model}-{'+'.join(targets) if len(targets) <= 2 else 'multi'}")


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (typer's None: not given; an empty list: not given)."""
    return {k: v for k, v in values.items() if v is not None and v != []}


def live_help(**helps: Callable[[], str]) -> type[TyperCommand]:
    """A command class whose options' help (option name -> a function making the text) is made when the
    help is shown, from tables filled at run time (the transforms a plugin or a test registered), and
    without importing them for any other use of the command line."""

    class LiveHelp(TyperCommand):
        def format_help(self, ctx, formatter) -> None:
            for p in self.params:
                if p.name in helps:  # forms such as evit:KEEP[@BLOCKS] are text, not rich markup
                    text = helps[p.name]()
                    p.help = escape(text) if self.rich_markup_mode == "rich" else text
            return super().format_help(ctx, formatter)

    return LiveHelp


def prune_help() -> str:
    """``--prune``'s help: the transforms registered now, with their forms."""
    from ..transforms import forms_help

    return f"transforms before export: {forms_help()}; see `edgevit prune`"
