"""``edgevit quickstart`` sized to the machine it runs on.

The recipe (:func:`base_recipe`, also recipes/quickstart.yaml) trains 20 epochs: about 3.5 minutes on two idle
cores, but over an hour on two busy ones. Here a few training steps of the same model on a batch of
the same shape are timed first; the number of epochs is then the most (3 to 20) that fits a
5-minute budget once the export, validation and benchmark that follow are paid for, and the
expected duration is printed before any work starts.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..data import load_split
from ..models import ModelSpec, create_model
from ..progress import duration
from ..progress import say as _say
from ..quant.config import QuantConfig
from ..targets import TARGETS
from ..targets.trt_engine import EngineOptions
from ..train.engine import TrainConfig
from .recipe import BenchSection, DataSection, ModelSection, Recipe

DEFAULT_BUDGET_S = 300.0
MIN_EPOCHS, MAX_EPOCHS = 3, 20
# Export + validation + benchmark after training, as FIXED_S plus OTHER_STEPS training steps.
# Measured on 2 loaded x86 cores (4.4 s a step): 254 s for every CPU target. The fixed part is
# imports and conversions that hardly depend on the model's speed.
FIXED_S = 30.0
OTHER_STEPS = 50.0
EVAL_BATCH_COST = 1 / 3  # a forward-only batch of validation vs one training step


def base_recipe() -> Recipe:
    """The offline default: a 6-block DeiT-Ti at 32 px (patch 4) trained briefly on the embedded digits,
    exported to every target but those of an optional extra (``executorch*``, ``litert*``: ``.[mobile]``).
    Measured on 2 idle cores: about 3.5 min of training to 85 % top-1 on the 359 held-out digits
    (:func:`quickstart_recipe` sizes the epochs to the machine)."""
    return Recipe(
        model=ModelSection(name="deit_tiny", pretrained=False, num_classes=10, img_size=32, patch_size=4,
                           extra={"depth": 6}),
        data=DataSection(source="digits", split="val", val_fraction=0.2, seed=0),
        train=TrainConfig(epochs=20, batch_size=32, lr=1e-3, warmup_epochs=1, flip=False),
        targets=[name for name, t in TARGETS.items() if not t.extra],  # not those of an optional extra
        options={"calib_size": QuantConfig().calib_size, "max_batch": EngineOptions().max_batch,
                 "workspace_mb": EngineOptions().workspace_mb},
        bench=BenchSection(batch=1, warmup=10, iters=50),
        out="runs/quickstart",
    )


@dataclass
class Plan:
    """How long the quickstart should take here, and why."""

    epochs: int
    step_s: float  # one training step (batch 32), measured
    steps_per_epoch: int
    epoch_s: float  # training steps plus the per-epoch validation
    other_s: float  # everything but the epochs: measuring, export, validation, benchmark
    budget_s: float
    sized: bool  # epochs chosen here (False: given by --epochs)

    @property
    def total_s(self) -> float:
        return self.epochs * self.epoch_s + self.other_s

    def line(self) -> str:
        head = (f"quickstart: ~{self.total_s / 60:.1f} min on this machine "
                f"({self.epochs} epoch{'s' if self.epochs != 1 else ''} of ~{duration(self.epoch_s)}")
        if not self.sized:
            return head + ")"
        full = MAX_EPOCHS * self.epoch_s + self.other_s
        tail = (f"; training is sized to a {self.budget_s / 60:.0f}-minute budget: pass --epochs {MAX_EPOCHS} "
                f"for the full run, ~{full / 60:.0f} min)" if self.epochs < MAX_EPOCHS else ")")
        if self.epochs == MIN_EPOCHS and self.total_s > self.budget_s * 1.1:
            tail = (f"; more than the {self.budget_s / 60:.0f}-minute budget: {MIN_EPOCHS} epochs is the least "
                    "the quickstart trains, pass --epochs 1 for a shorter smoke run)")
        return head + tail


def plan_epochs(step_s: float, steps_per_epoch: int, val_images: int, batch: int, budget_s: float,
                epochs: int | None = None, spent_s: float = 0.0, extra_s: float = 0.0) -> Plan:
    """The epochs that fit ``budget_s`` (``epochs`` when given); ``spent_s`` is already gone."""
    epoch_s = step_s * (steps_per_epoch + math.ceil(val_images / batch) * EVAL_BATCH_COST)
    other_s = spent_s + FIXED_S + OTHER_STEPS * step_s + extra_s
    sized = epochs is None
    if sized:
        fit = math.floor(max(0.0, budget_s - other_s) / epoch_s) if epoch_s > 0 else MAX_EPOCHS
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, fit))
    return Plan(epochs=epochs, step_s=step_s, steps_per_epoch=steps_per_epoch, epoch_s=epoch_s,
                other_s=other_s, budget_s=budget_s, sized=sized)


def measure_step(recipe: Recipe, min_seconds: float = 1.0, max_steps: int = 6) -> float:
    """Seconds of one training step of ``recipe``'s model (forward, backward, AdamW), after a warm-up.

    On the device training uses; the random number generators are left as they were.
    """
    import torch
    import torch.nn.functional as F


    m, cfg = recipe.model, recipe.train
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
            model = create_model(ModelSpec(name=m.name, num_classes=m.num_classes, img_size=m.img_size,
                                           patch_size=m.patch_size, pretrained=False, extra=dict(m.extra)))
            model.to(device).train()
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            size = m.img_size or 224
            x = torch.randn(cfg.batch_size, 3, size, size, device=device)
            y = torch.randint(0, m.num_classes or 10, (cfg.batch_size,), device=device)

            def step() -> None:
                out = model(x)
                loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y,
                                       label_smoothing=cfg.label_smoothing)
                loss.backward()
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            step()  # warm-up: allocations, kernel choice
            n, t0 = 0, time.perf_counter()
            while n < max_steps and (n < 2 or time.perf_counter() - t0 < min_seconds):
                step()
                n += 1
            return (time.perf_counter() - t0) / n
    finally:
        torch.set_num_threads(threads)


def _split_sizes(recipe: Recipe) -> tuple[int, int]:

    d = recipe.data
    train = load_split(d.source, "train", None, d.val_fraction, d.seed)
    val = load_split(d.source, d.split, None, d.val_fraction, d.seed)
    return len(train), len(val)


def _build_seconds(recipe: Recipe) -> float:
    """What the targets' exports spend here beyond converting (engine builds), as each target estimates it."""
    return sum(TARGETS[t].build_seconds() for t in recipe.targets if t in TARGETS)


def quickstart_recipe(budget_s: float | None = None, epochs: int | None = None,
                      say: Callable[[str], None] | None = _say,
                      step_s: float | None = None) -> tuple[Recipe, Plan]:
    """:func:`base_recipe` with its epochs sized to ``budget_s`` (default 5 min) here.

    ``epochs`` (``--epochs``) skips the sizing but the duration is still estimated and printed.
    ``step_s`` replaces the measurement (tests). ``say`` prints the one-line plan (None: silent).
    """
    t0 = time.perf_counter()
    recipe = base_recipe()
    budget_s = DEFAULT_BUDGET_S if budget_s is None else float(budget_s)
    n_train, n_val = _split_sizes(recipe)
    if step_s is None:
        step_s = measure_step(recipe)
    batch = recipe.train.batch_size
    plan = plan_epochs(step_s, max(1, n_train // batch), n_val, batch, budget_s, epochs=epochs,
                       spent_s=time.perf_counter() - t0, extra_s=_build_seconds(recipe))
    recipe.train.epochs = plan.epochs
    if say is not None:
        say(plan.line())
    return recipe, plan
