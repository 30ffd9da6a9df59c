"""Recipes: a YAML file that says which model, data, training and targets a run uses.

Every field is checked: an unknown or mistyped field is an error that names the file, the field
and the closest known name, never a silent default.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .. import transforms
from ..errors import EdgeVitError, ExportError, RecipeError, describe
from ..models import ModelSpec
from ..targets import option_fields
from ..train.engine import TrainConfig, resume_config
from .export import ExportOptions, run_export
from .training import run_pruned, run_training, train_then_export

MOVED = {"quant": "options", "tensorrt": "options"}  # sections of earlier versions, merged into options:


@dataclass
class ModelSection:
    name: str = "deit_tiny"
    checkpoint: str | None = None
    pretrained: bool = True
    num_classes: int | None = None
    img_size: int | None = None
    patch_size: int | None = None
    extra: dict = field(default_factory=dict)  # other timm create_model kwargs, e.g. depth
    prune: str | None = None  # transforms, composed with '+': evit:0.7, tome:8, evit:0.7+tome:4
    finetune_epochs: int = 0  # with prune: a short fine-tune of the pruned model, distilled from the dense one
    finetune_lr: float = 1e-4


@dataclass
class DataSection:
    source: str | None = None  # 'digits', a CIFAR folder or an ImageFolder
    split: str = "test"
    val_fraction: float = 0.2
    seed: int = 0
    holdout: float | None = None  # training images never fine-tuned or calibrated on (`edgevit optimize` chose on them)
    limit: int | None = None  # validate on a stratified subset of this many images


TrainSection = TrainConfig  # the recipe's train: section is the training engine's own config


@dataclass
class BenchSection:
    enabled: bool = True
    batch: int = 1
    threads: int | None = None
    warmup: int = 10
    iters: int = 50


@dataclass
class OptimizeSection:
    """`edgevit optimize` as a recipe: the runtimes are the recipe's targets, the data its data section."""
    max_drop: float = 1.0
    strict: bool = False
    time_budget_min: float | None = None
    transforms: list | None = None  # transform texts to try; None: the default space
    finetune_epochs: int = 2
    finetune_lr: float = 2e-4
    max_finetunes: int = 6
    longer_finetune_pts: float = 2.0  # a fine-tuned miss within this gets one fine-tune twice as long
    split: str = "val"  # the split the search chooses on (held out from the checkpoint's training too)
    holdout: float | None = None  # with split holdout: the fraction of the training images set aside
    confirm_split: str | None = None  # also validate the winners here
    calib_size: int = 128
    rounds: int = 3
    iters: int = 50


@dataclass
class ZeroShotSection:
    """`edgevit zeroshot` as a recipe: bake these classes into this two-tower model, then the recipe's
    export (model.prune, targets, options, data, bench). The model section's other fields do not apply."""
    model: str = ""  # open_clip name, hf-hub:org/repo, or a local folder / config JSON
    classes: object = None  # imagenet | cifar10 | a file | a list of names, in the data's label order
    templates: object = "openai"  # openai | simple | photo | a file | a list, each with one {}
    checkpoint: str | None = None
    pretrained: str | None = None
    cache: bool = True


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig | None = None
    targets: list = field(default_factory=lambda: ["onnx", "openvino"])
    options: dict = field(default_factory=dict)  # target options by name (`edgevit targets --options`)
    bench: BenchSection = field(default_factory=BenchSection)
    optimize: OptimizeSection | None = None  # search instead of one export (`edgevit optimize`)
    zeroshot: ZeroShotSection | None = None  # bake a CLIP/SigLIP/LiT model's class prompts first (`edgevit zeroshot`)
    out: str = "runs/run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Problems(list):
    """Every mistake found in one recipe, so that all of them are reported at once."""

    def add(self, what: str, fix: str) -> None:
        self.append((what, fix))


def _build(cls, raw: Any, where: str, file: str, problems: _Problems | None = None):
    own = problems is None
    problems = _Problems() if problems is None else problems
    if not isinstance(raw, dict):
        problems.add(f"field '{where}' must be a mapping, got {type(raw).__name__}",
                     f"write it as '{where.split('.')[-1]}:' followed by indented 'key: value' lines")
        return _raise_all(problems, file) if own else None
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key in MOVED and key not in known:
            problems.add(f"section '{path}' is now part of '{MOVED[key]}'",
                         f"move its keys under '{MOVED[key]}:' (one mapping of target options)")
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            problems.add(f"unknown field '{path}'",
                         f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(known))}")
            continue
        kwargs[key] = (_options(value, path, file, problems) if cls is Recipe and key == "options"
                       else _convert(hints[key], value, path, file, problems))
        if cls is ModelSection and key == "prune" and isinstance(value, str):
            _check_transforms(value, path, problems)
    if own:
        _raise_all(problems, file)
    return None if problems else cls(**kwargs)


