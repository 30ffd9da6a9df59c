"""Phones and ARM boards, checked on this CPU: ExecuTorch (XNNPACK) and LiteRT, fp32 and int8.

Accuracy: the reference DeiT-Ti trained at 32 px on the CIFAR-10 subset, exported to executorch,
executorch-int8, litert and litert-int8 (int8 calibrated on 300 of its training images) and to onnx
(the ONNX Runtime baseline), each validated on the 600 test images against the PyTorch model: fp32
logits' largest difference, int8 top-1 drop with its paired 95 % interval and the images only one model
gets right; executorch-int8 also with --xnnpack-quantize all (XNNPACKQuantizer's every pattern, residual
adds included), the lever measured against edgevit's default (linear layers and convolutions only). The
same model with EViT keep 0.7 and with ToMe r=2 exported to both runtimes and validated the same way.
Fidelity at 224: DeiT-Ti @224 (random weights, seed 0: the latency does not depend on their values)
exported to the four targets (int8 calibrated on ../shared/data/imagenet-sample) and checked against
PyTorch on --images ImageNet images.
Latency: those DeiT-Ti @224 artifacts (the --xnnpack-quantize all one too) and ONNX Runtime fp32, batch 1,
in --rounds short interleaved rounds (each round one run of each in a random order): int8 speedups over the
same runtime's fp32 are paired ratios with bootstrap 95 % intervals (edgevit.eval.timing), with the CPU's
ISA class.

    python benchmarks/mobile_cpu.py [--weights W.safetensors] [--rounds 120]

Needs the mobile extra: pip install -e '.[mobile]'.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, isa_bar, write_results  # noqa: E402
from int8_cpu import CIFAR, IMAGENET, NO_INT8_DOT, cifar_spec, weights_for  # noqa: E402

RUN = ROOT / "benchmarks" / "runs" / "mobile_cpu"
RUNTIMES = {"executorch": ("executorch", "executorch-int8"), "litert": ("litert", "litert-int8")}
MOBILE = [t for pair in RUNTIMES.values() for t in pair]
ALL_OPS = "executorch-int8 (--xnnpack-quantize all)"  # XNNPACKQuantizer's every pattern: the lever measured
PRUNED = ["evit:0.7", "tome:2"]  # ToMe r=2 per block: 64 patch tokens at 32 px (r=8 at 196)
ACC = "accuracy (CIFAR-10 subset, DeiT-Ti @32, 600 test images)"


def export(spec, out: Path, targets, data: str, calib: str, calib_size: int, limit: int | None = None,
           **options) -> dict:
    """Export and validate; the run's validate.json by target."""
    from edgevit.run.export import ExportOptions, run_export

    shutil.rmtree(out, ignore_errors=True)
    run_export(spec, ExportOptions(targets=targets, out=out, data=data, split="test", validate_limit=limit,
                                   bench=False, options={"calib": calib, "calib_size": calib_size, **options}))
    return json.loads((out / "results" / "validate.json").read_text())


def fidelity_rows(part: str, variant: str, val: dict, run: Path, suffix: str = "") -> list[dict]:
    rows = []
    for target, r in val.items():
        mf = json.loads((run / "artifacts" / target / "manifest.json").read_text())
        deleg = mf["export"].get("delegation") or {}
        rows.append({"part": part, "variant": variant, "target": target + suffix, "images": r["images"],
                     "top1": r["top1"], "quantized_ops": mf["export"].get("quantized_ops"),
                     "float_top1": r["float_top1"], "top1_drop_pts": r["top1_drop_pts"],
                     "top1_drop_ci95_pts": r["top1_drop_ci95_pts"], "only_float_correct": r["only_float_correct"],
                     "only_artifact_correct": r["only_artifact_correct"], "agreement_pct": r["agreement_pct"],
                     "max_abs_logit_diff": r["max_abs_logit_diff"], "size_bytes": mf["size_bytes"],
                     "export_seconds": mf.get("export_seconds"), "not_delegated": deleg.get("non_delegated"),
                     "delegated_ops": deleg.get("delegated_ops"), "non_delegated_ops": deleg.get("non_delegated_ops")})
    return rows


def random_weights(path: Path) -> str:
    """DeiT-Ti @224 initialised with seed 0, saved once: every 224 px run exports the same weights."""
    import torch
    from safetensors.torch import save_file

    from edgevit.models import ModelSpec, create_model

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(create_model(ModelSpec("deit_tiny", pretrained=False)).state_dict(), str(path))
    return str(path)


