"""Model transforms (token pruning and merging, and any that register here), composed with ``+``.

    >>> from edgevit import transforms
    >>> model, spec, facts = transforms.build_model(ModelSpec("deit_tiny", checkpoint="w.pth", prune="evit:0.7+tome:4"))

A new transform is one file that defines a class and decorates it with
:func:`~edgevit.transforms.base.register` (see :mod:`edgevit.transforms.base`; a token transform
supplies :class:`~edgevit.transforms.tokens.TokenPart` too), imported below or by its user (a plugin,
a test: ``tests/toy_transform.py``); specs, recipes, manifests, reports, the command line's help and
`edgevit optimize`'s default search space take it with no other edit.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..models import ModelSpec, create_model, with_checkpoint_hash
from . import evit, tome  # noqa: F401  (they register themselves)
from .base import TRANSFORMS, Transform, TransformError, forms, forms_help, register, unregister

__all__ = ["TRANSFORMS", "Transform", "TransformError", "register", "unregister", "parse", "spec_text", "apply",
           "build_model", "recorded", "forms", "forms_help"]


def parse(text: str | None) -> list[Transform]:
    """'evit:0.7+tome:4' -> the transforms, in order; errors name the accepted forms."""
    if not text:
        return []
    out = []
    for part in str(text).split("+"):
        name, _, arg = part.strip().partition(":")
        if name not in TRANSFORMS or not arg:
            raise TransformError(f"unknown transform spec {part.strip()!r}" + (f" in {text!r}" if "+" in text else ""),
                                 f"write one of {forms()}, several joined by '+' (e.g. evit:0.7+tome:4)")
        out.append(TRANSFORMS[name].parse(arg))
    return out


def spec_text(transforms: list[Transform]) -> str | None:
    return "+".join(str(t) for t in transforms) or None


def describe(model: torch.nn.Module, transforms: list[Transform]) -> dict[str, Any]:
    """The facts of every transform on ``model``: ``spec`` is the resolved text that rebuilds it."""
    facts: dict[str, Any] = {}
    specs, methods = [], []
    for t in transforms:
        f = t.describe(model)
        specs.append(f.pop("spec"))
        methods.append(f.pop("method", t.name))
        facts.update(f)
    return {"spec": "+".join(specs), "method": "+".join(methods), **facts} if specs else {}


def apply(model: torch.nn.Module, text: str) -> dict[str, Any]:
    """Apply a spec to a built model in place (weights already loaded); returns its facts. Transforms
    that change weight shapes go through :func:`build_model` instead, before the weights load."""
    ts = parse(text)
    if early := [str(t) for t in ts if t.changes_shapes]:
        raise TransformError(f"{', '.join(early)} changes weight shapes: it applies before the weights load",
                             "build the model with edgevit.transforms.build_model(spec)")
    for t in ts:
        t.apply(model)
    return describe(model, ts)


def build_model(spec: ModelSpec) -> tuple[torch.nn.Module, ModelSpec, dict[str, Any]]:
    """The float model of ``spec`` with its transforms (``spec.prune``) applied.

    Returns (model, the spec as recorded: resolved transform text and checkpoint hash, transform
    facts). ``spec`` itself is not changed."""
    model = create_model(spec, parse(spec.prune))
    return (model, *recorded(model, spec))


def recorded(model: torch.nn.Module, spec: ModelSpec) -> tuple[ModelSpec, dict[str, Any]]:
    """(the spec as manifests record it, transform facts) for a model built from ``spec``."""
    facts = describe(model, parse(spec.prune))
    return dataclasses.replace(with_checkpoint_hash(spec), prune=facts.get("spec")), facts
