"""Each artifact's outputs against PyTorch on real images: how far, whether finite, whether the
comparison proves anything."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ExportError
from ..models import ModelSpec
from .validate import torch_predict

# Largest |artifact - torch| on real images, relative to the largest |torch logit|, per precision.
# int8 is a sanity bound (a broken graph is far off); its accuracy is what validation measures.
TOLERANCE = {"fp32": 1e-3, "fp16": 0.1, "bf16": 0.1, "int8": 1.0, "pruned": 0.02}


def checked_outputs(name: str, precision: str, runner, model: torch.nn.Module, sample: np.ndarray,
                    float_logits: np.ndarray | None = None, reference: torch.nn.Module | None = None,
                    pruned: bool = False) -> dict[str, Any]:
    """Check artifact ``name`` (declared ``precision``) against PyTorch on ``sample``. ``reference``:
    the fake-quantized QAT model an int8 graph from QAT reproduces, instead of the float one."""
    check = (output_check(runner, reference, sample) if reference is not None
             else output_check(runner, model, sample, ref=float_logits))
    check["reference"] = "the fake-quantized QAT model" if reference is not None else "the float model"
    runtime = precision if precision == "int8" else runner.info.get("precision")
    tol = TOLERANCE.get(runtime or precision, TOLERANCE["fp16"])
    if reference is not None:  # the same int8 arithmetic on both sides: only rounding differs
        tol = TOLERANCE["fp16"]
    if pruned:  # top-k/argsort choices can flip on near-ties between runtimes
        tol = max(tol, TOLERANCE["pruned"])
    if check["rel_max_abs_diff"] > tol:
        raise ExportError(
            f"target {name!r}: outputs differ from PyTorch by {check['max_abs_diff']:.3g} "
            f"({check['rel_max_abs_diff']:.2%} of the largest logit; allowed {tol:.2%}) on "
            f"{len(sample)} real images", "report this with the run's run.json; try another target")
    return check


def output_check(runner, model: torch.nn.Module, sample: np.ndarray, ref: np.ndarray | None = None
                 ) -> dict[str, Any]:
    """How far the artifact's logits are from PyTorch's (``ref``: the model's logits on ``sample``,
    when already computed); non-finite outputs fail, and a comparison of constant logits (every
    class scored the same, e.g. a zero-initialised head) says it proves nothing."""
    ref = torch_predict(model)(sample) if ref is None else ref
    got = runner(sample)
    if got.shape != ref.shape:
        raise ExportError(f"artifact returns shape {got.shape}, PyTorch {ref.shape}", "re-export the model")
    if not np.isfinite(got).all():
        raise ExportError(f"the artifact outputs NaN or Inf on {int((~np.isfinite(got)).any(1).sum())} of "
                          f"{len(sample)} real images while PyTorch's outputs are finite",
                          "this target's graph is broken for this model: try another target and report it")
    diff = np.abs(got - ref)
    check = {"images": int(len(sample)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
             "rel_max_abs_diff": float(diff.max() / max(1e-12, float(np.abs(ref).max()))),
             "top1_agreement_pct": float((got.argmax(1) == ref.argmax(1)).mean() * 100)}
    if vacuous := constant_logits(ref):
        check["vacuous"] = vacuous
    return check


def constant_logits(logits: np.ndarray) -> str | None:
    """Why a comparison of these logits proves nothing (every class scored the same), or None."""
    spread = float(np.ptp(logits, axis=1).max()) if logits.size else 0.0
    if spread <= 1e-6 * max(1.0, float(np.abs(logits).max())):
        return ("the float model scores every class the same on every check image (untrained or "
                "zero-initialised head), so the output check compares constants and proves nothing")
    return None


def finite_reference(model: torch.nn.Module, sample: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The float model's logits on the check images, computed once for every target's check;
    a model whose outputs are NaN/Inf is refused before anything is exported from it."""
    ref = torch_predict(model)(sample)
    if not np.isfinite(ref).all():
        source = f"checkpoint {spec.checkpoint}" if spec.checkpoint else (
            "the hub weights" if spec.pretrained else "the randomly initialised weights")
        raise ExportError(f"model {spec.name!r} with {source} outputs NaN or Inf on real images",
                          "the weights are broken (a diverged training?): use an earlier checkpoint")
    return ref
