"""The graph tensorrt-int8 ships: int8 GEMMs with fp16 elsewhere (TensorRT cannot run here, so the
graph is what can be proved: its types, its Q/DQ placement, TensorRT's int8 rules, and its accuracy
run by ONNX Runtime).

    python benchmarks/tensorrt_graph.py [--weights W.safetensors] [--calib-size 64]

Structure: DeiT-Ti @224 (random weights: types and Q/DQ placement do not depend on them), exported
by ``edgevit export --target tensorrt-fp16,tensorrt-int8`` with ImageNet calibration images, and
again with ``--quantize-norms``; beside them, the Q/DQ graphs as the quantizer writes them (fp32
outside the GEMMs: what tensorrt-int8 shipped before), which are also the fp32 reference every fp16
int8 scale is compared with. The two shipped DeiT-Ti graphs (12 blocks each) hold 24 attention
softmax outputs, each to be quantized with the fixed range [0, 1] (scale 1/127, zero-point 0).
Accuracy: the CIFAR reference model (benchmarks/reference_model.py), its shipped int8 graph and the
fp32-elsewhere one, both run by ONNX Runtime against the float PyTorch model on the 600 test images, paired.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, check, write_results  # noqa: E402
from reference_model import reference_spec, reference_weights  # noqa: E402

RUN = ROOT / "benchmarks" / "runs" / "tensorrt_graph"
CIFAR = SHARED_DATA / "cifar-10-batches-py"
IMAGENET = SHARED_DATA / "imagenet-sample"


def export(spec, out: Path, targets: list[str], data: str | None = None, **options) -> Path:
    from edgevit.run.export import ExportOptions, run_export

    shutil.rmtree(out, ignore_errors=True)
    return run_export(spec, ExportOptions(targets=targets, out=out, data=data, split="test", bench=False,
                                          options=options))


def graph_row(variant: str, path: Path, quantize_norms: bool = False) -> dict:
    import onnx

    from edgevit.float_scope import FloatScope
    from edgevit.precision import precision_map
    from edgevit.quant.attention import softmax_output_qparams
    from edgevit.targets.trt_rules import check_tensorrt_rules

    pm = precision_map(path)
    s = pm["summary"]
    scope = FloatScope.of(quantize_norms=quantize_norms)
    rules = check_tensorrt_rules(path, scope) if s["int8_gemms"] else {"count": None, "warnings": []}
    softmax = softmax_output_qparams(onnx.load(str(path), load_external_data=False))
    want, _ = scope.softmax_qparams(signed=True)
    fixed = [q for q in softmax if q["scale"] is not None and not scope.fp16_scale_changes(want, q["scale"])
             and q["zero_point"] == 0 and q["zero_point_type"] == "int8"]
    return {"variant": variant, "graph": str(path.relative_to(ROOT)), "label": s["label"],
            "fp32_ops_outside_norms": s["fp32_ops_outside_norms"], "fp32_islands_sample": s["fp32_islands"][:5],
            "int8_gemms": s["int8_gemms"], "linear_layers": s["linear_layers"],
            "linear_layers_quantized": s["linear_layers_quantized"], "attention_matmuls": s["attention_matmuls"],
            "attention_matmuls_quantized": s["attention_matmuls_quantized"],
            "compute_ops_by_precision": s["compute_ops_by_precision"], "layernorm": s["layernorm_precision"],
            "softmax_outputs": len(softmax), "softmax_outputs_quantized": sum(q["scale"] is not None for q in softmax),
            "softmax_outputs_fixed_1_127": len(fixed),
            "softmax_output_scales": sorted({q["scale"] for q in softmax if q["scale"] is not None})[:4],
            "rules_violations": rules["count"], "rules_warnings": len(rules["warnings"]), "warnings": pm["warnings"],
            "size_mb": round(sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20, 2)}


def scale_row(variant: str, shipped: Path, fp32: Path) -> dict:
    """Every int8 scale of the shipped fp16 graph against the same scale in the fp32 Q/DQ graph. A layer kept
    float (the artifact's flag for a scale subnormal in fp16) has no scale in the shipped graph; one that is
    there and differs beyond fp16 rounding changed unflagged."""
    import onnx

    from edgevit.quant.fp16 import scale_changes, scale_values

    s16 = scale_values(onnx.load(str(shipped), load_external_data=False))
    s32 = scale_values(onnx.load(str(fp32), load_external_data=False))
    mf = json.loads((shipped.parent / "manifest.json").read_text())["export"]
    changed = scale_changes(s32, s16)
    return {"variant": variant, "graph": str(shipped.relative_to(ROOT)),
            "fp16_scales_compared": len(set(s16) & set(s32)), "fp16_scales_kept_float": len(set(s32) - set(s16)),
            "fp16_scale_changes_unflagged": len(changed), "fp16_scale_changes_sample": dict(list(changed.items())[:3]),
            "fp16_subnormal_kept_float": mf.get("fp16_subnormal_kept_float", []),
            "attention_kept_float": mf.get("attention_kept_float", []),
            "softmax_output_range": mf.get("softmax_output_range"),
            "fp32_qdq_into_layernorm": mf.get("fp32_qdq_into_layernorm")}


def fp32_elsewhere(art: Path, dst: Path, calib_size: int, calib_source: Path, **options) -> Path:
    """The Q/DQ graph exactly as the quantizer writes it (float32 outside the GEMMs), from the run's float ONNX."""
    from edgevit.quant.calibration import calibration_set
    from edgevit.quant.config import QuantConfig
    from edgevit.quant.ort import quantize_onnx

    run = art.parents[1]
    mf = json.loads((run / "run.json").read_text())
    calib = calibration_set(str(calib_source), mf["data_config"], calib_size)
    quantize_onnx("trt-qdq", run / "artifacts" / "onnx" / "model.onnx", dst, calib.images, QuantConfig(**options), [])
    return dst


def structure(calib_size: int) -> tuple[list[dict], list[dict]]:
    from edgevit.models import ModelSpec

    spec = ModelSpec("deit_tiny", pretrained=False)  # 224 px, 1000 classes, 12 blocks
    run = export(spec, RUN / "deit_tiny224", ["onnx", "tensorrt-fp16", "tensorrt-int8"], calib=str(IMAGENET),
                 calib_size=calib_size)
    norms = export(spec, RUN / "deit_tiny224-norms", ["onnx", "tensorrt-int8"], calib=str(IMAGENET),
                   calib_size=calib_size, quantize_norms=True)
    art, art_norms = run / "artifacts" / "tensorrt-int8", norms / "artifacts" / "tensorrt-int8"
    before = fp32_elsewhere(art, RUN / "deit_tiny224-fp32-elsewhere.onnx", calib_size, IMAGENET)
    before_norms = fp32_elsewhere(art_norms, RUN / "deit_tiny224-norms-fp32-elsewhere.onnx", calib_size, IMAGENET,
                                  quantize_norms=True)
    graphs = [graph_row("tensorrt-int8 (ships: int8 GEMMs + fp16)", art / "model.onnx"),
              graph_row("tensorrt-int8 --quantize-norms", art_norms / "model.onnx", quantize_norms=True),
              graph_row("Q/DQ graph, fp32 outside the GEMMs (before)", before),
              graph_row("tensorrt-fp16", run / "artifacts" / "tensorrt-fp16" / "model.onnx")]
    scales = [scale_row("tensorrt-int8 scales vs the fp32 Q/DQ graph", art / "model.onnx", before),
              scale_row("tensorrt-int8 --quantize-norms scales vs its fp32 Q/DQ graph", art_norms / "model.onnx",
                        before_norms)]
    return graphs, scales


def accuracy(weights: Path) -> list[dict]:
    """Shipped int8 graph and the fp32-elsewhere one against the float model, on the same images."""
    from edgevit.eval.validate import validate_runners
    from edgevit.models import create_model
    from edgevit.targets import get_target

    spec = reference_spec(weights)
    run = export(spec, RUN / "cifar", ["onnx", "tensorrt-int8"], data=str(CIFAR))
    art = run / "artifacts" / "tensorrt-int8"
    onnx_target = get_target("onnx")
    with tempfile.TemporaryDirectory() as work:
        before = fp32_elsewhere(art, Path(work) / "model.onnx", 300, CIFAR)
        runners = {"tensorrt-int8 (ships: int8 GEMMs + fp16)": get_target("tensorrt-int8").load(art),
                   "Q/DQ, fp32 outside the GEMMs (before)": onnx_target.load_file(before),
                   "onnx (fp32)": onnx_target.load(run / "artifacts" / "onnx")}
        data_cfg = json.loads((run / "run.json").read_text())["data_config"]
        res = validate_runners(runners, create_model(spec).eval(), data_cfg, str(CIFAR), "test")
    keep = ("images", "top1", "float_top1", "top1_drop_pts", "top1_drop_ci95_pts", "agreement_pct",
            "only_float_correct", "only_artifact_correct", "max_abs_logit_diff")
    return [{"variant": name, "model": str(weights.relative_to(ROOT)) if weights.is_relative_to(ROOT) else str(weights),
             **{k: r[k] for k in keep}} for name, r in res.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="CIFAR DeiT-Ti p4 weights (default: the committed reference model)")
    ap.add_argument("--calib-size", type=int, default=64, help="ImageNet calibration images for the 224 px graphs")
    args = ap.parse_args()
    weights = Path(args.weights) if args.weights else reference_weights()
    graphs, scales = structure(args.calib_size)
    acc = accuracy(weights)
    ships, norms = graphs[0], graphs[1]
    int8 = acc[0]
    checks = [check("int8_graph_fp32_ops_outside_norms", ships["fp32_ops_outside_norms"], "<=", 0),
              check("int8_graph_attention_matmuls_quantized", ships["attention_matmuls_quantized"], ">=", 24),
              check("int8_graph_linear_layers_quantized", ships["linear_layers_quantized"], ">=", 48),
              check("tensorrt_int8_rules_violations", ships["rules_violations"] + norms["rules_violations"], "<=", 0),
              check("int8_fp16_graph_top1_drop_pts", int8["top1_drop_pts"], "<=", 0.5),
              check("int8_fp16_graph_agreement_pct", int8["agreement_pct"], ">=", 95),
              # the two shipped DeiT-Ti graphs: 12 attention softmax outputs each, all at scale 1/127
              check("softmax_output_scale_fixed", ships["softmax_outputs_fixed_1_127"]
                    + norms["softmax_outputs_fixed_1_127"], ">=", 24),
              check("fp16_scale_changes_unflagged", sum(r["fp16_scale_changes_unflagged"] for r in scales), "<=", 0)]
    for r in graphs:
        print(f"{r['variant']:<48} {r['label']:<20} fp32 ops outside LN {r['fp32_ops_outside_norms']:>4}  "
              f"linear {r['linear_layers_quantized']}/{r['linear_layers']}  attention "
              f"{r['attention_matmuls_quantized']}/{r['attention_matmuls']}  rules {r['rules_violations']}")
    for r in scales:
        print(f"{r['variant']:<64} {r['fp16_scales_compared']} scales compared, {r['fp16_scales_kept_float']} kept "
              f"float, {r['fp16_scale_changes_unflagged']} changed in fp16 unflagged")
    for r in acc:
        print(f"{r['variant']:<48} top-1 {r['top1']:.2f} vs float {r['float_top1']:.2f}  "
              f"drop {r['top1_drop_pts']:+.2f} {r['top1_drop_ci95_pts']}  agreement {r['agreement_pct']:.1f} %  "
              f"only float/only artifact {r['only_float_correct']}/{r['only_artifact_correct']}")
    write_results(__file__, graphs + scales + acc, checks, calib_size=args.calib_size, reference_model=str(weights),
                  note="TensorRT is not installed here: the graph's types and rules are checked, and its accuracy is "
                       "ONNX Runtime's on the CPU (fp16 ops that ORT's CPU provider lacks run upcast there); the "
                       "engine's speed is for benchmarks/gpu_check.py and deploy/jetson on a device.")


if __name__ == "__main__":
    main()
