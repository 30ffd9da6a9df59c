"""Accuracy of an artifact against the float PyTorch model, on the same labelled images."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..data import eval_transform, load_split, make_loader
from ..progress import progress_bar
from .stats import paired


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def torch_predict(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return predict


def compare(predictors: dict[str, Callable[[np.ndarray], np.ndarray]], batches: Iterable,
            total: int | None = None, label: str = "validating") -> dict[str, dict[str, np.ndarray]]:
    """Run every predictor over the same batches; return logits and labels per predictor."""
    out: dict[str, list] = {k: [] for k in predictors}
    labels: list[np.ndarray] = []
    with progress_bar(label, total=total, unit="img") as advance:
        for x, y in batches:
            xn = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            for name, fn in predictors.items():
                out[name].append(fn(xn))
            labels.append(np.asarray(y))
            advance(len(xn))
    y_all = np.concatenate(labels)
    return {k: {"logits": np.concatenate(v), "labels": y_all} for k, v in out.items()}


def accuracy_row(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"top1": float(100.0 * topk_correct(logits, labels, 1).mean()),
            "top5": float(100.0 * topk_correct(logits, labels, 5).mean())}


def fidelity(art: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Top-1/top-5 of both, agreement of their argmax, drop in points, logit differences."""
    a, r = accuracy_row(art, labels), accuracy_row(ref, labels)
    agree = float((art.argmax(1) == ref.argmax(1)).mean() * 100.0)
    # Paired view of the difference: images only one of the two gets right.
    p = paired(ref.argmax(1) == labels, art.argmax(1) == labels)
    return {
        "images": int(len(labels)),
        "top1": a["top1"], "top5": a["top5"],
        "float_top1": r["top1"], "float_top5": r["top5"],
        "top1_drop_pts": r["top1"] - a["top1"],
        "agreement_pct": agree,
        "only_float_correct": p.only_ref_correct,
        "only_artifact_correct": p.only_candidate_correct,
        "top1_drop_ci95_pts": list(p.ci95_pts),
        "max_abs_logit_diff": float(np.abs(art - ref).max()),
        "mean_abs_logit_diff": float(np.abs(art - ref).mean()),
    }


def vs_dense(art: np.ndarray, dense: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """A pruned artifact against the dense model (no transforms, dense weights) on the same images."""
    p = paired(dense.argmax(1) == labels, art.argmax(1) == labels)
    return {"dense_top1": p.ref_top1, "top1_drop_vs_dense_pts": p.ref_top1 - p.top1,
            "top1_drop_vs_dense_ci95_pts": list(p.ci95_pts),
            "only_dense_correct": p.only_ref_correct, "only_artifact_correct_vs_dense": p.only_candidate_correct}


def validate_runners(runners: dict[str, Callable], float_model: torch.nn.Module, data_cfg: dict,
                     source: str, split: str = "test", batch_size: int = 64, limit: int | None = None,
                     val_fraction: float = 0.2, seed: int = 0,
                     dense_model: torch.nn.Module | None = None, dataset: Any = None) -> dict[str, dict[str, Any]]:
    """Validate several artifacts in one pass over the data (each image decoded once). With
    ``dense_model`` (the model a pruned one came from), each row also has :func:`vs_dense`'s fields.
    ``dataset``: the split already opened (``source``'s ``split`` with ``data_cfg``'s eval transform and
    ``limit``), e.g. from a run's data reader; None opens it here."""
    ds = dataset if dataset is not None else load_split(source, split, eval_transform(data_cfg),
                                                        val_fraction=val_fraction, seed=seed, limit=limit)
    preds = {"__float__": torch_predict(float_model), **runners}
    if dense_model is not None:
        preds["__dense__"] = torch_predict(dense_model)
    res = compare(preds, make_loader(ds, batch_size), total=len(ds), label=f"validating {len(runners)} artifact(s)")
    ref = res["__float__"]["logits"]
    labels = res["__float__"]["labels"]
    data = {"source": str(source), "split": split, "images": len(ds), "classes": len(ds.classes or [])}
    out = {}
    for name in runners:
        out[name] = {"data": data, **fidelity(res[name]["logits"], ref, labels)}
        if dense_model is not None:
            out[name].update(vs_dense(res[name]["logits"], res["__dense__"]["logits"], labels))
    return out
