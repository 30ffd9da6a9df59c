"""Fidelity of the float targets: a DeiT-Ti trained at 32 px on the CIFAR-10 subset, exported to
onnx and openvino, validated on the 600 test images against the float PyTorch model.

    python benchmarks/fidelity_cifar.py [--epochs 10] [--data ../shared/data/cifar-10-batches-py]

The run directory (weights, artifacts, report) goes to benchmarks/runs/fidelity_cifar (ignored by
git); its report.md/html are copied next to the JSON.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED_DATA, check, write_results  # noqa: E402

CHECKED = ("onnx", "openvino")  # the float targets with bars; openvino-fp16 (bf16 here) is reported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED_DATA / "cifar-10-batches-py"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "fidelity_cifar"))
    args = ap.parse_args()

    import json

    from edgevit.run.recipe import BenchSection, DataSection, ModelSection, Recipe, TrainSection, run_recipe

    recipe = Recipe(
        model=ModelSection("deit_tiny", pretrained=False, num_classes=10, img_size=32, patch_size=4),
        data=DataSection(source=args.data, split="test"),
        train=TrainSection(epochs=args.epochs, batch_size=64, lr=1e-3, warmup_epochs=1, seed=0),
        targets=[*CHECKED, "openvino-fp16"], bench=BenchSection(batch=1, iters=50), out=args.out)
    out = run_recipe(recipe, exist_ok=True)
    val = json.loads((out / "results" / "validate.json").read_text())
    rows = [{"target": name, **{k: v for k, v in r.items() if k != "artifact"}} for name, r in val.items()]
    checks = []
    for name in CHECKED:
        checks.append(check(f"{name}_agreement_pct", val[name]["agreement_pct"], ">=", 99.5))
        checks.append(check(f"{name}_top1_drop_pts", val[name]["top1_drop_pts"], "<=", 0.2))
    for r in rows:
        print(f"{r['target']:<14} ({r['runtime_precision']}) top-1 {r['top1']:.2f} vs float {r['float_top1']:.2f}"
              f"  agreement {r['agreement_pct']:.2f} %  max|Δlogit| {r['max_abs_logit_diff']:.2e}")
    for ext in ("md", "html"):
        shutil.copyfile(out / f"report.{ext}", RESULTS / f"fidelity_cifar.report.{ext}")
    history = [json.loads(line) for line in (out / "model" / "history.jsonl").read_text().splitlines() if line.strip()]
    write_results(__file__, rows, checks, epochs=args.epochs, data=args.data, run_dir=str(out),
                  float_test_top1=rows[0]["float_top1"], training=history)


if __name__ == "__main__":
    main()
