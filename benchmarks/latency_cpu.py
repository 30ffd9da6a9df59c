"""DeiT-Ti @224, batch 1: PyTorch eager vs ONNX Runtime vs OpenVINO (fp32 and the default precision).

Latency does not depend on the weights' values, so the model has random weights (no hub here).
Every variant is measured in the same process, in 200 short rounds (one run of each, a random order per
round; the machine is noisy): each speedup is the paired ratio against eager, the median of the per-round
ratios, with its bootstrap 95 % interval (edgevit.eval.timing).

    python benchmarks/latency_cpu.py [--rounds 200] [--iters 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check, isa_bar, write_results  # noqa: E402

# openvino_speedup_vs_eager's 2.0 bar assumes OpenVINO's default CPU precision is bf16, which it is only
# where the CPU has AVX512_BF16 or AMX-BF16 ("avx512_bf16" in isa or "amx_bf16" in isa); elsewhere it is
# f32. By class: avx2, avx-vnni and avx512 CPUs have neither (no bar there); amx CPUs have AMX-BF16; the
# avx512-vnni class holds both kinds (Cascade/Ice Lake without bf16, Cooper Lake and Zen 4 with), so the
# class cannot decide and keeps the bar, as does "unknown".
NO_BF16 = {"avx2": None, "avx-vnni": None, "avx512": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny")
    ap.add_argument("--rounds", type=int, default=200, help="short rounds (one run of each, a random order each)")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from edgevit.models import ModelSpec, create_model
    from edgevit.run.artifacts import bench_artifacts_timed
    from edgevit.run.export import ExportOptions, run_export

    spec = ModelSpec(args.model, pretrained=False)
    model = create_model(spec)
    targets = ["onnx", "openvino", "openvino-fp16"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        run_export(spec, ExportOptions(targets=targets, out=out, bench=False), model=model)
        arts = [out / "artifacts" / t for t in targets]
        rows, rt = bench_artifacts_timed(arts, model, batch=1, threads=args.threads, warmup=args.warmup,
                                         iters=args.iters, rounds=args.rounds)
    variants = {"pytorch-eager": "pytorch eager fp32", "onnx": "onnxruntime fp32", "openvino": "openvino fp32"}
    speedup = {}
    for r in rows:
        r.pop("artifact", None)
        r["variant"] = variants.get(r["name"], f"openvino default ({r['runtime_precision']})")
        q = r["ratio_vs_first"]  # this / eager, paired by round
        speedup[r["name"]] = {"speedup": 1 / q["ratio"], "ci95": [1 / q["ci95"][1], 1 / q["ci95"][0]]}
        r["speedup_vs_eager"], r["speedup_vs_eager_ci95"] = speedup[r["name"]]["speedup"], speedup[r["name"]]["ci95"]
    by = {r["name"]: r for r in rows}
    precision = by["openvino-fp16"]["runtime_precision"]
    checks = [
        check("onnx_speedup_vs_eager", speedup["onnx"]["speedup"], ">=", 1.5),
        check("openvino_speedup_vs_eager", speedup["openvino-fp16"]["speedup"], ">=",
              isa_bar(NO_BF16, default=2.0),
              why=f"the 2.0 bar assumes bf16: this CPU class has no AVX512_BF16 or AMX-BF16, so OpenVINO's "
                  f"default precision here is {precision}, the precision eager runs in"),
    ]
    info = {"openvino_fp32_speedup_vs_eager": speedup["openvino"]["speedup"], "openvino_default_precision": precision,
            "speedups_with_ci95": speedup, "timing": rt.context}
    for r in rows:
        lo, hi = r["speedup_vs_eager_ci95"]
        print(f"{r['variant']:<28} {r['estimate_ms']:7.2f} ms  ×{r['speedup_vs_eager']:.2f} [{lo:.2f}, {hi:.2f}] "
              "vs eager")
    write_results(__file__, rows, checks, model=args.model, input_size=[1, 3, 224, 224], info=info,
                  rounds=args.rounds, iters=args.iters)


if __name__ == "__main__":
    main()
