"""The Jetson deploy kit: edgevit_jetson.sh (syntax, shellcheck, --dry-run, a run with stand-in tools),
summarize.py on a recorded-format sample, and device results merged into a run's report.

The trtexec times and tegrastats lines below are SAMPLES written by the tests in the real formats
(trtexec 10 --exportTimes keys; JetPack 6 and older tegrastats lines), not measurements."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgevit.errors import ArtifactError, RunDirError
from edgevit.report.device import load_device_results, merge_device_results
from edgevit.report.report import collect, write_report

KIT = Path(__file__).resolve().parents[1] / "deploy" / "jetson"
SCRIPT, SUMMARIZE, POWER = KIT / "edgevit_jetson.sh", KIT / "summarize.py", KIT / "jetson_power.py"
LATENCIES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]  # sample, ms
ORIN = ("{stamp} RAM 2270/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,2%@729] EMC_FREQ 0% "
        "GR3D_FREQ {gpu}% cpu@45.5C soc2@-256C soc0@45C gpu@{gpu_t}C tj@{tj}C soc1@44C "
        "VDD_IN {vin}mW/6990mW VDD_CPU_GPU_CV 2480mW/2400mW VDD_SOC 1600mW/1590mW")
NANO = ("RAM 1500/3956MB (lfb 4x4MB) SWAP 0/1978MB (cached 0MB) CPU [5%@102,off,off,3%@102] EMC_FREQ 0%@1600 "
        "GR3D_FREQ 12%@76 APE 25 PLL@22C CPU@24.5C PMIC@100C GPU@23C AO@30.5C thermal@23.75C "
        "POM_5V_IN 3000/2900 POM_5V_GPU 0/0 POM_5V_CPU 123/123")


def _summarize_module(path: Path = SUMMARIZE):
    spec = importlib.util.spec_from_file_location(f"edgevit_jetson_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _power_module():
    return _summarize_module(POWER)


def trtexec_times(lat=LATENCIES) -> list[dict]:
    """trtexec 10 --exportTimes entries: one inference every 2 ms, h2d/d2h 0.1 ms each."""
    out = []
    for i, ms in enumerate(lat):
        s = 2.0 * i
        out.append({"startEnqMs": s, "endEnqMs": s + 0.05, "startH2dMs": s, "endH2dMs": s + 0.1,
                    "startComputeMs": s + 0.1, "endComputeMs": s + ms - 0.1, "startD2hMs": s + ms - 0.1,
                    "endD2hMs": s + ms, "h2dMs": 0.1, "computeMs": ms - 0.2, "d2hMs": 0.1, "latencyMs": ms})
    return out


def tegrastats_lines(stamps: list[str]) -> list[str]:
    vals = [(99, 46.1, 46.8, 7012), (98, 47.0, 48.5, 7500), (97, 47.5, 49.0, 6800), (96, 48.0, 48.0, 8000)]
    return [ORIN.format(stamp=st, gpu=g, gpu_t=gt, tj=tj, vin=v) for st, (g, gt, tj, v) in zip(stamps, vals)]


STAMPS = ["11-27-2026 10:00:00", "11-27-2026 10:00:01", "11-27-2026 10:00:02", "11-27-2026 10:00:03"]


def write_artifact(folder: Path, model="deit_tiny", size=(3, 32, 32), trtexec_args=True, onnx=b"fake onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx)
    c, h, w = size
    mf = {"target": "tensorrt-int8", "precision": "int8", "model": {"name": model},
          "data_config": {"input_size": list(size)}, "export": {}}
    if trtexec_args:
        mf["export"]["trtexec_args"] = [
            "--onnx=model.onnx", "--saveEngine=model.plan", "--stronglyTyped", f"--minShapes=input:1x{c}x{h}x{w}",
            f"--optShapes=input:1x{c}x{h}x{w}", f"--maxShapes=input:4x{c}x{h}x{w}", "--memPoolSize=workspace:1024M",
            "--timingCacheFile=timing.cache"]
    (folder / "manifest.json").write_text(json.dumps(mf))
    return folder


def run_script(*args, cwd: Path, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


# ---------------------------------------------------------------- the shell script
def test_script_syntax_and_shellcheck():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    sc = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(sc).is_file():
        pytest.skip("shellcheck binary not found (on PATH or next to the Python executable)")
    r = subprocess.run([sc, "--shell=bash", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
    art = write_artifact(tmp_path / "art")
    r = run_script("--artifact", art, "--dry-run", "--batch", "2", "--iterations", "50", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines)
    build = next(line for line in lines if "--saveEngine=model.plan" in line)
    assert "trtexec" in build and "--onnx=model.onnx" in build and "--stronglyTyped" in build
    assert "--skipInference" in build and "--loadEngine" not in build  # the build call only builds
    assert "--optShapes=input:2x3x32x32" in build and "--maxShapes=input:4x3x32x32" in build
    bench = next(line for line in lines if "--loadEngine=model.plan" in line)
    for flag in ("--shapes=input:2x3x32x32", "--warmUp=2000", "--duration=20", "--iterations=50", "--useSpinWait",
                 "--exportTimes=times.json"):
        assert flag in bench
    assert "--skipInference" not in bench
    meta = next(line for line in lines if "summarize.py engine-json" in line)
    assert "--batch 2" in meta and meta.endswith("/engine.json") and "--build-s" in meta
    assert lines.index(meta) == lines.index(build) + 1  # engine.json right after the build, beside model.plan
    assert any("tegrastats --interval 100 --logfile" in line for line in lines)
    summ = next(line for line in lines if "summarize.py summarize" in line)
    assert "--times" in summ and "--batch 2" in summ and "--jetson-clocks" not in summ and "--bench-log" in summ
    assert not any("nvpmodel" in line or "jetson_clocks" in line for line in lines)
    assert list(tmp_path.iterdir()) == [art]  # nothing made: no workdir, no results


def test_dry_run_power_mode_and_clocks_only_when_asked(tmp_path):
    art = write_artifact(tmp_path / "art", trtexec_args=False)
    r = run_script("--artifact", art, "--dry-run", "--power-mode", "0", "--clocks", "--workdir", "wd",
                   "--out", "j.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert any(line.endswith("nvpmodel -m 0") for line in r.stdout.splitlines())
    assert any(line.endswith("jetson_clocks") for line in r.stdout.splitlines())
    assert "no export.trtexec_args: using the default build flags" in r.stderr
    assert "--maxShapes=input:8x3x32x32" in r.stdout and f"--out {tmp_path}/j.json" in r.stdout
    assert f"cd {tmp_path}/wd" in r.stdout


@pytest.mark.parametrize("args, message", [
    ((), "no --artifact given"),
    (("--artifact", "missing"), "does not exist"),
    (("--artifact", "empty"), "has no model.onnx"),
    (("--artifact", "art", "--trtexec", "/nonexistent/trtexec"), "trtexec not found at /nonexistent/trtexec"),
    (("--artifact", "art", "--duration", "0"), "--batch, --duration and --iterations must be at least 1"),
    (("--artifact", "art", "--duration", "1.5"), "--duration must be a whole number"),
    (("--artifact", "art", "--batch", "x"), "--batch must be a whole number"),
    (("--bogus",), "unknown argument"),
])
def test_script_errors_say_what_and_how(tmp_path, args, message):
    write_artifact(tmp_path / "art")
    (tmp_path / "empty").mkdir()
    r = run_script(*args, cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "fix:" in r.stderr or "summarize.py: error" in r.stderr


FAKE_TRTEXEC = """#!/usr/bin/env bash
# stand-in trtexec: records its argv, writes what the real one writes, prints its summary lines
printf '%s\\n' "$*" >> "$FAKE_ARGV"
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
echo "[I] TensorRT version: 10.3.0"
engine="" times="" skip=0 load=0
for a in "$@"; do
  case $a in
    --saveEngine=*) engine=${a#--saveEngine=} ;;
    --exportTimes=*) times=${a#--exportTimes=} ;;
    --skipInference) skip=1 ;;
    --loadEngine=*) load=1 ;;
  esac
