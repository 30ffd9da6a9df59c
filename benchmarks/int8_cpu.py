"""int8 on CPU: edgevit's int8 targets against the float model and NNCF's default pipeline.

Accuracy: a DeiT-Ti trained at 32 px on the CIFAR-10 subset, calibrated on 300 of its training
images, evaluated on its 600 test images: float, openvino-int8, onnx-int8, tensorrt-int8 (run by
ONNX Runtime) and the peer, NNCF's default pipeline run directly
(``nncf.quantize(ov_model, dataset, model_type=ModelType.TRANSFORMER)``), plus a calibrator sweep.
Latency: the same variants of DeiT-Ti @224 (random weights: latency does not depend on their
values), batch 1, calibrated on ../shared/data/imagenet-sample, in --rounds short rounds (one run
of each, a random order per round), speedups as paired ratios with bootstrap 95 % intervals.
Recovery: the same CIFAR model with activation outliers injected (a function-preserving rescale of
LayerNorm channels against the next layer's weights, the pattern trained ViTs develop), where
plain PTQ loses points, ``--max-drop 0.5`` keeps the most sensitive layers float, and
``--qat-epochs`` fine-tunes the fake-quantized model instead (NNCF, distilled from the float one).

    python benchmarks/int8_cpu.py [--weights W.safetensors] [--epochs 10] [--qat-epochs 2] [--rounds 200]

Without --weights the committed reference model is used (benchmarks/reference_model.py); without that
file the model is trained here (CPU, --epochs) into benchmarks/runs/int8_cpu.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, check, isa, isa_bar, write_results  # noqa: E402
from reference_model import REFERENCE  # noqa: E402

RUN = ROOT / "benchmarks" / "runs" / "int8_cpu"
CIFAR = SHARED_DATA / "cifar-10-batches-py"
IMAGENET = SHARED_DATA / "imagenet-sample"
INT8 = ["openvino-int8", "onnx-int8", "tensorrt-int8"]
# int8 beats float only with int8 dot-product instructions (VNNI, AMX-INT8): on the avx2 and avx512 classes
# (neither has VNNI) int8 GEMMs go through 16-bit intermediates at about float speed, so there the int8
# speedup is a reported figure, not a check; the VNNI and AMX classes and "unknown" keep the bar.
NO_INT8_DOT = {"avx2": None, "avx512": None}


def cifar_spec(weights: str):
    from edgevit.models import ModelSpec

    return ModelSpec("deit_tiny", num_classes=10, img_size=32, patch_size=4, checkpoint=weights, pretrained=False)


def weights_for(args) -> tuple[str, dict]:
    """The CIFAR model: --weights (with the run.json beside it, if any), else trained here."""
    from edgevit.manifest import sha256_file

    if not args.weights and REFERENCE.is_file():  # the committed reference model (benchmarks/reference_model.py)
        args.weights = str(REFERENCE)
    if args.weights:
        w = Path(args.weights)
        info = {"weights": str(w), "sha256": sha256_file(w)}
        if (w.parent / "run.json").is_file():
            run = json.loads((w.parent / "run.json").read_text())
            info.update(trained_by=run.get("command"), train=run.get("train"))
        if (w.parent / "history.jsonl").is_file():
            hist = [json.loads(x) for x in (w.parent / "history.jsonl").read_text().splitlines() if x.strip()]
            info["epochs_run"] = len(hist)
            info["last_epoch_val_top1"] = hist[-1]["val_top1"]
        if w.with_suffix(".json").is_file():  # the reference model's record: recipe, training command, history
            ref = json.loads(w.with_suffix(".json").read_text())
            info.update(trained_by=ref.get("trained_by"), recipe=ref.get("recipe"),
                        last_epoch_val_top1=ref.get("last_epoch_test_top1"), epochs_run=len(ref.get("history", [])))
        return str(w), info
    from edgevit.run.training import run_training
    from edgevit.train.engine import TrainConfig

    out = RUN / "train"
    weights = out / "model" / "weights.safetensors"
    if not weights.exists():
        spec = cifar_spec(None)
        run_training(spec, TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-3, warmup_epochs=1, seed=0),
                     str(CIFAR), out, split="test", exist_ok=True)
    return str(weights), {"weights": str(weights), "sha256": sha256_file(weights), "epochs": args.epochs}


def export(spec, out: Path, targets, model=None, data=None, **quant):
    from edgevit.run.export import ExportOptions, run_export

    shutil.rmtree(out, ignore_errors=True)
    run_export(spec, ExportOptions(targets=targets, out=out, data=data, split="test", bench=False,
                                   options=dict(**quant)), model=model)
    return out


def nncf_default(run_dir: Path, calib, name: str = "nncf-default") -> Path:
    """The peer: NNCF's default pipeline on the same float model and calibration images, saved
    as an artifact directory beside ours so that validation and benchmarking treat it alike."""
    import nncf
    import openvino as ov

    ov_model = ov.convert_model(str(run_dir / "artifacts" / "onnx" / "model.onnx"))
    dataset = nncf.Dataset([calib.images[i:i + 1] for i in range(len(calib.images))])
    q = nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib.images))
    dst = run_dir / "artifacts" / name
    dst.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(dst / "model.xml"), compress_to_fp16=False)
    mf = json.loads((run_dir / "artifacts" / "openvino-int8" / "manifest.json").read_text())
    mf["export"] = {"form": "nncf.quantize(ov_model, dataset, model_type=ModelType.TRANSFORMER)",
                    "calib_images": len(calib.images)}
    mf["size_bytes"] = sum(p.stat().st_size for p in dst.iterdir() if p.suffix in (".xml", ".bin"))
    (dst / "manifest.json").write_text(json.dumps(mf, indent=1))
    return dst


def calib_for(run_dir: Path, source: Path, size: int = 300):
    from edgevit.quant.calibration import calibration_set

    mf = json.loads((run_dir / "run.json").read_text())
    return calibration_set(str(source), mf["data_config"], size)


def accuracy(weights: str) -> tuple[list[dict], dict]:
    from edgevit.run.artifacts import validate_artifacts

    spec = cifar_spec(weights)
    run = export(spec, RUN / "cifar", ["onnx", *INT8], data=str(CIFAR))
    val = json.loads((run / "results" / "validate.json").read_text())
    peer = nncf_default(run, calib_for(run, CIFAR))
    val["nncf-default"] = validate_artifacts([peer], str(CIFAR), "test")["openvino-int8"]
    rows = [_acc_row(name, r, run) for name, r in val.items()]
    sweep = []
    variants = [("tensorrt-int8", c, {}) for c in ("minmax", "percentile", "entropy")] + [
        ("openvino-int8", c, {}) for c in ("minmax", "percentile")] + [
        ("onnx-int8", c, {"form": "static"}) for c in ("minmax", "percentile")]
    for target, c, kw in variants:
        label = f"{target}{' static' if kw else ''} [{c}]"
        d = export(spec, RUN / f"sweep-{target}-{c}{'-static' if kw else ''}", [target], data=str(CIFAR),
                   calibrator=c, **kw)
        r = json.loads((d / "results" / "validate.json").read_text())[target]
        sweep.append(_acc_row(label, r, d, target) | {"target": target})
    return rows + sweep, {r["variant"]: r for r in rows}


def _acc_row(name: str, r: dict, run: Path, target: str | None = None) -> dict:
    mf_path = run / "artifacts" / (target or name) / "manifest.json"
    export_facts = json.loads(mf_path.read_text())["export"] if mf_path.is_file() else {}
    return {"part": "accuracy (CIFAR-10 subset, DeiT-Ti @32, 600 test images)", "variant": name,
            "top1": r["top1"], "float_top1": r["float_top1"], "top1_drop_pts": r["top1_drop_pts"],
            "agreement_pct": r["agreement_pct"], "images": r["images"],
            "form": export_facts.get("form"), "calibrator": export_facts.get("calibrator"),
            "tensorrt_rules_violations": (export_facts.get("tensorrt_rules") or {}).get("count")}


def latency(rounds: int, iters: int, warmup: int) -> tuple[list[dict], dict]:
    """Every variant in the same short rounds (random order); speedups are paired ratios against ORT fp32
    with their bootstrap 95 % intervals (edgevit.eval.timing)."""
    from edgevit.models import ModelSpec, create_model
    from edgevit.run.artifacts import bench_artifacts_timed

    spec = ModelSpec("deit_tiny", pretrained=False)
    model = create_model(spec)
    run = export(spec, RUN / "latency", ["onnx", "openvino-fp16", *INT8], model=model, calib=str(IMAGENET))
    static = export(spec, RUN / "latency-static", ["onnx-int8"], model=model, calib=str(IMAGENET), form="static")
    peer = nncf_default(run, calib_for(run, IMAGENET))
    arts = [run / "artifacts" / t for t in ("onnx", "openvino-fp16", *INT8)] + [
        peer, static / "artifacts" / "onnx-int8"]
    names = ["onnx", "openvino-fp16", *INT8, "nncf-default", "onnx-int8 (static Q/DQ)"]
    timed, rt = bench_artifacts_timed(arts, model, batch=1, warmup=warmup, iters=iters, rounds=rounds)
    rows = []
    for i, name in enumerate(["pytorch-eager", *names]):
        row = {k: v for k, v in timed[i].items() if k not in ("artifact", "name")}
        q = rt.ratio(1, i)  # ORT fp32 / this: the speedup, paired by round
        row.update(part="latency (DeiT-Ti @224, batch 1)", variant=name, speedup_vs_ort_fp32=q.ratio,
                   speedup_vs_ort_fp32_ci95=list(q.ci95), speedup_text=q.text())
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    by["_timing"] = rt.context
    return rows, by


def inject_outliers(model, channels: int = 8, scale: float = 100.0, seed: int = 0):
    """Scale ``channels`` LayerNorm output channels per block by ``scale`` and divide the next
    linear layer's matching input weights by it: the float function is unchanged (up to rounding),
    but those activations become outliers that per-tensor int8 cannot hold with the rest."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.blocks:
            for norm, lin in ((b.norm1, b.attn.qkv), (b.norm2, b.mlp.fc1)):
                c = torch.randperm(norm.weight.numel(), generator=g)[:channels]
                norm.weight[c] *= scale
                norm.bias[c] *= scale
                lin.weight[:, c] /= scale
    return model


