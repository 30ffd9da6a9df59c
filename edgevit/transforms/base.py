"""What a model transform is, and the table of them.

A transform is one file in this package: a class with a ``name``, ``parse`` (its text form after
``name:``), ``apply`` (changes a model in place), ``describe`` (facts for the manifest, read off the
transformed model) and ``changes_shapes`` (then it is applied before the weights load, so the
checkpoint of its fine-tune reloads), registered with :func:`register`. Its ``forms`` (and an
``example``, if it gives one) are the command line's help. A token transform supplies more:
:class:`edgevit.transforms.tokens.TokenPart` (its plan, reduction, scaling and search entries).
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from ..errors import ModelError


class TransformError(ModelError):
    """A transform spec that cannot be read, or cannot apply to this model."""


class Transform(Protocol):
    name: ClassVar[str]
    changes_shapes: ClassVar[bool]
    forms: ClassVar[str]  # the accepted text, for errors and --help, e.g. 'evit:KEEP[@BLOCKS]'
    # optional: example: ClassVar[str], one spec of it for --help, e.g. 'evit:0.7@3,6,9'

    @classmethod
    def parse(cls, arg: str) -> Transform: ...

    def apply(self, model: torch.nn.Module) -> None: ...

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        """Facts about the transformed model, with ``spec``: the text that rebuilds it exactly."""
        ...


TRANSFORMS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: add a transform to the table under its ``name``."""
    if cls.name in TRANSFORMS and TRANSFORMS[cls.name] is not cls:
        raise TransformError(f"transform {cls.name!r} registered twice", "give the new transform another name")
    TRANSFORMS[cls.name] = cls
    return cls


def forms() -> str:
    return " | ".join(c.forms for c in TRANSFORMS.values())


def unregister(name: str) -> None:
    """Remove a transform from the table (a plugin or test undoing its :func:`register`)."""
    TRANSFORMS.pop(name, None)


def forms_help() -> str:
    """The accepted forms for --help, each with its example where it gives one, and a composition:
    ``evit:KEEP[@BLOCKS] (e.g. evit:0.7@3,6,9), tome:R (e.g. tome:8); several joined by '+', e.g. ...``."""
    examples = [c.example for c in TRANSFORMS.values() if getattr(c, "example", None)]
    each = ", ".join(f"{c.forms} (e.g. {c.example})" if getattr(c, "example", None) else c.forms
                     for c in TRANSFORMS.values())
    return each + (f"; several joined by '+', e.g. {'+'.join(examples[:2])}" if len(examples) > 1 else "")