done
if [[ -n $engine ]]; then
  printf 'engine' > "$engine"
  echo "[I] Engine built in 0.01 sec."
  if [[ $skip -eq 0 ]]; then sleep 3; echo "[I] Throughput: 1 qps"; fi  # a build that benchmarks as well
fi
if [[ $load -eq 1 ]]; then
  sleep "$FAKE_BENCH_S"
  cp "$FAKE_TIMES" "$times"
  echo "[I] === Performance summary ==="
  echo "[I] Throughput: 500 qps"
  echo "[I] Total Host Walltime: 2 s"
fi
"""
FAKE_TEGRASTATS = """#!/usr/bin/env bash
log=""
while [[ $# -gt 0 ]]; do [[ $1 == --logfile ]] && log=$2; shift; done
while true; do echo "$(date '+%m-%d-%Y %H:%M:%S') $FAKE_LINE" >> "$log"; sleep 0.05; done
"""
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
echo "Orin (nvgpu)"
"""


def _stand_ins(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("trtexec", FAKE_TRTEXEC), ("tegrastats", FAKE_TEGRASTATS), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "times.json").write_text(json.dumps(trtexec_times()))
    line = tegrastats_lines(["x"])[0].split(" ", 1)[1]
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_TIMES": str(tmp_path / "times.json"),
            "FAKE_LINE": line, "FAKE_ARGV": str(tmp_path / "argv.txt"), "FAKE_BENCH_S": "2.6"}


def test_script_runs_end_to_end_with_stand_in_tools(tmp_path):
    """Not a Jetson: trtexec, tegrastats and nvidia-smi are stand-ins that write the real formats."""
    art = write_artifact(tmp_path / "art")
    env = _stand_ins(tmp_path)
    r = run_script("--artifact", art, "--trtexec", tmp_path / "bin" / "trtexec", "--warmup-ms", "0", "--batch", "2",
                   "--duration", "3", "--out", "r.json", cwd=tmp_path, env_extra=env)
    assert r.returncode == 0, r.stderr + r.stdout
    build, bench = (tmp_path / "argv.txt").read_text().splitlines()
    assert "--skipInference" in build.split() and "--optShapes=input:2x3x32x32" in build.split()
    assert {"--duration=3", "--iterations=10", "--shapes=input:2x3x32x32", "--useSpinWait"} <= set(bench.split())
    res = load_device_results(tmp_path / "r.json")
    row = res["rows"][0]
    assert row["name"] == "tensorrt-int8@jetson-b2" and row["p50_ms"] == 5.5 and row["runs"] == 10
    assert row["runtime"] == "tensorrt 10.3.0 (trtexec)" and row["engine_size_mb"] > 0
    assert row["engine_build_s"] < 2.5  # the build call alone (the stand-in sleeps 3 s when asked to benchmark)
    assert row["profile"] == {"input": [[1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]]}
    assert row["power_w_mean"] == pytest.approx(7.012) and row["tegrastats_samples"] >= 1
    # 500 qps x 2 s = 1000 inferences of batch 2; 7012 mW over the 2 s measured
    assert row["energy_mj_per_image"] == pytest.approx(7012 * 2.0 / 2000) and row["energy_rail"] == "VDD_IN"
    assert row["energy_images"] == 2000 and row["energy_source"] == "trtexec summary"
    win = row["power_window"]
    assert win["end"] - win["start"] >= 2.6 and win["measured_from"] == pytest.approx(win["end"] - 2.0)
    assert win["samples"] == row["tegrastats_samples"] == row["energy_power_samples"]
    assert res["device"]["power_mode_applied"] is False and res["device"]["jetson_clocks"] is False
    assert "--out r.json" in res["command"] and isinstance(res["warnings"], list)
    out = subprocess.run(["pgrep", "-f", str(tmp_path / "bin" / "tegrastats")], capture_output=True, text=True)
    assert out.stdout.strip() == "", "tegrastats was left running"
    meta = json.loads((tmp_path / "edgevit-jetson-tensorrt-int8" / "engine.json").read_text())
    assert meta["built_by"] == "deploy/jetson/edgevit_jetson.sh" and meta["tensorrt"] == "10.3.0"
    assert meta["engine_sha256"] == hashlib.sha256(b"engine").hexdigest() and meta["build_s"] == row["engine_build_s"]
    assert meta["profile"] == row["profile"] and meta["runtime_precision"] == "int8"
    assert meta["trtexec_args"] == res["artifact"]["trtexec_args"] and "--skipInference" in meta["trtexec_args"]
    if not Path("/proc/device-tree/model").exists():  # not a Jetson: the GPU's name comes from nvidia-smi
        assert meta["gpu"] == "Orin (nvgpu)"


def test_engine_json_reads_the_manifest_runtime_precision(tmp_path):
    art = write_artifact(tmp_path / "art")
    mf = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**mf, "runtime_precision": "int8 GEMMs + fp16"}))
    (tmp_path / "model.plan").write_bytes(b"plan")
    cmd = [sys.executable, SUMMARIZE, "engine-json", "--manifest", art / "manifest.json", "--engine",
           tmp_path / "model.plan", "--batch", "8", "--build-s", "12.5", "--out", tmp_path / "engine.json"]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "engine.json").read_text())
    assert meta["runtime_precision"] == "int8 GEMMs + fp16" and meta["gpu"] is None and meta["tensorrt"] is None
    assert meta["profile"]["input"] == [[1, 3, 32, 32], [8, 3, 32, 32], [8, 3, 32, 32]] and meta["build_s"] == 12.5
    (tmp_path / "model.plan").unlink()
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_build_profile_fits_the_benchmark_batch():
    m = _summarize_module()
    mf = json.loads(json.dumps({"data_config": {"input_size": [3, 32, 32]}, "export": {"trtexec_args": [
        "--onnx=model.onnx", "--minShapes=input:1x3x32x32", "--optShapes=input:1x3x32x32",
        "--maxShapes=input:4x3x32x32", "--memPoolSize=workspace:1024M"]}}))
    args, notes = m.build_args(mf, "manifest.json", 2)
    assert args[:4] == ["--onnx=model.onnx", "--minShapes=input:1x3x32x32", "--optShapes=input:2x3x32x32",
                        "--maxShapes=input:4x3x32x32"] and "--skipInference" in args and notes == []
    assert m.bench_shape(mf, args, 2) == "input:2x3x32x32"
    args, notes = m.build_args(mf, "manifest.json", 6)  # above the manifest's max: the engine is built for it
    assert m.profile_of(args) == {"input": [[1, 3, 32, 32], [6, 3, 32, 32], [6, 3, 32, 32]]}
    assert "above the manifest's maximum batch 4" in notes[0]
    static = ["--onnx=model.onnx", "--fp16"]
    assert m.fit_profile(static, 4) == (static, None) and m.profile_of(static) is None
    with pytest.raises(m.SummaryError, match="not name:BxCxHxW"):
        m.fit_profile(["--optShapes=input:axb"], 1)


