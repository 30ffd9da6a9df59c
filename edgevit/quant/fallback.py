"""Sensitivity fallback for ``--max-drop``: measure each layer's error when quantized alone (KL
divergence of the logits from the float model on control images), then keep the most sensitive
layers float, fewest first, until the validated top-1 drop is within the bound."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .config import QuantizationError, pretty

Build = Callable[[list[str]], Callable[[np.ndarray], np.ndarray]]  # exclude -> predict


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean() * 100)


def _kl(ref: np.ndarray, got: np.ndarray) -> float:
    def logsoftmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lp, lq = logsoftmax(ref.astype(np.float64)), logsoftmax(got.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def batched(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([predict(x[i:i + batch]) for i in range(0, len(x), batch)])


def sensitivity(build: Build, layers: list[str], x: np.ndarray, ref: np.ndarray,
                progress: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """KL divergence of the logits from the float model with each layer quantized alone."""
    out: dict[str, float] = {}
    for i, layer in enumerate(layers):
        others = [n for n in layers if n != layer]
        out[layer] = _kl(ref, batched(build(others), x))
        progress(f"sensitivity {i + 1}/{len(layers)}: {pretty(layer)} KL {out[layer]:.2e}")
    return out


def fallback(build: Build, layers: list[str], control: tuple[np.ndarray, np.ndarray], float_logits: np.ndarray,
             max_drop: float, max_float: int | None = None, rank_images: int = 128,
             progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Keep the fewest most-sensitive layers float so that the control top-1 drop is <= ``max_drop``.

    Tries 0, 1, 2, 4, ... float layers, then bisects between the last miss and the first hit.
    Raises :class:`QuantizationError` with what was reached when ``max_float`` layers do not do it.
    """
    x, y = control
    ref_top1 = top1(float_logits, y)
    limit = max(1, len(layers) // 2) if max_float is None else min(max_float, len(layers))
    tried: dict[int, float] = {}

    def drop_with(k: int, order: list[str]) -> float:
        if k not in tried:
            tried[k] = ref_top1 - top1(batched(build(order[:k]), x), y)
            progress(f"{k} layer(s) float: control top-1 drop {tried[k]:.2f} pts (bound {max_drop})")
        return tried[k]

    if drop_with(0, []) <= max_drop:
        return {"float_layers": [], "control_drop_pts": tried[0], "tried": tried, "sensitivity": {}}
    sens = sensitivity(build, layers, x[:rank_images], float_logits[:rank_images], progress)
    order = sorted(layers, key=lambda n: -sens[n])
    lo, k = 0, 1
    while k < limit and drop_with(k, order) > max_drop:
        lo, k = k, min(2 * k, limit)
    if drop_with(k, order) > max_drop:
        best = min(tried, key=lambda j: tried[j])
        raise QuantizationError(
            f"--max-drop {max_drop} was not met: the best control-set drop reached was {tried[best]:.2f} pts, "
            f"with {best} of {len(layers)} layers float (at most {limit} allowed)",
            f"raise --max-drop to {tried[best]:.2f}, allow more float layers (--max-float {len(layers)}), "
            "or fine-tune with QAT (`edgevit quantize --qat-epochs N`)")
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if drop_with(mid, order) <= max_drop else (mid, hi)
    return {"float_layers": order[:hi], "control_drop_pts": tried[hi], "tried": tried,
            "sensitivity": {pretty(n): sens[n] for n in order}}
