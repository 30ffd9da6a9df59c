"""The reference CIFAR model the benchmarks share: DeiT-Ti, patch 4, 32 px, trained on the CIFAR-10
subset (4,660 images) on the CPU, stored as fp16 safetensors with its sha256 and training record.

    python benchmarks/reference_model.py                # trains it (10 epochs, about 25 min on 2 cores)
    python benchmarks/reference_model.py --from W.safetensors   # stores weights trained by the same recipe

The recipe is fidelity_cifar.py's (seed 0, AdamW lr 1e-3, batch 64, 1 warm-up epoch, cosine), so
``--from benchmarks/runs/fidelity_cifar/model/weights.safetensors`` stores that run's model.
Writes ``benchmarks/reference/cifar_deit_tiny_p4.safetensors`` and ``.json`` (committed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA  # noqa: E402

REFERENCE = ROOT / "benchmarks" / "reference" / "cifar_deit_tiny_p4.safetensors"
SPEC = dict(name="deit_tiny", num_classes=10, img_size=32, patch_size=4, pretrained=False)
RECIPE = dict(epochs=10, batch_size=64, lr=1e-3, warmup_epochs=1, seed=0)


def reference_spec(weights: str | Path | None = None):
    """The ModelSpec of the reference model (``weights``: the committed file by default)."""
    from edgevit.models import ModelSpec

    return ModelSpec(**SPEC, checkpoint=str(weights or REFERENCE))


def reference_weights() -> Path:
    if not REFERENCE.is_file():
        raise SystemExit(f"{REFERENCE} is missing: run python benchmarks/reference_model.py (or pass --weights)")
    return REFERENCE


def train(out: Path, epochs: int) -> Path:
    from edgevit.models import ModelSpec
    from edgevit.run.training import run_training
    from edgevit.train.engine import TrainConfig

    cfg = {**RECIPE, "epochs": epochs}
    run_training(ModelSpec(**SPEC), TrainConfig(**cfg),
                 str(SHARED_DATA / "cifar-10-batches-py"), out, split="test", exist_ok=True)
    return out / "model" / "weights.safetensors"


def store(src: Path, trained_by: str) -> dict:
    """fp16 copy of ``src`` at REFERENCE, with a record beside it (sha256, recipe, per-epoch history)."""
    import torch
    from safetensors.torch import load_file, save_file

    from edgevit.manifest import atomic_path, sha256_file, write_json

    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(REFERENCE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "edgevit": "reference CIFAR DeiT-Ti p4"})
    hist_file = src.parent / "history.jsonl"
    history = [json.loads(x) for x in hist_file.read_text().splitlines() if x.strip()] if hist_file.is_file() else []
    record = {"file": REFERENCE.name, "sha256": sha256_file(REFERENCE), "bytes": REFERENCE.stat().st_size,
              "dtype": "float16", "spec": SPEC, "recipe": RECIPE, "data": "../shared/data/cifar-10-batches-py",
              "trained_by": trained_by, "source_sha256": sha256_file(src), "history": history,
              "last_epoch_test_top1": history[-1]["val_top1"] if history else None}
    write_json(REFERENCE.with_suffix(".json"), record)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", help="weights trained by the same recipe (else: train here)")
    ap.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "reference"))
    args = ap.parse_args()
    if args.src:
        src, how = Path(args.src), "python benchmarks/fidelity_cifar.py --epochs 10 (same recipe), then --from"
    else:
        src, how = train(Path(args.out), args.epochs), f"python benchmarks/reference_model.py --epochs {args.epochs}"
    rec = store(src, how)
    print(f"wrote {REFERENCE} ({rec['bytes'] / 2**20:.1f} MB, sha256 {rec['sha256'][:12]}…), "
          f"test top-1 {rec['last_epoch_test_top1']}")


if __name__ == "__main__":
    main()