def test_several_profile_build_becomes_one_profile_for_the_benchmark_batch():
    """The export's flags hold a profile per batch (--profile=N before each); the board's build keeps one."""
    from edgevit.targets.trt_engine import EngineOptions, trtexec_args

    m = _summarize_module()
    exported = trtexec_args(EngineOptions(timing_cache="none"), [3, 32, 32])
    assert "--profile=1" in exported  # the export really has several profiles
    mf = {"data_config": {"input_size": [3, 32, 32]}, "export": {"trtexec_args": exported}}
    args, notes = m.build_args(mf, "manifest.json", 1)
    assert not [a for a in args if a.startswith("--profile=")] and notes == []
    assert sum(a.startswith("--optShapes=") for a in args) == 1
    assert m.profile_of(args) == {"input": [[1, 3, 32, 32], [1, 3, 32, 32], [8, 3, 32, 32]]}


# ---------------------------------------------------------------- summarize.py
def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    pct = _summarize_module().percentile
    vals = sorted([3.2, 1.1, 9.7, 4.4, 4.4, 0.5, 7.3])
    for q in (0, 10, 50, 90, 99, 100):
        assert pct(vals, q) == pytest.approx(float(np.percentile(vals, q)))


def test_tegrastats_lines_both_formats():
    m = _power_module()
    orin = m.parse_tegrastats_line(tegrastats_lines(STAMPS)[0])
    assert orin["rails_mw"] == {"VDD_IN": 7012, "VDD_CPU_GPU_CV": 2480, "VDD_SOC": 1600}
    assert orin["gpu_pct"] == 99 and "soc2" not in orin["temps_c"] and orin["temps_c"]["tj"] == 46.8
    assert orin["time"] == time.mktime(time.strptime(STAMPS[0], "%m-%d-%Y %H:%M:%S"))
    nano = m.parse_tegrastats_line(NANO)
    assert nano["rails_mw"]["POM_5V_IN"] == 3000 and nano["gpu_pct"] == 12 and nano["time"] is None
    stats = m.power_stats([nano])
    assert stats["power_w_mean"] == 3.0 and stats["power_rail"] == "POM_5V_IN"
    assert stats["temp_c_max"] == 30.5 and stats["temps_c_max"]["PMIC"] == 100.0  # PMIC: a fixed placeholder


