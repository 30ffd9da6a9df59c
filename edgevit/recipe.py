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

from .errors import RecipeError
from .steps.quantize import QuantConfig
from .targets.tensorrt import EngineOptions
from .steps.train import TrainConfig


@dataclass
class ModelSection:
    name: str = "deit_tiny"
    checkpoint: str | None = None
    pretrained: bool = True
    num_classes: int | None = None
    img_size: int | None = None
    patch_size: int | None = None
    extra: dict = field(default_factory=dict)  # other timm create_model kwargs, e.g. depth


@dataclass
class DataSection:
    source: str | None = None  # 'digits', a CIFAR folder or an ImageFolder
    split: str = "test"
    val_fraction: float = 0.2
    seed: int = 0
    limit: int | None = None  # validate on a stratified subset of this many images


TrainSection = TrainConfig  # the recipe's train: section is the training engine's own config
QuantSection = QuantConfig  # quant: is the int8 stage's own config (calibration, --max-drop, QAT)


@dataclass
class BenchSection:
    enabled: bool = True
    batch: int = 1
    threads: int | None = None
    warmup: int = 10
    iters: int = 50


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig | None = None
    targets: list = field(default_factory=lambda: ["onnx", "openvino"])
    quant: QuantConfig | None = None
    tensorrt: EngineOptions | None = None  # engine build options of the tensorrt-* targets
    bench: BenchSection = field(default_factory=BenchSection)
    out: str = "runs/run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, raw: Any, where: str, file: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"{file}: field '{where}' must be a mapping, got {type(raw).__name__}",
                          f"write it as '{where.split('.')[-1]}:' followed by indented 'key: value' lines")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise RecipeError(f"{file}: unknown field '{path}'",
                              f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(known))}")
        kwargs[key] = _convert(hints[key], value, path, file)
    return cls(**kwargs)


def _convert(hint, value, path: str, file: str):
    sections = {ModelSection, DataSection, TrainConfig, QuantConfig, EngineOptions, BenchSection}
    args = getattr(hint, "__args__", ())
    inner = [a for a in args if a is not type(None)] if args else [hint]
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"{file}: field '{path}' cannot be empty", "give it a value or delete the line")
    for t in inner:
        if t in sections:
            return _build(t, value, path, file)
    want = inner[0] if inner else hint
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, list), dict: lambda v: isinstance(v, dict)}
    check = ok.get(getattr(want, "__origin__", want))
    if check and not check(value):
        raise RecipeError(f"{file}: field '{path}' must be {getattr(want, '__name__', want)}, got {value!r}",
                          f"fix the value of '{path.split('.')[-1]}'")
    return float(value) if want is float else value


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist", "see recipes/ for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})", "fix the syntax at the line it names") from e
    return _build(Recipe, raw or {}, "", str(path))


def quickstart_recipe() -> Recipe:
    """The offline default: a 6-block DeiT-Ti at 32 px (patch 4) trained briefly on the embedded digits.

    Measured on 2 cores: about 3.5 min of training to 85 % top-1 on the 359 held-out digits.
    """
    from .targets import TARGETS

    return Recipe(
        model=ModelSection(name="deit_tiny", pretrained=False, num_classes=10, img_size=32, patch_size=4,
                           extra={"depth": 6}),
        data=DataSection(source="digits", split="val", val_fraction=0.2, seed=0),
        train=TrainConfig(epochs=20, batch_size=32, lr=1e-3, warmup_epochs=1, flip=False),
        targets=list(TARGETS),
        quant=QuantConfig(calib_size=300),
        tensorrt=EngineOptions(max_batch=8, workspace_mb=1024),
        bench=BenchSection(batch=1, warmup=10, iters=50),
        out="runs/quickstart",
    )