def _options(raw: Any, where: str, file: str, problems: _Problems) -> dict[str, Any]:
    """The options: section, each key checked against the target options table and typed by it."""
    if not isinstance(raw, dict):
        problems.add(f"field '{where}' must be a mapping of target options",
                     "write 'options:' then 'name: value' lines")
        return {}
    table, out = option_fields(), {}
    for key, value in raw.items():
        if key not in table:
            close = difflib.get_close_matches(str(key), table, n=1)
            problems.add(f"unknown target option '{where}.{key}'",
                         f"did you mean '{close[0]}'?" if close else "see `edgevit targets --options`")
            continue
        out[key] = _convert(table[key].type, value, f"{where}.{key}", file, problems)
    return out


def _check_transforms(text: str, where: str, problems: _Problems) -> None:
    try:
        transforms.parse(text)
    except EdgeVitError as e:  # reported with the recipe's other problems
        problems.add(f"field '{where}': {e.what}", e.fix or "see `edgevit prune --help`")


def _raise_all(problems: _Problems, file: str) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise RecipeError(f"{file}: {problems[0][0]}", problems[0][1])
    lines = "".join(f"\n  {i}. {what} ({fix})" for i, (what, fix) in enumerate(problems, 1))
    raise RecipeError(f"{file}: {len(problems)} problems:{lines}", "fix each field named above")


def _convert(hint, value, path: str, file: str, problems: _Problems | None = None):
    own = problems is None
    problems = _Problems() if problems is None else problems
    result = _convert_one(hint, value, path, file, problems)
    if own:
        _raise_all(problems, file)
    return result


def _convert_one(hint, value, path: str, file: str, problems: _Problems):
    sections = {ModelSection, DataSection, TrainConfig, BenchSection, OptimizeSection, ZeroShotSection}
    args = getattr(hint, "__args__", ())
    inner = [a for a in args if a is not type(None)] if args else [hint]
    if value is None:
        if type(None) in args:
            return None
        problems.add(f"field '{path}' cannot be empty", "give it a value or delete the line")
        return None
    for t in inner:
        if t in sections:
            return _build(t, value, path, file, problems)
    want = inner[0] if inner else hint
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, list), dict: lambda v: isinstance(v, dict)}
    check = ok.get(getattr(want, "__origin__", want))
    if check and not check(value):
        problems.add(f"field '{path}' must be {getattr(want, '__name__', want)}, got {value!r}",
                     f"fix the value of '{path.split('.')[-1]}'")
        return None
    return float(value) if want is float else value


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder", "pass a recipe .yaml file (see recipes/)")
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist", "see recipes/ for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {path} is not a text file ({describe(e)})", "pass a YAML recipe") from e
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML:\n{e}", "fix the syntax at the line it names") from e
    if raw is None or raw == {}:
        raise RecipeError(f"recipe {path} is empty", "copy one from recipes/ and edit it; an empty recipe would "
                          "silently run every default")
    return _build(Recipe, raw, "", str(path))


def spec_from_recipe(recipe: Recipe) -> ModelSpec:
    m = recipe.model
    return ModelSpec(name=m.name, num_classes=m.num_classes, img_size=m.img_size, patch_size=m.patch_size,
                     checkpoint=m.checkpoint, pretrained=m.pretrained and not m.checkpoint, extra=dict(m.extra),
                     prune=m.prune)