def _summarize(tmp_path: Path, *extra, times=None, teg=True, teg_lines=None, bench=None) -> subprocess.CompletedProcess:
    art = write_artifact(tmp_path / "art")
    (tmp_path / "times.json").write_text(json.dumps(trtexec_times()) if times is None else times)
    (tmp_path / "tegrastats.log").write_text("\n".join(teg_lines or tegrastats_lines(STAMPS)) + "\n")
    if bench is not None:
        (tmp_path / "bench.log").write_text(bench)
        extra = (*extra, "--bench-log", tmp_path / "bench.log")
    (tmp_path / "model.plan").write_bytes(b"x" * 2**20)
    cmd = [sys.executable, str(SUMMARIZE), "summarize", "--manifest", art / "manifest.json", "--onnx",
           art / "model.onnx", "--times", tmp_path / "times.json", "--engine", tmp_path / "model.plan",
           "--build-s", "42.5", "--device-model", "NVIDIA Jetson Orin Nano Developer Kit", "--l4t", "36.3.0",
           "--jetpack", "6.0+b106", "--tensorrt", "10.3.0.30", "--power-mode", "15W", "--power-mode-id", "0",
           "--power-mode-applied", "--jetson-clocks", "--command", "edgevit_jetson.sh --artifact art",
           "--out", tmp_path / "jetson.json", *extra]
    if teg:
        cmd += ["--tegrastats", tmp_path / "tegrastats.log"]
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=60)


