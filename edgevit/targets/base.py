"""What every backend implements, and the one table of targets.

A target is one file in this package (or anywhere): a :class:`Target` subclass that declares what it
requires, the library versions it records, a typed ``Options`` dataclass (exactly the options it
honours, each with its help: :func:`option`), its report sections (:meth:`Target.report_rows`) and its
end-of-run notice, and the facts the reports, the command line and ``edgevit optimize`` read of it
(its backend's label, colour and ISA sensitivity, where it is timed, its float twin, its family), and
registers its instances with :func:`register`. Export, validation, benchmarks, recipes, reports, the
CLI's target options and the search read this table and nothing else: :func:`option_fields` here, and
what :mod:`edgevit.targets.registry` derives (int8 targets, float twins, families, backends).

A target writes its files into a directory it is given (a temporary one: the run renames it into
place only once the files are complete and checked), and loads them back as a :class:`Runner`,
a callable from a float32 NCHW batch to float32 logits.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

import numpy as np

from ..errors import ArtifactError, OptionError, TargetError
from ..manifest import read_json

MANIFEST = "manifest.json"


def option(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A field of a target's ``Options`` dataclass with its help (``--help``, ``edgevit targets --options``)::

        ort_fusion: bool = option(False, "ship ONNX Runtime's fused transformer ops")
    """
    return field(default=default, metadata={"help": help}, **kw)


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
    """One backend at one precision. Subclasses set the class attributes and the verbs; an instance is
    one registered target: ``Target(name, precision, description, float_twin=..., family=...)``."""

    backend: str = ""
    # The backend's facts, set in the class that sets ``backend``: a subclass that sets another backend
    # starts from these defaults again, never from its base class's backend (see __init_subclass__).
    label: str = ""  # its name in reports and plots ("ONNX Runtime"); "": the backend's name
    colour: str = ""  # its colour in the report's plots ("#1f77b4"); "": one the report picks, the same each run
    isa_sensitive: bool = False  # its int8 speed follows the CPU's instruction sets (VNNI, AMX): reports say why
    timed_elsewhere: str | None = None  # None: timed on the machine that exports; else where, e.g. "CoreML
    # packages are timed on a Mac" (optimize, which times candidates here, refuses it with these words)
    requires: tuple[str, ...] = ()  # python modules that must import
    extra: str = ""  # the pip extra those modules come from ("mobile"), where they are not installed by default:
    # the errors and `edgevit targets` name it, and the quickstart (which exports every target) leaves it out
    fp16_peer: str | None = None  # the fp16 target an int8 graph must beat where fp32 compute costs (GPU runtimes)
    records: tuple[str, ...] = ()  # distributions whose versions its manifest records
    model_file: str = ""  # the main file inside the artifact directory
    Options: type = NoOptions  # a dataclass: the options this target honours, with their defaults
    option_help: dict[str, str] = {}  # help of options declared without it (an Options dataclass shared with
    # lower layers, e.g. edgevit.quant's QuantConfig); read only, never mutated
    search_options: dict[str, Any] = {}  # the options `edgevit optimize` exports it with (read only)

    _BACKEND_FACTS = ("label", "colour", "isa_sensitive", "timed_elsewhere")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "backend" in vars(cls):  # another backend: its facts are its own or the defaults
            for attr in Target._BACKEND_FACTS:
                if attr not in vars(cls):
                    setattr(cls, attr, getattr(Target, attr))

    def __init__(self, name: str, precision: str, description: str, *, float_twin: str | None = None,
                 family: str | None = None):
        self.name, self.precision, self.description = name, precision, description
        self.float_twin = float_twin  # int8: the float target it is compared with (None: its backend's first float one)
        self.family = family  # the runtime `edgevit optimize` searches it in (None: not searched; an int8
        # target without one joins its float twin's)

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

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

    def build_seconds(self) -> float:
        """Seconds its export spends on this machine beyond converting the graph (an engine build where one
        is built here): the quickstart's time estimate adds them."""
        return 0.0

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
        if not (miss := self.missing()):
            return "ready"
        return f"needs pip install -e '.[{self.extra}]'" if self.extra else f"needs {', '.join(miss)}"

    def check_available(self) -> None:
        if miss := self.missing():
            raise TargetError(f"target {self.name!r} needs {', '.join(miss)}"
                              + (f" (the {self.extra!r} extra)" if self.extra else "") + ", which is not installed",
                              f"pip install -e '.[{self.extra}]' (or pip install 'edgevit[{self.extra}]')"
                              if self.extra else f"pip install {' '.join(miss)}")

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


# -- target options ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionField:
    name: str
    type: Any
    default: Any
    targets: tuple[str, ...]  # the targets that honour it
    help: str = ""  # what it does (the field's help, else a target's option_help)


PLAIN = (bool, int, float, str)  # what recipes and the command line carry: these, lists of them, or None


def _plain(name: str, target: str, tp: Any) -> None:
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (Union, UnionType) else [tp]
    inner = get_args(args[0]) if len(args) == 1 and get_origin(args[0]) is list else ()
    ok = len(args) == 1 and (args[0] in PLAIN or (len(inner) == 1 and inner[0] in PLAIN))
    if not ok:
        raise TargetError(f"option {name!r} of target {target!r} has type {tp}, which recipes and the command "
                          "line cannot carry", "declare it as bool, int, float, str, a list of one of them, or "
                          "one of them | None")


def option_fields() -> dict[str, OptionField]:
    """Every target option by name: its type, default, help and the targets that honour it."""
    table: dict[str, OptionField] = {}
    for t in TARGETS.values():
        hints = get_type_hints(t.Options)
        for f in dataclasses.fields(t.Options):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            old = table.get(f.name)
            if old and (old.type != hints[f.name] or old.default != default):
                raise TargetError(f"option {f.name!r} of target {t.name!r} differs in type or default from "
                                  f"{', '.join(old.targets)}'s", "give the option another name")
            _plain(f.name, t.name, hints[f.name])
            text = (old.help if old else "") or f.metadata.get("help") or t.option_help.get(f.name, "")
            table[f.name] = OptionField(f.name, hints[f.name], default,
                                        (*old.targets, t.name) if old else (t.name,), text)
    return table


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def given_options(values: dict[str, Any]) -> dict[str, Any]:
    """The target options given, every one of them: a value given at its default is still given (and
    refused by :func:`check_honoured` where no chosen target honours it). An unknown name is an error."""
    table = option_fields()
    for name in values:
        if name not in table:
            close = difflib.get_close_matches(name, table, n=1)
            raise OptionError(f"unknown target option {name!r}", (f"did you mean {close[0]!r}? " if close else "")
                              + f"known options: {', '.join(sorted(table))}")
    return dict(values)


def check_honoured(targets: list[Target], given: dict[str, Any]) -> None:
    """An option none of ``targets`` honours is an error naming it and the targets that do."""
    table = option_fields()
    for name in given_options(given):
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
