"""The quickstart sizes its epochs to the machine (a measured training step) and says how long it takes."""
from __future__ import annotations

import re

from edgevit.run.quickstart import DEFAULT_BUDGET_S, MAX_EPOCHS, MIN_EPOCHS, base_recipe, plan_epochs, quickstart_recipe

DIGITS = {"steps_per_epoch": 44, "val_images": 359, "batch": 32}  # 1,438 train / 359 val at val_fraction 0.2


def test_epochs_scale_with_the_step_time():
    epochs = [plan_epochs(s, budget_s=DEFAULT_BUDGET_S, **DIGITS).epochs for s in (0.2, 0.4, 0.6, 0.8, 1.2)]
    assert epochs == sorted(epochs, reverse=True) and len(set(epochs)) >= 4, epochs
    mid = plan_epochs(0.4, budget_s=DEFAULT_BUDGET_S, **DIGITS)
    assert MIN_EPOCHS < mid.epochs < MAX_EPOCHS
    assert mid.total_s <= DEFAULT_BUDGET_S < mid.total_s + mid.epoch_s  # the most epochs that fit
    assert plan_epochs(0.4, budget_s=2 * DEFAULT_BUDGET_S, **DIGITS).epochs > mid.epochs


def test_epochs_are_clamped():
    fast = plan_epochs(0.01, budget_s=DEFAULT_BUDGET_S, **DIGITS)
    slow = plan_epochs(4.4, budget_s=DEFAULT_BUDGET_S, **DIGITS)  # 2 busy cores: 3.5 min an epoch
    assert fast.epochs == MAX_EPOCHS and slow.epochs == MIN_EPOCHS
    assert slow.total_s > DEFAULT_BUDGET_S and "more than the 5-minute budget" in slow.line()
    given = plan_epochs(4.4, budget_s=DEFAULT_BUDGET_S, epochs=1, **DIGITS)
    assert given.epochs == 1 and not given.sized


def test_recipe_and_the_printed_line():
    lines: list[str] = []
    r, plan = quickstart_recipe(step_s=0.4, say=lines.append)
    want = base_recipe().to_dict()
    want["train"]["epochs"] = plan.epochs
    assert r.to_dict() == want and plan.steps_per_epoch == 44  # the same recipe, fewer epochs
    assert len(lines) == 1
    assert re.fullmatch(r"quickstart: ~\d+\.\d min on this machine \(\d+ epochs of ~\d+s; training is sized to "
                        r"a 5-minute budget: pass --epochs 20 for the full run, ~\d+ min\)", lines[0]), lines
    assert f"({plan.epochs} epochs of" in lines[0]
    r, plan = quickstart_recipe(epochs=20, step_s=0.4, say=lines.append)
    assert r.train.epochs == 20 and re.fullmatch(r"quickstart: ~\d+\.\d min on this machine \(20 epochs of ~\d+s\)",
                                                 lines[-1]), lines