def test_summarize_sample(tmp_path):
    r = _summarize(tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "jetson.json").read_text())
    assert res["format"] == "edgevit-device-results/1" and res["command"] == "edgevit_jetson.sh --artifact art"
    assert res["device"] == {"model": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "36.3.0", "jetpack": "6.0+b106",
                             "tensorrt": "10.3.0.30", "power_mode": "15W", "power_mode_id": 0,
                             "power_mode_applied": True, "jetson_clocks": True}
    assert res["artifact"]["onnx_sha256"] == hashlib.sha256(b"fake onnx").hexdigest()
    assert res["artifact"]["model"] == "deit_tiny" and res["artifact"]["input_size"] == [3, 32, 32]
    row = res["rows"][0]
    assert row["name"] == "tensorrt-int8@jetson" and row["backend"] == "tensorrt" and row["measured_on"] == "device"
    assert row["runtime"] == "tensorrt 10.3.0.30 (trtexec)" and row["runtime_precision"] == "int8"
    assert (row["p50_ms"], row["p90_ms"], row["p99_ms"]) == pytest.approx((5.5, 9.1, 9.91))
    assert (row["mean_ms"], row["min_ms"], row["runs"]) == (5.5, 1.0, 10)
    assert row["throughput_ips"] == pytest.approx(10 * 1000 / 28.0)  # 10 inferences from 0 ms to 28 ms
    assert row["power_w_mean"] == pytest.approx((7012 + 7500 + 6800 + 8000) / 4000)
    assert row["power_w_max"] == 8.0 and row["power_rail"] == "VDD_IN" and row["gpu_util_pct_mean"] == 97.5
    assert row["temp_c_max"] == 49.0 and row["temps_c_max"]["gpu"] == 48.0 and "soc2" not in row["temps_c_max"]
    assert row["engine_build_s"] == 42.5 and row["engine_size_mb"] == 1.0
    # no trtexec summary: 10 inferences over the 28 ms of --exportTimes, at the mean input power
    assert row["energy_mj_per_image"] == pytest.approx(7328 * 0.028 / 10) and row["energy_source"] == "exportTimes"
    assert row["name"] == "tensorrt-int8@jetson" and row["profile"]["input"][1] == [1, 3, 32, 32]
    assert any("no benchmark window" in w for w in res["warnings"]) and any("only 4" in w for w in res["warnings"])
    assert not list(tmp_path.glob(".jetson.json.*"))  # the temporary file was renamed into place


