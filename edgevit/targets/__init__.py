"""The export targets: one file per backend, each registering its targets in the one table
(:mod:`edgevit.targets.base`). The CLI, validation, benchmarks, recipes and reports read it.

A new backend is one more file here, imported below (or imported by the user's code: a target
registered from anywhere is taken the same way).
"""
from __future__ import annotations

# The order of registration is the order `edgevit targets` lists; each module registers its targets.
from . import onnx, openvino, tensorrt, coreml  # noqa: F401, I001  # isort: skip
from .base import (
    MANIFEST,
    PLANNED,
    TARGETS,
    ExportContext,
    NoOptions,
    OptionField,
    Runner,
    Target,
    check_honoured,
    get_target,
    given_options,
    list_targets,
    option_fields,
    options_for,
    read_manifest,
    register,
    unregister,
)

__all__ = ["TARGETS", "PLANNED", "Target", "Runner", "ExportContext", "NoOptions", "OptionField", "MANIFEST",
           "register", "unregister", "get_target", "list_targets", "read_manifest", "option_fields", "given_options",
           "check_honoured", "options_for"]
