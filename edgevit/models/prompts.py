"""Class names and prompt templates of a zero-shot classifier, read and checked before any work.

``--classes`` takes a built-in set (``imagenet``, ``cifar10``), a file (one name per line, or a
JSON list) or a comma-separated list; ``--templates`` a built-in set (``openai``: CLIP's 80 ImageNet
prompts, ``simple``: its 7-prompt subset, ``photo``: "a photo of a {}.") or a file, each template
holding one ``{}`` where the class name goes.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import ZeroShotError

__all__ = ["Prompts", "read_classes", "read_templates", "BUILTIN_CLASSES", "BUILTIN_TEMPLATES", "cache_dir",
           "cache_key"]

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _openclip_names(attr: str) -> tuple[str, ...]:
    from open_clip import zero_shot_metadata as meta

    values = getattr(meta, attr)
    return tuple(v("{}") if callable(v) else v for v in values)  # open_clip's lambdas become "{}" strings


# OpenAI's curated ImageNet names repeat two: 657 and 744 are both "missile", 836 and 837 both "sunglasses",
# so each pair's prompts are identical and the second class can never win. WordNet's own lemmas tell
# them apart: 744 is n04008634 "projectile, missile", 836 is n04355933 "sunglass" (a burning lens).
IMAGENET_FIXES = {744: "projectile", 836: "sunglass"}


def _imagenet() -> tuple[str, ...]:
    names = list(_openclip_names("IMAGENET_CLASSNAMES"))
    for i, name in IMAGENET_FIXES.items():
        names[i] = name
    return tuple(names)


BUILTIN_CLASSES = {"imagenet": _imagenet, "cifar10": lambda: CIFAR10}
BUILTIN_TEMPLATES = {"openai": lambda: _openclip_names("OPENAI_IMAGENET_TEMPLATES"),
                     "simple": lambda: _openclip_names("SIMPLE_IMAGENET_TEMPLATES"),
                     "photo": lambda: ("a photo of a {}.",)}


@dataclass(frozen=True)
class Prompts:
    """What the text tower encodes: every class with every template."""

    classes: tuple[str, ...]
    templates: tuple[str, ...]
    classes_from: str  # where they came from (a built-in name, a file, "list")
    templates_from: str

    def texts(self, cls: str) -> list[str]:
        return [t.replace("{}", cls, 1) for t in self.templates]

    @classmethod
    def read(cls, classes: str | list[str] | tuple[str, ...], templates: str | list[str] | tuple[str, ...] = "openai",
             ) -> Prompts:
        names, names_from = read_classes(classes)
        temps, temps_from = read_templates(templates)
        return cls(names, temps, names_from, temps_from)


def _lines(path: Path, flag: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ZeroShotError(f"{flag} file {path} cannot be read: {e}", "pass a readable UTF-8 text or JSON file") from e
    if path.suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ZeroShotError(f"{flag} file {path} is not valid JSON (line {e.lineno}: {e.msg})",
                                'write a JSON list of strings, e.g. ["cat", "dog"]') from e
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ZeroShotError(f"{flag} file {path} must hold a JSON list of strings", 'e.g. ["cat", "dog"]')
        return value
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _source(value: str | list[str] | tuple[str, ...], builtins: dict, flag: str) -> tuple[list[str], str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value], "list"
    value = str(value)
    if value in builtins:
        return list(builtins[value]()), value
    path = Path(os.path.expanduser(value))
    if path.is_file():
        return _lines(path, flag), str(path.resolve())
    if path.suffix in (".txt", ".json") or os.sep in value:
        raise ZeroShotError(f"{flag} file {value} does not exist",
                            f"check the path, or pass a built-in set ({', '.join(builtins)}) or a comma-separated list")
    return [v.strip() for v in value.split(",")], "list"


def read_classes(value: str | list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The class names, in label order, and where they came from; empty, blank or repeated names are errors."""
    names, src = _source(value, BUILTIN_CLASSES, "--classes")
    where = f" in {src}" if src != "list" else ""
    if not names or not any(names):
        raise ZeroShotError(f"the class list{where} is empty",
                            "pass --classes FILE (one name per line), a comma-separated list, or "
                            f"a built-in set ({', '.join(BUILTIN_CLASSES)})")
    blank = [i for i, n in enumerate(names) if not n]
    if blank:
        raise ZeroShotError(f"the class list{where} has an empty name at position(s) {', '.join(map(str, blank[:5]))}",
                            "remove the stray comma or empty entry")
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        first = [i for i, n in enumerate(names) if n == dup[0]]
        raise ZeroShotError(
            f"the class list{where} repeats {len(dup)} name(s): {', '.join(repr(d) for d in dup[:5])} "
            f"('{dup[0]}' at positions {', '.join(map(str, first))})",
            "each label needs its own name (two identical prompts cannot be told apart): rename or remove the repeats")
    return tuple(names), src


def read_templates(value: str | list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The prompt templates and where they came from; each must hold exactly one ``{}``."""
    temps, src = _source(value, BUILTIN_TEMPLATES, "--templates")
    where = f" in {src}" if src != "list" else ""
    if not temps:
        raise ZeroShotError(f"the template list{where} is empty",
                            f"pass at least one template such as 'a photo of a {{}}.', or a built-in set "
                            f"({', '.join(BUILTIN_TEMPLATES)})")
    for i, t in enumerate(temps):
        if t.count("{}") != 1:
            raise ZeroShotError(
                f"template {i + 1}{where} ({t!r}) has {t.count('{}')} '{{}}' placeholders",
                "write exactly one {} where the class name goes, e.g. 'a photo of a {}.'")
    if len(set(temps)) != len(temps):
        dup = next(t for t in temps if temps.count(t) > 1)
        raise ZeroShotError(f"template {dup!r}{where} is repeated (it would count twice in the average)",
                            "remove the repeat")
    return tuple(temps), src


def cache_dir() -> Path:
    """Where text embeddings are kept (``$EDGEVIT_CACHE/zeroshot``, default ``~/.cache/edgevit/zeroshot``)."""
    return Path(os.environ.get("EDGEVIT_CACHE", Path.home() / ".cache" / "edgevit")) / "zeroshot"


def cache_key(weights_id: str, model_config: dict, prompts: Prompts) -> str:
    """The text embeddings' identity: the weights (checkpoint sha256 or hub tag), the architecture,
    the class list and the templates, in order."""
    blob = json.dumps({"weights": weights_id, "config": model_config, "classes": prompts.classes,
                       "templates": prompts.templates}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