def test_summarize_window_and_no_tegrastats(tmp_path):
    t2 = time.mktime(time.strptime(STAMPS[2], "%m-%d-%Y %H:%M:%S"))
    r = _summarize(tmp_path, "--window", str(t2 - 1.8), str(t2 + 1.5), "--warmup-ms", "2000",  # from t2 + 0.2
                   bench=BENCH_LOG)  # trtexec measured 3 s: the window's measured part starts after the warm-up
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "jetson.json").read_text())
    row = res["rows"][0]  # no whole second inside [t2 + 0.2, t2 + 1.5]: the two overlapping ones, with a warning
    assert row["tegrastats_samples"] == 2 and row["power_w_mean"] == pytest.approx(7.4)
    assert row["power_window"]["selection"] == "seconds overlapping the window"
    assert any("holds no whole second" in w for w in res["warnings"]) and "WARNING" in r.stderr
    r = _summarize(tmp_path, teg=False)
    res = json.loads((tmp_path / "jetson.json").read_text())
    assert r.returncode == 0 and res["rows"][0]["power_w_mean"] is None and res["rows"][0]["temp_c_max"] is None
    assert any("no tegrastats log" in n for n in res["notes"])


def _seconds_of_samples(t0: float, per_second: int, mw_by_second: list[int]) -> list[str]:
    """tegrastats lines, ``per_second`` a second (stamps in whole seconds), VDD_IN as given for each second."""
    lines = []
    for k, mw in enumerate(mw_by_second):
        stamp = time.strftime("%m-%d-%Y %H:%M:%S", time.localtime(t0 + k))
        lines += [ORIN.format(stamp=stamp, gpu=99, gpu_t=47.0, tj=48.0, vin=mw)] * per_second
    return lines


BENCH_LOG = ("[I] === Performance summary ===\n[11/27/2026-10:00:05] [I] Throughput: 100 qps\n"
             "[I] Latency: min = 1 ms\n[11/27/2026-10:00:05] [I] Total Host Walltime: 3 s\n")


@pytest.mark.parametrize("per_second, warned", [(10, False), (4, True)])
def test_energy_per_image_from_the_samples_in_the_window(tmp_path, per_second, warned):
    """Load and warm-up (3000 mW) are left out: only whole seconds inside the measured part count."""
    t0 = time.mktime(time.strptime(STAMPS[0], "%m-%d-%Y %H:%M:%S"))
    lines = _seconds_of_samples(t0, per_second, [3000, 3000, 8000, 8000, 3000, 3000])
    # trtexec from t0 + 0.5 to t0 + 4.3; it measured the last 3 s: [t0 + 1.3, t0 + 4.3] holds seconds 2 and 3
    r = _summarize(tmp_path, "--window", str(t0 + 0.5), str(t0 + 4.3), "--batch", "2", teg_lines=lines,
                   bench=BENCH_LOG)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "jetson.json").read_text())
    row = res["rows"][0]
    assert row["tegrastats_samples"] == row["energy_power_samples"] == 2 * per_second
    assert row["power_w_mean"] == 8.0 and row["energy_rail"] == "VDD_IN" and row["energy_source"] == "trtexec summary"
    assert row["energy_mj_per_image"] == pytest.approx(8000 * 3.0 / (300 * 2))  # 100 qps x 3 s, batch 2
    assert row["power_window"]["measured_from"] == pytest.approx(t0 + 1.3) and row["power_window"]["seconds"] == 3.0
    assert row["name"] == "tensorrt-int8@jetson-b2" and row["profile"]["input"][1] == [2, 3, 32, 32]
    few = [w for w in res["warnings"] if "fewer than 10" in w]
    assert bool(few) is warned and (not warned or "only 8 tegrastats power sample(s)" in few[0])


