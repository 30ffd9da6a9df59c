"""The ``edgevit`` command: a thin typer layer over :mod:`edgevit.api`, one module per command group
(:mod:`.export`, :mod:`.train`, :mod:`.info`, :mod:`.inspect`); errors and exit codes in :mod:`.common`."""
from __future__ import annotations

import sys

import typer

from . import export, info, inspect, optimize, train, zeroshot
from .common import friendly, print_error

app = typer.Typer(
    help="Vision Transformers from training to the edge device.\n\n"
         "Start offline with `edgevit quickstart`; export a model with "
         "`edgevit export --model deit_tiny --target openvino --checkpoint weights.pth --data val/`.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
for group in (info, inspect, export, optimize, train, zeroshot):
    group.register(app)

__all__ = ["app", "main", "friendly", "print_error"]


def main() -> None:  # console-script entry point
    from ..quiet import silence_third_party

    silence_third_party()
    app()


if __name__ == "__main__":
    sys.exit(main())
