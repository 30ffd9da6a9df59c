"""What every backend implements, and the one table of targets.

A target is one file in this package: a :class:`Target` subclass that declares what it requires,
the library versions it records, a typed ``Options`` dataclass (exactly the options it honours),
its report sections (:meth:`Target.report_rows`) and its end-of-run notice, and registers its
instances with :func:`register`.
Export, validation, benchmarks, recipes and reports read this table and nothing else.

A target writes its files into a directory it is given (a temporary one: the run renames it into
place only once the files are complete and checked), and loads them back as a :class:`Runner`,
a callable from a float32 NCHW batch to float32 logits.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_type_hints

import numpy as np

from ..errors import ArtifactError, OptionError, TargetError
from ..manifest import read_json

MANIFEST = "manifest.json"


@dataclass
class NoOptions:
    """The options of a target that honours none."""


@dataclass
class Runner:
    """A loaded artifact: ``runner(x)`` -> logits, plus what the runtime actually chose."""

    predict: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.predict(np.ascontiguousarray(x, dtype=np.float32))


@dataclass
class ExportContext:
    """Everything a target is given to make its artifact, besides the float ONNX."""

    options: Any  # the target's own ``Options`` instance
    input_size: list[int]  # C, H, W
    torch_model: Any = None  # the float PyTorch model (CoreML converts it rather than the ONNX)
    calib: Any = None  # edgevit.quant.calibration.CalibSet when the target needs calibration
    control: tuple[np.ndarray, np.ndarray] | None = None  # labelled images for --max-drop
    qat: Any = None  # edgevit.quant.qat.QatGraph: the fine-tuned Q/DQ graph int8 targets convert
    progress: Callable[[str], None] = lambda _: None


class Target:
    """One backend at one precision. Subclasses set the class attributes and the verbs."""

    backend: str = ""
    requires: tuple[str, ...] = ()  # python modules that must import
    fp16_peer: str | None = None  # the fp16 target an int8 graph must beat where fp32 compute costs (GPU runtimes)
    records: tuple[str, ...] = ()  # distributions whose versions its manifest records
    model_file: str = ""  # the main file inside the artifact directory
    Options: type = NoOptions  # a dataclass: the options this target honours, with their defaults

    def __init__(self, name: str, precision: str, description: str):
        self.name, self.precision, self.description = name, precision, description

    # -- the verbs ---------------------------------------------------------------------
    def export(self, onnx_fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
        """Write the artifact's files into ``out_dir``; return facts for the manifest."""
        raise NotImplementedError

    def load(self, art_dir: Path, threads: int | None = None) -> Runner:
        raise NotImplementedError

    # -- what the run asks of it ---------------------------------------------------------
    def not_runnable(self) -> str | None:
        """Why this machine cannot run the artifact (then it is checked structurally), or None."""
        return None

    def needs_calibration(self, options: Any) -> bool:
        """Does the export with these options need calibration images?"""
        return False

    def check_options(self, options: Any) -> None:
        """Refuse options this target cannot honour here, before any work."""
        if hasattr(options, "check"):
            options.check()

    def report_rows(self, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
        """Its artifact's rows in the run report: {section title: {column: text}} ({} for none)."""
        return {}

    def notice(self, manifest: dict[str, Any], art_dir: Path) -> str | None:
        """A note printed at the end of the run (e.g. how to finish the artifact on the device)."""
        return None

    # -- shared ------------------------------------------------------------------------
    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def inspect(self, art_dir: Path) -> dict[str, Any]:
        """``edgevit inspect``: the precision map of the graph that ships (ONNX graphs here; a target
        shipping another format overrides this)."""
        path = art_dir / self.model_file
        if path.suffix != ".onnx":
            raise ArtifactError(f"{art_dir} ({self.name}) ships {self.model_file}; edgevit inspect reads ONNX graphs "
                                "(onnx*, tensorrt-*) and OpenVINO IR", "inspect an onnx or tensorrt artifact")
        from ..precision import precision_map

        return {"target": self.name, "graph": precision_map(path, fp16_peer=self.fp16_peer)}

    def status(self) -> str:
        """``edgevit targets``' status column: "ready", or what is missing here."""
        return f"needs {', '.join(miss)}" if (miss := self.missing()) else "ready"

    def check_available(self) -> None:
        if miss := self.missing():
            raise TargetError(f"target {self.name!r} needs {', '.join(miss)}, which is not installed",
                              f"pip install {' '.join(miss)}")

    def files(self, art_dir: Path) -> list[Path]:
        return sorted(p for p in art_dir.iterdir() if p.is_file() and p.name != MANIFEST)

    def size_bytes(self, art_dir: Path) -> int:
        return sum(p.stat().st_size for p in self.files(art_dir))


# -- the table ---------------------------------------------------------------------------------
TARGETS: dict[str, Target] = {}
PLANNED: dict[str, str] = {}  # targets announced but not built yet: asking for one says so


def register(*targets: Target) -> None:
    """Add targets to the table (each target module calls this for its own instances)."""
    for t in targets:
        if t.name in TARGETS and TARGETS[t.name] is not t:
            raise TargetError(f"target {t.name!r} registered twice", "give the new target another name")
        TARGETS[t.name] = t


def unregister(name: str) -> None:
    TARGETS.pop(name, None)


def get_target(name: str) -> Target:
    if name in TARGETS:
        return TARGETS[name]
    if name in PLANNED:
        raise TargetError(f"target {name!r} ({PLANNED[name]}) is not built in this version of edgevit",
                          f"use one of: {', '.join(TARGETS)} (see `edgevit targets`)")
    raise TargetError(f"unknown target {name!r}", f"use one of: {', '.join(TARGETS)} (see `edgevit targets`)")


def list_targets() -> list[Target]:
    return list(TARGETS.values())


@dataclass(frozen=True)
class OptionField:
    name: str
    type: Any
    default: Any
    targets: tuple[str, ...]  # the targets that honour it


def option_fields() -> dict[str, OptionField]:
    """Every target option by name: its type, default and the targets that honour it."""
    table: dict[str, OptionField] = {}
    for t in TARGETS.values():
        hints = get_type_hints(t.Options)
        for f in dataclasses.fields(t.Options):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            old = table.get(f.name)
            if old and (old.type != hints[f.name] or old.default != default):
                raise TargetError(f"option {f.name!r} of target {t.name!r} differs in type or default from "
                                  f"{', '.join(old.targets)}'s", "give the option another name")
            table[f.name] = OptionField(f.name, hints[f.name], default,
                                        (*old.targets, t.name) if old else (t.name,))
    return table


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def given_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options whose value differs from the default (what the user asked for)."""
    table = option_fields()
    return {k: v for k, v in values.items() if k not in table or v != table[k].default}


def check_honoured(targets: list[Target], given: dict[str, Any]) -> None:
    """An option none of ``targets`` honours is an error naming it and the targets that do."""
    table = option_fields()
    for name in given:
        if name not in table:
            raise OptionError(f"unknown target option {name!r}",
                              f"known options: {', '.join(sorted(table))}")
        if not set(table[name].targets) & {t.name for t in targets}:
            raise OptionError(f"{flag(name)} is not honoured by {', '.join(t.name for t in targets)}",
                              f"it applies to {', '.join(table[name].targets)}: add one of them to --target, "
                              f"or drop {flag(name)}")


def options_for(target: Target, given: dict[str, Any]) -> Any:
    """``target.Options`` filled with the given options it honours (its defaults elsewhere)."""
    names = {f.name for f in dataclasses.fields(target.Options)}
    return target.Options(**{k: v for k, v in given.items() if k in names})


REQUIRED_KEYS = ("target", "model", "data_config", "precision")


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Artifact directory (or a file inside it) -> (directory, manifest); a broken artifact (corrupt
    or incomplete manifest, missing model file) is an ArtifactError naming what is wrong."""
    p = Path(path)
    art_dir = p if p.is_dir() else p.parent
    mf = art_dir / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{p} is not an edgevit artifact (no {MANIFEST} beside it)",
                            "pass a directory made by `edgevit export`, e.g. runs/<name>/artifacts/onnx")
    fix = "re-run the export that made it (artifacts are never edited by hand)"
    data = read_json(mf, "manifest", fix, ArtifactError)
    if not isinstance(data, dict):
        raise ArtifactError(f"{mf} holds no manifest (a JSON {type(data).__name__}, not an object)", fix)
    if missing := [k for k in REQUIRED_KEYS if k not in data]:
        raise ArtifactError(f"{mf} is incomplete: no {', '.join(repr(k) for k in missing)}", fix)
    lost = [f for f in data.get("files", []) if not (art_dir / f).exists()]  # a CoreML package is a folder
    if lost:
        raise ArtifactError(f"artifact {art_dir} is missing {', '.join(lost)} (listed in its manifest)", fix)
    return art_dir, data
