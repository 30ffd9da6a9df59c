"""Target options on the command line, from the one table of targets.

Every option of every registered target's ``Options`` dataclass is a ``--flag`` of ``export``,
``quantize`` and ``zeroshot``: typed by its field, helped by the field's help (or its target's
``option_help``), followed by its default and the targets that honour it. The flags are read from the
table each time the command line is built, so a target registered from anywhere (a plugin, a test)
brings its flags, and its help, with no edit here. Every flag defaults to "not given" (None): the
defaults live in the dataclasses, and a flag given at its default value is still given (so it is refused
where no chosen target honours it).
"""
from __future__ import annotations

import copy
import inspect
from types import UnionType
from typing import Any, Callable, List, Optional, Union, get_args, get_origin

import typer

from ..errors import TargetError
from .common import given

INT8_PANEL = "int8 (calibration, --max-drop, QAT)"
TARGET_PANEL = "target options (`edgevit targets --options`)"


def cli_type(tp: Any) -> Any:
    """An option's type as a typer annotation: ``int | None`` -> Optional[int], ``list[str]`` ->
    Optional[List[str]] (None: not given)."""
    inner = next(a for a in get_args(tp) if a is not type(None)) if get_origin(tp) in (Union, UnionType) else tp
    if get_origin(inner) is list:
        return Optional[List[get_args(inner)[0]]]
    return Optional[inner]


def option_help(f) -> str:
    """``what it does (default 300; honoured by onnx-int8, openvino-int8)``."""
    shown = "on" if f.default is True else repr(f.default) if isinstance(f.default, str) else f.default
    default = f"default {shown}; " if f.default not in (None, False, []) else ""
    return f"{f.help or f.name.replace('_', ' ')} ({default}honoured by {', '.join(f.targets)})"


def option_parameters(taken: set[str]) -> list[inspect.Parameter]:
    """One keyword parameter (a typer option) per target option, in the table's order."""
    from ..targets import list_targets, option_fields  # the table alone: --help need not import the api

    int8 = {t.name for t in list_targets() if t.int8}
    params = []
    for f in option_fields().values():
        if f.name in taken:
            raise TargetError(f"target option {f.name!r} ({', '.join(f.targets)}) has the name of a command option",
                              "give the target option another name")
        decl = "--" + f.name.replace("_", "-")
        if cli_type(f.type) == Optional[bool] and f.default is True:
            decl = f"{decl}/--no-{decl[2:]}"
        info = typer.Option(None, decl, help=option_help(f), show_default=False,
                            rich_help_panel=INT8_PANEL if set(f.targets) <= int8 else TARGET_PANEL)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                        annotation=cli_type(f.type)))
    return params


class TargetOptionsCommand:
    """A typer command with a flag per target option, generated from the table each time the command
    line is built. ``fn`` takes its own parameters and ``options``: the target options given.
    ``defaults`` computes a parameter's default at that time too (quantize's int8 targets)."""

    def __init__(self, fn: Callable[..., Any], doc: str | None = None,
                 defaults: dict[str, Callable[[], Any]] | None = None):
        self.fn, self.defaults = fn, dict(defaults or {})
        self.__name__ = self.__qualname__ = fn.__name__
        self.__module__, self.__doc__ = fn.__module__, doc or fn.__doc__

    @property
    def __signature__(self) -> inspect.Signature:
        own = inspect.signature(self.fn, eval_str=True)
        params = []
        for p in own.parameters.values():
            if p.name == "options":
                continue
            if p.name in self.defaults:
                info = copy.copy(p.default)
                info.default = self.defaults[p.name]()
                p = p.replace(default=info)
            params.append(p)
        return own.replace(parameters=[*params, *option_parameters({p.name for p in params})])

    def __call__(self, **kwargs: Any) -> Any:
        from ..targets import option_fields

        names = set(option_fields())
        options = given({k: kwargs.pop(k) for k in list(kwargs) if k in names})
        return self.fn(**kwargs, options=options)