def run_recipe(recipe: Recipe, exist_ok: bool = False) -> Path:
    """Run a :class:`Recipe`: optional training, then the export pipeline."""
    spec, d, b = spec_from_recipe(recipe), recipe.data, recipe.bench
    opts = ExportOptions(targets=list(recipe.targets), out=Path(recipe.out), data=d.source, split=d.split,
                         val_fraction=d.val_fraction, seed=d.seed, holdout=d.holdout, exist_ok=exist_ok,
                         validate_limit=d.limit,
                         bench=b.enabled, batch=b.batch, threads=b.threads, warmup=b.warmup, iters=b.iters,
                         options=dict(recipe.options), extra={"recipe": recipe.to_dict()})
    if recipe.zeroshot is not None:
        return _zeroshot(recipe, opts)
    if recipe.optimize is not None:
        return _optimize(recipe, spec)
    if recipe.model.finetune_epochs:
        if not recipe.model.prune or not d.source:
            raise ExportError("model.finetune_epochs fine-tunes a pruned model on the data",
                              "set model.prune (e.g. evit:0.7) and data.source, or remove finetune_epochs")
        if recipe.train is not None:
            raise ExportError("the recipe has both a 'train' section and model.finetune_epochs",
                              "train first (one recipe), then prune and fine-tune its weights (another)")
        return run_pruned(spec, opts, recipe.model.finetune_epochs, recipe.model.finetune_lr)
    if recipe.train is None:
        return run_export(spec, opts)
    if not d.source:
        raise ExportError("the recipe has a 'train' section but no 'data.source'",
                          "set data.source to 'digits', a CIFAR folder or an ImageFolder")
    return train_then_export(spec, opts, lambda: run_training(
        spec, recipe.train, d.source, opts.out, split=d.split, val_fraction=d.val_fraction, seed=d.seed,
        exist_ok=True))


def _zeroshot(recipe: Recipe, opts: ExportOptions) -> Path:
    from .zeroshot import ZeroShotOptions, run_zeroshot

    z = recipe.zeroshot
    clash = [k for k, v in (("train", recipe.train), ("optimize", recipe.optimize),
                            ("model.finetune_epochs", recipe.model.finetune_epochs)) if v]
    if clash:
        raise RecipeError(f"the recipe has a 'zeroshot' section and {', '.join(clash)}",
                          "bake and export in one recipe; search or fine-tune the baked model "
                          "(model: {name: zeroshot_vit, checkpoint: <run>/model/zeroshot.safetensors}) in another")
    if not z.model or z.classes is None:
        raise RecipeError("the 'zeroshot' section needs 'model' and 'classes'",
                          "e.g. zeroshot: {model: ViT-B-32, classes: imagenet}")
    zopts = ZeroShotOptions(model=z.model, classes=z.classes, templates=z.templates, checkpoint=z.checkpoint,
                            pretrained=z.pretrained, cache=z.cache)
    return run_zeroshot(zopts, opts, prune=recipe.model.prune)


def _optimize(recipe: Recipe, spec: ModelSpec) -> Path:
    from .optimize import OptimizeOptions, run_optimize

    o, d = recipe.optimize, recipe.data
    if not d.source:
        raise ExportError("the recipe has an 'optimize' section but no 'data.source'",
                          "set data.source to labelled images (fine-tunes, calibration and accuracy use it)")
    space = None if o.transforms is None else [t or None for t in o.transforms]
    run_optimize(spec, OptimizeOptions(
        targets=list(recipe.targets), data=d.source, out=Path(recipe.out), max_drop=o.max_drop, strict=o.strict,
        time_budget_min=o.time_budget_min, space=space, finetune_epochs=o.finetune_epochs,
        finetune_lr=o.finetune_lr, max_finetunes=o.max_finetunes, longer_finetune_pts=o.longer_finetune_pts,
        split=o.split, holdout=o.holdout,
        confirm_split=o.confirm_split, val_fraction=d.val_fraction, seed=d.seed, calib_size=o.calib_size,
        rounds=o.rounds, iters=o.iters, threads=recipe.bench.threads))
    return Path(recipe.out)


def train_config(recipe: str | Path | None = None, sets: list[str] = (), resume_run: Path | None = None,
                 model_name: str = "", **given: Any) -> TrainConfig:
    """A TrainConfig from a recipe's train: section, then ``sets`` (``KEY=VALUE``, YAML values), then
    ``given`` (None: not given); with ``resume_run``, the run's own options, which those given must
    not change."""
    base = load_recipe(recipe).train if recipe else None
    explicit = dataclasses.asdict(base) if base else {}
    hints = get_type_hints(TrainConfig)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RecipeError(f"--set {item!r} is not KEY=VALUE", "e.g. --set mixup=0.8")
        if key not in hints:
            close = difflib.get_close_matches(key, hints, n=1)
            raise RecipeError(f"--set: unknown training option {key!r}",
                              f"did you mean {close[0]!r}?" if close else f"known: {', '.join(hints)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML ({describe(e)})",
                              "quote it, or write numbers and lists as in a recipe") from e
        explicit[key] = _convert(hints[key], value, f"train.{key}", "--set")
    explicit.update({k: v for k, v in given.items() if v is not None})
    if resume_run is not None:
        return resume_config(resume_run, model_name, explicit)
    return TrainConfig(**explicit)
