"""What the int8 targets of one run share, prepared once before any export: the calibration
images, the control images of ``--max-drop``, and the QAT graph (``--qat-epochs``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import EMBEDDED, Opener, train_part
from ..errors import DataError
from ..progress import heartbeat, say
from ..quant.calibration import CalibSet, calibration_set, control_set
from ..quant.config import QuantConfig
from ..quant.qat import QatGraph, quantize_aware
from ..targets import Target, options_for
from .plan import DataReader, RunPlan

_QUANT_FIELDS = {f.name for f in dataclasses.fields(QuantConfig)}


@dataclass
class Int8Inputs:
    cfg: QuantConfig
    calib: CalibSet | None = None
    control: tuple[np.ndarray, np.ndarray] | None = None
    data: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    int8_targets: tuple[str, ...] = ()
    opener: Opener | None = None  # how the data's readers open (a run's DataReader.open: each read once)

    def takes_qat(self, target: Target, options: Any) -> bool:
        """Does this target convert the QAT graph (rather than quantize after training)?"""
        return target.name in self.int8_targets and isinstance(options, QuantConfig)

    def run_qat(self, model: torch.nn.Module, run: dict[str, Any], opts, work: Path) -> QatGraph | None:
        """Quantization-aware fine-tuning when asked and an int8 target takes it; else None."""
        if not self.cfg.qat_epochs or not self.int8_targets:
            return None
        say(f"QAT: {self.cfg.qat_epochs} epoch(s) of quantization-aware fine-tuning on ", plain=str(self.data))
        return quantize_aware(model, run["model"]["name"], self.calib.images, self.data, run["data_config"],
                              self.cfg, opts.out, work / "qat.onnx", self.val_fraction, self.seed,
                              opener=self.opener)


class CalibrationSourceError(DataError):
    """An int8 export that needs calibration images has none to draw them from."""


def calibration_source(opts, targets: list[Target], options: dict[str, Any] | None = None,
                       given: dict[str, Any] | None = None) -> str | None:
    """Where the targets that need calibration draw it from (``--calib``, else ``--data``), checked before
    any work (no model built, no weights downloaded); None when no target needs calibration. ``options``
    and ``given``: each target's resolved Options by name and the options given, when the caller resolved
    them (check_export); None resolves them from ``opts``."""
    given = given if given is not None else opts.given()
    options = options if options is not None else {t.name: options_for(t, given) for t in targets}
    need = [t.name for t in targets if t.needs_calibration(options[t.name])]
    if not need:
        return None
    source = given.get("calib") or opts.data
    if source is None:
        raise CalibrationSourceError(
            f"{', '.join(need)} need(s) calibration images, and neither --calib nor --data was given",
            "pass --calib DIR with a few hundred of the images the model will see (class sub-folders or flat), "
            "or --data (its training images calibrate)")
    if str(source) != EMBEDDED and not Path(source).expanduser().is_dir():
        flag = "--calib" if given.get("calib") else "--data"
        raise CalibrationSourceError(f"{flag} {source} is not a folder, and {', '.join(need)} calibrate(s) on it",
                                     f"pass {flag} an existing folder of images (class sub-folders or flat), a "
                                     f"CIFAR folder or '{EMBEDDED}'")
    return str(source)


def int8_inputs(opts, data_cfg: dict[str, Any], targets: list[Target], plan: RunPlan | None = None) -> Int8Inputs:
    """Calibration (and, for --max-drop, control) images for the targets that need them. ``plan``: the run's
    (its resolved options, calibration source and data reader); None resolves and opens them here."""
    if plan is None:
        given = opts.given()
        options = {t.name: options_for(t, given) for t in targets}
        plan = RunPlan(targets, given, options, calibration_source(opts, targets, options, given),
                       DataReader(opts.data, opts.val_fraction, opts.seed))
    cfg = QuantConfig(**{k: v for k, v in plan.given.items() if k in _QUANT_FIELDS})
    takes = tuple(t.name for t in targets if isinstance(plan.options_of(t), QuantConfig))
    opener = plan.data.open
    out = Int8Inputs(cfg, data=opts.data, val_fraction=opts.val_fraction, seed=opts.seed, int8_targets=takes,
                     opener=opener)
    source, allowed = plan.calibration, None
    if source is None:
        return out
    if not cfg.calib:  # the training images of --data (its training part, when the split is carved)
        allowed = train_part(source, opts.val_fraction, opts.seed, opts.holdout, opener=opener)
    with heartbeat(f"calibration set from {source}"):
        out.calib = calibration_set(source, data_cfg, cfg.calib_size, cfg.calib_seed, allow_grey=cfg.calib_grey,
                                    allowed=allowed, opener=opener)
    say("calibration: ", plain=f"{len(out.calib.images)} images from {source} "
        f"({'cache' if out.calib.cached else 'built'} {out.calib.key})")
    if cfg.max_drop is not None:
        out.control = control_set(source, data_cfg, cfg.calib_size, cfg.control_size, cfg.calib_seed,
                                  allowed=allowed, opener=opener)
    return out