def recovery(weights: str, qat_epochs: int) -> tuple[list[dict], dict]:
    from edgevit.models import create_model

    spec = cifar_spec(weights)
    model = inject_outliers(create_model(spec).eval())
    plain = export(spec, RUN / "outliers-ptq", ["onnx", "tensorrt-int8", "openvino-int8"], model=model,
                   data=str(CIFAR))
    fixed = export(spec, RUN / "outliers-max-drop", ["tensorrt-int8"], model=model, data=str(CIFAR), max_drop=0.5)
    qat = export(spec, RUN / "outliers-qat", ["tensorrt-int8"], model=model, data=str(CIFAR), qat_epochs=qat_epochs)
    rows = []
    for label, run, target in (("tensorrt-int8 plain PTQ", plain, "tensorrt-int8"),
                               ("openvino-int8 plain PTQ (SmoothQuant)", plain, "openvino-int8"),
                               ("tensorrt-int8 --max-drop 0.5", fixed, "tensorrt-int8"),
                               (f"tensorrt-int8 --qat-epochs {qat_epochs} (NNCF, KD)", qat, "tensorrt-int8")):
        r = json.loads((run / "results" / "validate.json").read_text())[target]
        mf = json.loads((run / "artifacts" / target / "manifest.json").read_text())["export"]
        md = mf.get("max_drop") or {}
        rows.append({"part": "recovery (CIFAR DeiT-Ti @32 with injected activation outliers)", "variant": label,
                     "top1": r["top1"], "float_top1": r["float_top1"], "top1_drop_pts": r["top1_drop_pts"],
                     "agreement_pct": r["agreement_pct"], "float_layers": md.get("float_layers", []),
                     "control_drop_pts": md.get("control_drop_pts"), "control_images": md.get("control_images"),
                     "search": md.get("tried"), "qat": mf.get("qat"), "form": mf.get("form"),
                     "tensorrt_rules_violations": (mf.get("tensorrt_rules") or {}).get("count")})
    return rows, {r["variant"]: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="trained CIFAR DeiT-Ti (patch 4, 32 px) weights; default: the committed "
                    "reference model (benchmarks/reference/), else trained here")
    ap.add_argument("--epochs", type=int, default=10, help="CPU training epochs when --weights is not given")
    ap.add_argument("--qat-epochs", type=int, default=2, help="QAT epochs in the recovery part")
    ap.add_argument("--rounds", type=int, default=200, help="short latency rounds (one run of each, random order)")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    from edgevit.eval.machine import missing_int8_isa

    weights, model_info = weights_for(args)
    acc_rows, acc = accuracy(weights)
    rec_rows, rec = recovery(weights, args.qat_epochs)
    lat_rows, lat = latency(args.rounds, args.iters, args.warmup)
    checks = [
        check("openvino_int8_top1_drop_pts", acc["openvino-int8"]["top1_drop_pts"], "<=", 0.5),
        # openvino_int8_latency_vs_nncf_default is retired: our graph is NNCF's own, so that ratio is a coin flip
        # around 1.0; the two rows and nncf_default_vs_ours stay in the results.
        check("onnx_int8_speedup_vs_ort_fp32", lat["onnx-int8"]["speedup_vs_ort_fp32"], ">=",
              isa_bar(NO_INT8_DOT, default=1.3), why=missing_int8_isa(isa()) or "no AVX512_VNNI on this CPU"),
        check("onnx_int8_top1_drop_pts", acc["onnx-int8"]["top1_drop_pts"], "<=", 0.5),
        check("tensorrt_int8_rules_violations", acc["tensorrt-int8"]["tensorrt_rules_violations"], "<=", 0),
        check("tensorrt_int8_top1_drop_pts", acc["tensorrt-int8"]["top1_drop_pts"], "<=", 0.5),
        check("outlier_plain_ptq_drop_pts", rec["tensorrt-int8 plain PTQ"]["top1_drop_pts"], ">=", 1.0),
        check("max_drop_recovered_drop_pts", rec["tensorrt-int8 --max-drop 0.5"]["top1_drop_pts"], "<=", 0.5),
    ]
    for r in acc_rows + rec_rows:
        print(f"{r['variant']:<40} top-1 {r['top1']:6.2f}  drop {r['top1_drop_pts']:+.2f}  agreement "
              f"{r['agreement_pct']:6.2f} %")
    for r in lat_rows:
        lo, hi = r["speedup_vs_ort_fp32_ci95"]
        print(f"{r['variant']:<40} {r['estimate_ms']:6.2f} ms  x{r['speedup_vs_ort_fp32']:.2f} [{lo:.2f}, {hi:.2f}] "
              f"vs ORT fp32  ({r.get('runtime_precision')})")
    write_results(__file__, acc_rows + rec_rows + lat_rows, checks, model=model_info,
                  nncf_default_vs_ours={"ours_estimate_ms": lat["openvino-int8"]["estimate_ms"],
                                        "nncf_default_estimate_ms": lat["nncf-default"]["estimate_ms"]},
                  timing=lat["_timing"],
                  max_drop_float_layers=rec["tensorrt-int8 --max-drop 0.5"]["float_layers"],
                  rounds=args.rounds, iters=args.iters,
                  retired_checks=[{"name": "openvino_int8_latency_vs_nncf_default",
                                   "why": "our openvino-int8 graph is NNCF's own, so the latency ratio is noise "
                                          "around 1.0 (0.92, 0.97, 1.02 in three runs); the rows are kept"}])


if __name__ == "__main__":
    main()
