"""The export targets: one file per backend, each registering its targets in the one table
(:mod:`edgevit.targets.base`). The CLI, validation, benchmarks, recipes and reports read it.

A new backend is one more file here, named in :data:`BACKENDS` (or imported by the user's code: a
target registered from anywhere is taken the same way).

The backends register when the table is first asked for (any name of ``__all__``), not when the
package is imported: ``edgevit.targets.trt_runtime``, the TensorRT runtime a Jetson without PyTorch
imports, loads none of them (the float ONNX export they share imports torch).
"""
from __future__ import annotations

import importlib
from typing import Any

# the order `edgevit targets` lists them in
BACKENDS = ("onnx", "openvino", "tensorrt", "coreml", "executorch", "litert")

__all__ = ["TARGETS", "PLANNED", "Target", "Runner", "ExportContext", "NoOptions", "OptionField", "MANIFEST",
           "register", "unregister", "get_target", "list_targets", "read_manifest", "option_fields", "given_options",
           "check_honoured", "options_for"]

_loaded: list[bool] = []


def load_backends() -> None:
    """Import every backend (each registers its targets), once; the table lists them in :data:`BACKENDS`
    order, whichever was imported first, then targets registered elsewhere in their order."""
    if _loaded:
        return
    for name in BACKENDS:
        importlib.import_module(f"{__name__}.{name}")
    from .base import TARGETS

    rank = {f"{__name__}.{name}": i for i, name in enumerate(BACKENDS)}
    ordered = sorted(TARGETS.items(), key=lambda kv: rank.get(type(kv[1]).__module__, len(BACKENDS)))
    TARGETS.clear()
    TARGETS.update(ordered)
    _loaded.append(True)


def __getattr__(name: str) -> Any:
    """The table's names (:mod:`edgevit.targets.base`), with every backend registered first."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    load_backends()
    from . import base

    value = getattr(base, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
