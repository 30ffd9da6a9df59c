"""CoreML packages of DeiT-Ti @224: fp16 (`coreml`) and int8 weights (`coreml-int8`), built here.

Runs the edgevit pipeline (torch.export + coremltools) for both targets in one run directory (its
report lists the packages), and measures each package: size on disk, weight storage, op summary,
int8 weight ops, structural check, build time. The fp16 package is the baseline the int8 one is
compared with; the float ONNX of the same model is listed for scale. CoreML cannot run on Linux,
so the packages are checked structurally here and validated on a Mac (`edgevit validate`).

    python benchmarks/coreml_pack.py [--model deit_tiny] [--checkpoint W]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_results  # noqa: E402

RUN = ROOT / "benchmarks" / "runs" / "coreml_pack"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny")
    ap.add_argument("--checkpoint", help="weights (default: random init; package size and ops do not depend on them)")
    args = ap.parse_args()

    from edgevit.models import ModelSpec
    from edgevit.run.export import ExportOptions, run_export

    spec = ModelSpec(args.model, pretrained=False, checkpoint=args.checkpoint)
    shutil.rmtree(RUN, ignore_errors=True)
    t0 = time.perf_counter()
    run_export(spec, ExportOptions(targets=["onnx", "coreml", "coreml-int8"], out=RUN, bench=False))
    total_s = time.perf_counter() - t0
    rows = []
    for t in ("onnx", "coreml", "coreml-int8"):
        mf = json.loads((RUN / "artifacts" / t / "manifest.json").read_text())
        s = mf["export"].get("structure", {})
        rows.append({"target": t, "precision": mf["precision"], "size_mb": mf["size_bytes"] / 2**20,
                     "size_bytes": mf["size_bytes"], "weights_mb": s.get("weights_bytes", 0) / 2**20 or None,
                     "op_total": s.get("op_total", mf.get("onnx", {}).get("nodes")),
                     "int8_weight_ops": s.get("int8_weight_ops"), "ops": s.get("ops"),
                     "inputs": s.get("inputs"), "outputs": s.get("outputs"),
                     "weights": mf["export"].get("weights", "fp16" if t == "coreml" else "fp32"),
                     "check": mf["check_vs_pytorch"].get("skipped") and "structural (not run on Linux)"
                     or "outputs vs PyTorch"})
    by = {r["target"]: r for r in rows}
    checks = [check("coreml_int8_size_vs_fp16", by["coreml-int8"]["size_bytes"] / by["coreml"]["size_bytes"],
                    "<=", 0.55)]
    for r in rows:
        print(f"{r['target']:<12} {r['size_mb']:6.2f} MB  ops {r['op_total']}  int8 weight ops {r['int8_weight_ops']}")
    print(f"report: {RUN / 'report.md'}")
    write_results(__file__, rows, checks, model=spec.to_dict(), build_s_total=total_s,
                  report=str((RUN / "report.md").relative_to(ROOT)))


if __name__ == "__main__":
    main()