def latency(run: Path, all_ops: Path, rounds: int, iters: int, warmup: int) -> tuple[list[dict], dict]:
    """ORT fp32 and the mobile artifacts of DeiT-Ti @224 in the same rounds; each int8 artifact's speedup
    over its runtime's fp32 one, paired by round."""
    from edgevit.run.artifacts import bench_artifacts_timed

    names = ["onnx", *MOBILE, ALL_OPS]
    arts = [run / "artifacts" / t for t in names[:-1]] + [all_ops / "artifacts" / "executorch-int8"]
    timed, rt = bench_artifacts_timed(arts, batch=1, warmup=warmup, iters=iters, rounds=rounds)
    index = {"pytorch-eager": 0, **{n: i + 1 for i, n in enumerate(names)}}
    rows = []
    for name, i in index.items():
        row = {k: v for k, v in timed[i].items() if k not in ("artifact", "name")}
        q = rt.ratio(index["onnx"], i)  # ORT fp32 / this
        row.update(part="latency (DeiT-Ti @224, batch 1)", variant=name, speedup_vs_ort_fp32=q.ratio,
                   speedup_vs_ort_fp32_ci95=list(q.ci95))
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    for fp32, int8 in [*RUNTIMES.values(), ("executorch", ALL_OPS)]:
        q = rt.ratio(index[fp32], index[int8])  # fp32 / int8: the int8 speedup on the same runtime
        by[int8].update(speedup_vs_fp32=q.ratio, speedup_vs_fp32_ci95=list(q.ci95), speedup_vs_fp32_text=q.text())
    return rows, by | {"_timing": rt.context}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="trained CIFAR DeiT-Ti (patch 4, 32 px); default: the committed reference "
                    "model (benchmarks/reference/)")
    ap.add_argument("--epochs", type=int, default=10, help="CPU training epochs when no weights are found")
    ap.add_argument("--images", type=int, default=100, help="ImageNet images the 224 px artifacts are checked on")
    ap.add_argument("--rounds", type=int, default=120, help="short latency rounds (one run of each, random order)")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()

    from edgevit.models import ModelSpec

    weights, model_info = weights_for(args)
    spec = cifar_spec(weights)
    cifar = export(spec, RUN / "cifar", ["onnx", *MOBILE], str(CIFAR), str(CIFAR), 300)
    rows = fidelity_rows(ACC, "dense", cifar, RUN / "cifar")
    cifar_all = export(spec, RUN / "cifar-et-all", ["executorch-int8"], str(CIFAR), str(CIFAR), 300,
                       xnnpack_quantize="all")
    rows += fidelity_rows(ACC, "dense", cifar_all, RUN / "cifar-et-all", " (--xnnpack-quantize all)")
    pruned = {}
    for prune in PRUNED:
        out = RUN / f"cifar-{prune.replace(':', '')}"
        pruned[prune] = export(dataclasses.replace(spec, prune=prune), out, MOBILE, str(CIFAR), str(CIFAR), 300)
        rows += fidelity_rows(ACC, prune, pruned[prune], out)
    part = f"fidelity (DeiT-Ti @224, random weights, {args.images} ImageNet images)"
    spec224 = ModelSpec("deit_tiny", pretrained=False, checkpoint=random_weights(RUN / "deit224-seed0.safetensors"))
    big = export(spec224, RUN / "deit224", ["onnx", *MOBILE], str(IMAGENET), str(IMAGENET), 128, limit=args.images)
    rows += fidelity_rows(part, "dense", big, RUN / "deit224")
    big_all = export(spec224, RUN / "deit224-et-all", ["executorch-int8"], str(IMAGENET), str(IMAGENET), 128,
                     limit=args.images, xnnpack_quantize="all")
    rows += fidelity_rows(part, "dense", big_all, RUN / "deit224-et-all", " (--xnnpack-quantize all)")
    lat_rows, lat = latency(RUN / "deit224", RUN / "deit224-et-all", args.rounds, args.iters, args.warmup)

    # a pruned model exports and validates on a runtime: its fp32 artifact matches the pruned PyTorch model
    exports = {p: [rt for rt, (fp32, _) in RUNTIMES.items() if fp32 in v and v[fp32]["agreement_pct"] >= 99.0
                   and v[fp32]["max_abs_logit_diff"] <= 1e-3] for p, v in pruned.items()}
    evit_ok = exports["evit:0.7"]
    why = "int8 without int8 dot-product instructions (VNNI) runs at about float speed: the speedup is a figure"
    checks = [check(f"{rt}_fp32_max_abs_diff", max(cifar[fp32]["max_abs_logit_diff"], big[fp32]["max_abs_logit_diff"]),
                    "<=", 1e-3) for rt, (fp32, _) in RUNTIMES.items()]
    for rt, (_, int8) in RUNTIMES.items():
        checks += [check(f"{rt}_int8_agreement_pct", cifar[int8]["agreement_pct"], ">=", 95.0),
                   check(f"{rt}_int8_top1_drop_pts", cifar[int8]["top1_drop_pts"], "<=", 1.0)]
    checks += [check(f"{rt}_int8_speedup_vs_fp32", lat[int8]["speedup_vs_fp32"], ">=", isa_bar(NO_INT8_DOT, 1.3),
                     why) for rt, (_, int8) in RUNTIMES.items()]
    checks.append(check("evit07_exports_to_mobile", len(evit_ok), ">=", 2))
    for r in rows:
        lo, hi = r["top1_drop_ci95_pts"]
        print(f"{r['part'][:22]:<22} {r['variant']:<9} {r['target']:<16} top-1 {r['top1']:6.2f} drop "
              f"{r['top1_drop_pts']:+.2f} [{lo:+.2f}, {hi:+.2f}] ({r['only_float_correct']}/"
              f"{r['only_artifact_correct']})  agreement {r['agreement_pct']:6.2f}  "
              f"max|d| {r['max_abs_logit_diff']:.2e}")
    for r in lat_rows:
        extra = f"  int8 x{r['speedup_vs_fp32']:.2f} {r['speedup_vs_fp32_ci95']}" if "speedup_vs_fp32" in r else ""
        print(f"{r['variant']:<16} {r['estimate_ms']:7.2f} ms  vs ORT fp32 x{r['speedup_vs_ort_fp32']:.2f}{extra}")
    write_results(__file__, rows + lat_rows, checks, model=model_info, pruned_exports_to=exports,
                  timing=lat["_timing"], rounds=args.rounds, iters=args.iters, images_224=args.images)


if __name__ == "__main__":
    main()
