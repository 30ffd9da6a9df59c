"""How pruned tokens are gathered, on OpenVINO int8: a row Gather of the flattened tokens (edgevit's
``ops.tokens.take_tokens``) against ``gather`` with an index expanded over the channels (the form
before it, which ONNX exports as Expand + GatherElements), side by side in one run.

DeiT-Ti @224 (random weights, seeded: latency does not depend on their values), batch 1, EViT keep 0.4
at blocks 1, 4, 7 (the optimize_cpu winner's transform), `openvino-int8` calibrated on 8 CIFAR images as
`edgevit optimize` does for its latency artifacts; NNCF's default int8 of the dense model beside them.
Each artifact is profiled with OpenVINO's per-node counters (PERF_COUNT: the time of each executed
node, summed per node type and kernel; one artifact after the other, so the profiles show where the
time goes, not which is faster), then the pairs are timed in short interleaved rounds
(edgevit.eval.timing: one run of each per round, a random order, the median per-round ratio and its
bootstrap 95 % interval), each pair alone, in --repeats repeats, the median repeat counting. The two
gather forms are checked equal on the model's outputs before any timing.

    python benchmarks/token_gather.py [--rounds 200] [--repeats 5]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, check, write_results  # noqa: E402
from int8_cpu import calib_for, export, nncf_default  # noqa: E402
from optimize_cpu import pair_ratios  # noqa: E402

RUN = ROOT / "benchmarks" / "runs" / "token_gather"
CIFAR = SHARED_DATA / "cifar-10-batches-py"
PRUNE = "evit:0.4@1,4,7"
REF_KERNELS = ("Broadcast", "GatherElements")  # what the expanded gather runs as (reference kernels)


def expanded_gather(t, idx):
    """The form before ``take_tokens``: ``gather`` along the tokens with the index expanded over C."""
    return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


@contextlib.contextmanager
def gathering(expanded: bool):
    """Pruned tokens taken by the expanded gather (``expanded``) or by edgevit's row gather, inside."""
    from edgevit.ops import tokens as T

    take = T.take_tokens
    T.take_tokens = expanded_gather if expanded else take
    try:
        yield
    finally:
        T.take_tokens = take


def artifacts() -> dict[str, Path]:
    import torch

    from edgevit.models import ModelSpec

    spec = ModelSpec("deit_tiny", num_classes=10, pretrained=False)
    shutil.rmtree(RUN, ignore_errors=True)
    opts = {"calib": str(CIFAR), "calib_size": 8}
    out = {}
    for name, prune, targets in (("dense", None, ["onnx", "openvino-int8"]), ("row", PRUNE, ["openvino-int8"]),
                                 ("expanded", PRUNE, ["openvino-int8"])):
        with gathering(expanded=name == "expanded"):
            torch.manual_seed(0)
            out[name] = export(dataclasses.replace(spec, prune=prune), RUN / name, targets, **opts)
    dense = out.pop("dense")
    return {"nncf-default int8 dense": nncf_default(dense, calib_for(dense, CIFAR, 8)),
            "row gather": out["row"] / "artifacts" / "openvino-int8",
            "expanded gather": out["expanded"] / "artifacts" / "openvino-int8"}


def gather_forms_diff() -> float:
    """max |Δ| between the pruned model's logits with either gather form (same weights, same images)."""
    import torch

    from edgevit.models import ModelSpec
    from edgevit.transforms import build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec("deit_tiny", num_classes=10, pretrained=False, prune=PRUNE))[0].eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        row = model(x)
        with gathering(expanded=True):
            expanded = model(x)
    return float((row - expanded).abs().max())


def profile(path: Path, runs: int = 200) -> dict:
    """Per node type and kernel, the mean time per inference in ms (OpenVINO's per-node counters)."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    m = core.read_model(str(path / "model.xml"))
    m.reshape([1, 3, 224, 224])
    req = core.compile_model(m, "CPU", {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(20):
        req.infer({0: x})
    per: collections.Counter = collections.Counter()
    for _ in range(runs):
        req.infer({0: x})
        for p in req.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                per[f"{p.node_type} ({p.exec_type})"] += p.real_time.total_seconds() * 1e3 / runs
    return {"node_ms": sum(per.values()), "by_kernel_ms": dict(per.most_common()),
            "reference_gather_ms": sum(v for k, v in per.items() if k.split(" ")[0] in REF_KERNELS
                                       and "ref" in k)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    diff = gather_forms_diff()
    paths = artifacts()
    profiles = {k: profile(p) for k, p in paths.items()}
    pairs = (("row gather", "expanded gather"), ("row gather", "nncf-default int8 dense"),
             ("expanded gather", "nncf-default int8 dense"))
    ratios = pair_ratios(paths, args.rounds, args.repeats, pairs)
    rows = [{"part": "OpenVINO per-node profile (DeiT-Ti @224, batch 1, 200 runs)", "variant": k,
             "artifact": str(paths[k].relative_to(ROOT)), **v} for k, v in profiles.items()]
    rows += [{"part": "paired ratio, the pair alone (median of the repeats)", "ratio_of": k, **v}
             for k, v in ratios.items()]
    checks = [
        check("gather_forms_logit_max_abs_diff", diff, "<=", 0.0),
        check("row_vs_expanded_gather_latency_ratio", ratios["row gather / expanded gather"]["ratio"], "<=", 1.0),
        check("row_gather_reference_kernel_ms", profiles["row gather"]["reference_gather_ms"], "<=", 0.02),
    ]
    for k, v in profiles.items():
        print(f"{k:<26} node time {v['node_ms']:.3f} ms, reference gather kernels {v['reference_gather_ms']:.3f} ms")
    for v in ratios.values():
        print("  " + v["text"])
    write_results(__file__, rows, checks, prune=PRUNE, ratios=ratios)


if __name__ == "__main__":
    main()