def test_energy_without_time_stamps_or_input_rail():
    m = _power_module()
    warnings: list[str] = []
    samples = [m.parse_tegrastats_line("VDD_GPU_SOC 3000mW/3000mW VDD_CPU_CV 1000mW/1000mW GR3D_FREQ 50%")] * 12
    out = m.window_and_energy(samples, [100.0, 110.0], 0.0, (5.0, 50, "trtexec summary"), 1, warnings)
    assert out["power_rail"] == "sum of VDD_CPU_CV+VDD_GPU_SOC" and out["energy_mj_per_image"] == pytest.approx(400.0)
    assert any("no time stamps" in w for w in warnings) and any("no input rail" in w for w in warnings)
    assert m.read_bench_log(None) == {} and m.measured_part({}, 7, None) == (None, 7, "exportTimes")
    assert m.window_and_energy([], None, 0.0, (5.0, 50, "x"), 1, [])["energy_mj_per_image"] is None


@pytest.mark.parametrize("times, message", [
    ("", "times.json: not valid JSON"),
    ("[]", "times.json: holds no inferences"),
    ('{"a": 1}', "expected trtexec's --exportTimes list"),
    ('[{"startEnqMs": 1}]', "neither 'latencyMs' nor 'computeMs'"),
    ('[{"latencyMs": 1.0}, {"latencyMs": "x"}]', "inference 1 has no valid 'latencyMs'"),
])
def test_summarize_bad_times(tmp_path, times, message):
    r = _summarize(tmp_path, times=times)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "jetson.json").exists()


def test_summarize_computems_fallback():
    m = _summarize_module()
    lat, key = m.latencies("t.json", [{"computeMs": 2.0}, {"computeMs": 4.0}])
    assert (lat, key) == ([2.0, 4.0], "computeMs")
    assert m.latency_stats("t.json", [{"computeMs": 2.0}, {"computeMs": 4.0}], 2)["throughput_ips"] == 2000 / 3.0


# ---------------------------------------------------------------- into the run's report
def make_run(root: Path) -> Path:
    """A minimal run directory, as `edgevit export` leaves it: run.json, bench and validate results."""
    run = root / "run"
    (run / "results").mkdir(parents=True)
    write_artifact(run / "artifacts" / "tensorrt-int8")
    (run / "run.json").write_text(json.dumps({
        "model": {"name": "deit_tiny"}, "data_config": {"input_size": [3, 32, 32]}, "params": 5e6,
        "command": "edgevit export --target tensorrt-int8", "created": "2026-01-01T00:00:00+00:00",
        "data": "digits", "split": "val", "versions": {"edgevit": "0"}}))
    common = {"batch": 1, "threads": 2, "p90_ms": 0, "p99_ms": 0}
    (run / "results" / "bench.json").write_text(json.dumps({
        "pytorch-eager": {**common, "backend": "pytorch", "runtime_precision": "fp32", "p50_ms": 9.0, "p90_ms": 9.5},
        "tensorrt-int8": {**common, "backend": "tensorrt", "runtime_precision": "int8", "p50_ms": 5.0, "p90_ms": 5.5,
                          "speedup_vs_eager": 1.8}}))
    (run / "results" / "validate.json").write_text(json.dumps({"tensorrt-int8": {
        "runtime_precision": "int8", "top1": 90.0, "top5": 99.0, "float_top1": 91.0, "float_top5": 99.5,
        "top1_drop_pts": 1.0, "agreement_pct": 95.0}}))
    return run


