"""DeiT distillation on the CIFAR-10 subset at 32 px: a CNN teacher, then DeiT-Ti students with
``--distillation hard`` and ``none`` on the same schedule, seed, augmentation and initial weights.

    python benchmarks/distill_cifar.py [--teacher-epochs 10] [--student-epochs 12] [--soft]

Both students are deit_tiny_distilled (patch 4, 64 tokens) built from the same seed, so they start
from identical weights; with ``none`` both heads learn from the labels alone. Accuracy is on the
600 test images; the paired counts (images only one student gets right) go with it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, check, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED_DATA / "cifar-10-batches-py"))
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=12)
    ap.add_argument("--soft", action="store_true", help="also train a soft-distilled student")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "distill_cifar"))
    args = ap.parse_args()

    import torch

    from edgevit.data import data_config, eval_transform, load_split, make_loader
    from edgevit.eval.validate import compare, torch_predict
    from edgevit.models import ModelSpec
    from edgevit.run.training import run_training
    from edgevit.train.engine import TrainConfig

    out = Path(args.out)
    common = dict(batch_size=64, lr=1e-3, warmup_epochs=1, label_smoothing=0.1, seed=0)
    rows, models, t0 = [], {}, time.time()
    teacher_spec = ModelSpec("resnet18_cifar", num_classes=10, img_size=32)
    models["teacher resnet18_cifar"], _ = run_training(
        teacher_spec, TrainConfig(epochs=args.teacher_epochs, **common), args.data, out / "teacher",
        split="test", exist_ok=True)
    teacher_ckpt = str(out / "teacher" / "model" / "weights.safetensors")
    kinds = ["hard", "none"] + (["soft"] if args.soft else [])
    for kind in kinds:
        spec = ModelSpec("deit_tiny_distilled", num_classes=10, img_size=32, patch_size=4)
        cfg = TrainConfig(epochs=args.student_epochs, distillation=kind, teacher="resnet18_cifar",
                          teacher_checkpoint=teacher_ckpt, alpha=0.1 if kind == "soft" else 0.5,
                          tau=3.0, **common)
        models[f"student {kind}"], _ = run_training(spec, cfg, args.data, out / f"student_{kind}", split="test",
                                                 exist_ok=True)
    # one pass over the 600 test images, every model on the same images
    cfg = data_config(models["student hard"], 32)
    test = load_split(args.data, "test", eval_transform(cfg))
    t_cfg = data_config(models["teacher resnet18_cifar"], 32)
    res = compare({k: torch_predict(m) for k, m in models.items() if k.startswith("student")},
                  make_loader(test, 100), total=len(test))
    t_res = compare({"teacher": torch_predict(models["teacher resnet18_cifar"])},
                    make_loader(load_split(args.data, "test", eval_transform(t_cfg)), 100), total=len(test))
    ok = {k: v["logits"].argmax(1) == v["labels"] for k, v in res.items()}
    ok["teacher resnet18_cifar"] = t_res["teacher"]["logits"].argmax(1) == t_res["teacher"]["labels"]
    for name in models:
        epochs = args.teacher_epochs if name.startswith("teacher") else args.student_epochs
        rows.append({"variant": name, "epochs": epochs, "test_images": int(len(ok[name])),
                     "top1": float(ok[name].mean() * 100)})
    top = {r["variant"]: r["top1"] for r in rows}
    gap = top["student hard"] - top["student none"]
    paired = {"only_hard_correct": int((ok["student hard"] & ~ok["student none"]).sum()),
              "only_none_correct": int((ok["student none"] & ~ok["student hard"]).sum())}
    for r in rows:
        print(f"{r['variant']:<24} {r['epochs']:>3} epochs  top-1 {r['top1']:.2f} %")
    print(f"hard - none = {gap:+.2f} pts; paired: {paired}")
    write_results(__file__, rows, [check("distilled_minus_none_top1_pts", gap, ">=", 2.0)],
                  data=args.data, paired=paired, minutes=(time.time() - t0) / 60, schedule=common,
                  student="deit_tiny_distilled patch 4 @32, same initial weights",
                  torch_threads=torch.get_num_threads(), seed_note="seed 0 for split, init and every epoch")


if __name__ == "__main__":
    main()
