"""benchmarks/gpu_check.py: the --dry-run code path on the CPU, the refusal without CUDA, the int8 GEMM helper, and
the trtexec layer-info step (benchmarks/trtexec_layers.py) with a stand-in trtexec."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402
import trtexec_layers  # noqa: E402


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_dry_run_writes_every_variant_in_the_results_format(tmp_path):
    out = tmp_path / "x.json"
    r = _run("--dry-run", "--out", str(out), "--trtexec", str(tmp_path / "no-trtexec"))
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["command"].startswith("python benchmarks/gpu_check.py --dry-run") and d["dry_run"] is True
    names = {row["name"] for row in d["rows"]}
    want = {f"{m}-{v}-b{b}" for m in ("deit_tiny", "deit_small") for v, _, _ in gpu_check.MODEL_VARIANTS
            for b in gpu_check.TOY["model_batches"]}
    want |= {f"block-{mode}-b{b}" for mode in gpu_check.BLOCK_MODES for b in (1, 8, 64)}
    assert names == want | {"trtexec"}
    assert "no-trtexec is not an executable file" in r.stdout  # without trtexec: said, skipped, the rest runs
    for row in d["rows"]:
        if row["kind"] == "trtexec":
            assert "skipped" in row["skipped"] and row["trtexec"] is None
        elif row["name"].endswith(("compile-b1", "compile-b64")):
            assert "not run on CPU" in row["skipped"]
        else:
            assert row["p50_ms"] > 0 and row["p90_ms"] >= row["p50_ms"] and len(row["p50_ms_per_round"]) == 1
    blocks = [row for row in d["rows"] if row["kind"] == "block"]
    assert all(row["rel_err_vs_fp32"] < 0.05 for row in blocks)  # int8 blocks compute the block, roughly
    assert {c["name"] for c in d["checks"]} == {"int8_fp16_vs_int8_fp32_block_latency_ratio_b64",
                                                 "int8_fp16_vs_fp16_block_latency_ratio_b64"}
    for c in d["checks"]:
        assert set(c) >= {"name", "value", "op", "bar"} and c["op"] == "<=" and c["bar"] == 1.0
    assert d["machine"]["torch"] == torch.__version__ and "guard_s" in d["timing"]
    assert any("not int8" in n for n in d["notes"])


def test_without_cuda_it_refuses_with_a_message():
    r = _run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode != 0
    assert "no CUDA device" in r.stderr and "--dry-run" in r.stderr


def test_dry_run_never_writes_the_committed_result():
    r = _run("--dry-run", "--out", str(gpu_check.RESULTS / "gpu_check.json"))
    assert r.returncode != 0 and "never writes" in r.stderr


@pytest.mark.parametrize("m", [5, 17, 197])
def test_int8_linear_matches_a_float_matmul(m):
    g = torch.Generator().manual_seed(m)
    x, w, b = torch.randn(m, 64, generator=g), torch.randn(48, 64, generator=g) / 8, torch.randn(48, generator=g)
    mm, _ = gpu_check.pick_int_mm(torch.device("cpu"))
    q = gpu_check.prepare_int8(w, b, float(x.abs().amax()))
    ref = torch.nn.functional.linear(x, w, b)
    for dtype in (torch.float32, torch.float16):
        y = gpu_check.int8_linear(x.to(dtype), q, dtype, mm)
        assert y.dtype == dtype and y.shape == ref.shape
        assert float((y.float() - ref).norm() / ref.norm()) < 0.03


def test_int_mm_is_exact_and_pads_small_row_counts():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (5, 32), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (24, 32), generator=g, dtype=torch.int8).t()  # column-major, as the proxy passes it
    want = a.to(torch.int32) @ b.to(torch.int32)
    for mm in (gpu_check.pick_int_mm(torch.device("cpu"))[0], gpu_check._int_mm_emulated):
        got = gpu_check.int_mm(a, b, mm)
        assert got.dtype == torch.int32 and torch.equal(got, want)


def test_weight_quantization_is_per_channel():
    w = torch.tensor([[1.0, -0.5], [100.0, 50.0]])
    wq, scale = gpu_check.quantize_weight(w)
    assert wq.dtype == torch.int8 and wq.tolist() == [[127, -64], [127, 64]]
    assert torch.allclose(scale, torch.tensor([1 / 127, 100 / 127]))


LAYERS = json.dumps({"Layers": [
    {"Name": "Reformatting CopyNode for Input Tensor 0 to /patch_embed/proj/Conv", "LayerType": "Reformat",
     "Inputs": [{"Format/Datatype": "Row major linear FP32"}], "Outputs": [{"Format/Datatype": "Half"}]},
    {"Name": "/blocks.0/attn/qkv/MatMul", "LayerType": "gemm", "TacticName": "sm90_xmma_gemm_i8f16_i8i32_f32",
     "Inputs": [{"Format/Datatype": "Int8"}], "Outputs": [{"Format/Datatype": "Half"}]},
    {"Name": "/blocks.0/attn/MatMul_myl0_3", "LayerType": "kgen", "TacticName": "_gemm_mha_v2_0x9f",
     "Inputs": [{"Format/Datatype": "Half"}], "Outputs": [{"Format/Datatype": "Half"}]},
    {"Name": "/blocks.0/norm1/LayerNormalization_input_cast_to_fp32/Cast", "LayerType": "Cast",
     "Inputs": [{"Format/Datatype": "Half"}], "Outputs": [{"Format/Datatype": "Float"}]}]})
PROFILE = json.dumps([{"count": 50}, {"name": "Reformatting CopyNode for Input Tensor 0 to /patch_embed/proj/Conv",
                                      "timeMs": 1.0, "averageMs": 0.02, "percentage": 3.5},
                      {"name": "/blocks.0/norm1/LayerNormalization_input_cast_to_fp32/Cast", "timeMs": 0.5,
                       "averageMs": 0.01, "percentage": 1.25}])


def test_layer_report_tells_fused_attention_and_the_casts_left():
    rep = trtexec_layers.layer_report(LAYERS, PROFILE, "[I] GPU Compute Time: min = 0.5 ms, max = 0.9 ms, "
                                                       "mean = 0.61 ms, median = 0.6 ms, percentile(90%) = 0.7 ms")
    assert rep["attention_fused"] is True and rep["attention_kernels"] == ["_gemm_mha_v2_0x9f"]
    assert rep["reformat_layers"] == ["Reformatting CopyNode for Input Tensor 0 to /patch_embed/proj/Conv"]
    assert rep["cast_layers"] == ["/blocks.0/norm1/LayerNormalization_input_cast_to_fp32/Cast"]
    assert rep["reformat_cast_time_pct"] == 4.75 and rep["gpu_compute_median_ms"] == 0.6 and rep["layers"] == 4
    plain = trtexec_layers.layer_report(json.dumps({"Layers": [{"Name": "/blocks.0/attn/MatMul", "LayerType": "gemm",
                                                                "TacticName": "sm90_xmma_gemm_f16f16"}]}))
    assert plain["attention_fused"] is False and plain["cast_layers"] == [] and plain["gpu_compute_median_ms"] is None


def test_trtexec_step_builds_one_engine_per_target_and_batch(tmp_path):
    fake = tmp_path / "trtexec"  # writes the files --exportLayerInfo/--exportProfile name, prints trtexec's timing line
    fake.write_text("#!/usr/bin/env bash\necho \"$@\" >> \"$(dirname \"$0\")/calls\"\n"
                    "for a in \"$@\"; do case $a in\n"
                    f"  --exportLayerInfo=*) printf '%s' '{LAYERS}' > \"${{a#--exportLayerInfo=}}\";;\n"
                    f"  --exportProfile=*) printf '%s' '{PROFILE}' > \"${{a#--exportProfile=}}\";;\n"
                    "esac; done\n"
                    "echo '[I] GPU Compute Time: min = 0.5 ms, max = 0.9 ms, mean = 0.6 ms, median = 0.55 ms'\n")
    fake.chmod(0o755)
    onnx = {t: tmp_path / f"{t}.onnx" for t in trtexec_layers.TARGETS}
    rows = trtexec_layers.run_step(str(fake), onnx, [3, 224, 224], tmp_path / "work")
    assert [r["name"] for r in rows] == ["trtexec-tensorrt-fp16-b1", "trtexec-tensorrt-fp16-b64",
                                         "trtexec-tensorrt-int8-b1", "trtexec-tensorrt-int8-b64"]
    assert all(r["attention_fused"] and r["gpu_compute_median_ms"] == 0.55 for r in rows)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 4 and all(f in calls[1] for f in (
        "--minShapes=input:64x3x224x224", "--maxShapes=input:64x3x224x224", "--dumpLayerInfo", "--dumpProfile",
        "--profilingVerbosity=detailed", "--useCudaGraph", "--noDataTransfers", "--stronglyTyped"))
    assert trtexec_layers.find_trtexec(str(fake)) == (str(fake), None)
    bad = tmp_path / "fail"
    bad.write_text("#!/usr/bin/env bash\necho 'parse error' >&2\nexit 3\n")
    bad.chmod(0o755)
    failed = trtexec_layers.run_step(str(bad), {"tensorrt-int8": onnx["tensorrt-int8"]}, [3, 8, 8], tmp_path / "w2",
                                     batches=(1,))
    assert failed[0]["error"] == "trtexec exited 3" and "parse error" in failed[0]["log_tail"]
    row = trtexec_layers.section(str(fake), str(tmp_path / "nothing"), 224, {})[0]
    assert row["name"] == "trtexec" and "lacks" in row["skipped"]