def test_device_results_in_the_report(tmp_path):
    assert _summarize(tmp_path).returncode == 0
    run = make_run(tmp_path)
    merged = merge_device_results(run, [tmp_path / "jetson.json"])
    assert merged == run / "results" / "device.json"
    write_report(run)
    data = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    dev = rows["tensorrt-int8@jetson"]
    assert dev["measured_on"] == "device" and "top1" not in dev and "pareto" not in dev and dev["onnx_matches_run"]
    assert rows["tensorrt-int8"]["pareto"] and rows["pytorch-eager"]["top1"] == 91.0
    assert data["rows"][-1]["name"] == "tensorrt-int8@jetson"
    assert data["device"][0]["device"] == "NVIDIA Jetson Orin Nano Developer Kit"
    md = (run / "report.md").read_text()
    table_row = next(line for line in md.splitlines() if line.startswith("| tensorrt-int8@jetson | int8 |"))
    assert "| — |" in table_row and "| 5.50 |" in table_row
    section = md.split("## Device results", 1)[1]
    for text in ("NVIDIA Jetson Orin Nano Developer Kit", "6.0+b106 / 10.3.0.30", "15W (0)", "| on |",
                 "5.50 / 9.10 / 9.91", "7.33 / 8.00", "| 20.52 | 49.0 |", "| mJ / image |"):
        assert text in section, text
    kept = json.loads((run / "results" / "device.json").read_text())["rows"]["tensorrt-int8@jetson"]
    assert kept["energy_mj_per_image"] == pytest.approx(20.5184) and kept["warnings"]  # the file's warnings travel
    page = (run / "report.html").read_text()
    assert "<h2>Device results</h2>" in page and (run / "plot.png").stat().st_size > 1000
    assert "Fastest: tensorrt-int8 (int8)" in page  # the headline compares this machine's rows only


def test_merge_keeps_and_replaces_rows_by_name(tmp_path):
    assert _summarize(tmp_path).returncode == 0
    run = make_run(tmp_path)
    merge_device_results(run, [tmp_path / "jetson.json"])
    second = json.loads((tmp_path / "jetson.json").read_text())
    second["rows"][0]["p50_ms"] = 4.0
    second["rows"].append({**second["rows"][0], "name": "tensorrt-int8@jetson-b4", "batch": 4})
    (tmp_path / "second.json").write_text(json.dumps(second))
    merge_device_results(run, [tmp_path / "second.json"])
    rows = {r["name"]: r for r in collect(run)["rows"]}
    assert rows["tensorrt-int8@jetson"]["p50_ms"] == 4.0 and "tensorrt-int8@jetson-b4" in rows
    (run / "artifacts" / "tensorrt-int8" / "model.onnx").write_bytes(b"re-exported")
    merge_device_results(run, [tmp_path / "jetson.json"])
    write_report(run)
    assert "tensorrt-int8@jetson (other export)" in (run / "report.md").read_text()


def _bad_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"rows": [{"name": "a", "p50_ms": 1}]}', "no 'format' field"),
    ('{"format": "edgevit-device-results/9", "rows": [{"name": "a", "p50_ms": 1}]}', "'format' is"),
    ('{"format": "edgevit-device-results/1", "rows": []}', "'rows' must be a non-empty list"),
    ('{"format": "edgevit-device-results/1", "rows": [{"p50_ms": 1}]}', "rows[0] has no 'name'"),
    ('{"format": "edgevit-device-results/1", "rows": [{"name": "a"}]}', "rows[0] (a) has no numeric 'p50_ms'"),
    ('{"format": "edgevit-device-results/1", "rows": [{"name": "a", "p50_ms": 1, "energy_mj_per_image": "x"}]}',
     "non-numeric 'energy_mj_per_image'"),
    ('{"format": "edgevit-device-results/1", "rows": [{"name": "a", "p50_ms": 1}], "warnings": "few"}',
     "'warnings' must be a list of strings"),
])
def test_bad_device_files(tmp_path, text, message):
    path = _bad_file(tmp_path, text)
    with pytest.raises(ArtifactError) as e:
        load_device_results(path)
    assert str(path) in e.value.what and message in e.value.what and e.value.fix


def test_merge_refuses_other_models_and_non_runs(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(ArtifactError, match="no such file"):
        merge_device_results(run, [tmp_path / "missing.json"])
    other = {"format": "edgevit-device-results/1", "artifact": {"model": "vit_base"},
             "rows": [{"name": "tensorrt-int8@jetson", "p50_ms": 1.0}]}
    with pytest.raises(ArtifactError, match="measured model 'vit_base'"):
        merge_device_results(run, [_bad_file(tmp_path, json.dumps(other))])
    assert not (run / "results" / "device.json").exists()
    with pytest.raises(RunDirError, match="not an edgevit run directory"):
        merge_device_results(tmp_path / "art-less", [tmp_path / "bad.json"])
