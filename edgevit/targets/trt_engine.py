"""TensorRT engines for ``tensorrt-fp16`` and ``tensorrt-int8`` (:mod:`edgevit.targets.tensorrt`), built
from ONNX by the TensorRT Python API.

Both build *strongly typed* networks: the ONNX says which tensors are fp16 or int8, and TensorRT
keeps those types (the only mode TensorRT 11 has; opt-in with the same flag on TensorRT 10, which
JetPack 6 ships). So precision is decided here, in the ONNX, not by builder flags:

* ``tensorrt-fp16``: the float ONNX converted to fp16 with float32 inputs/outputs and every
  LayerNormalization kept in fp32 (casts around it): ViT activations before LayerNorm can exceed
  fp16's range, and fp16 statistics over 192-768 channels lose digits.
* ``tensorrt-int8``: the explicit Q/DQ graph of :mod:`edgevit.targets.int8` (int8 GEMMs with
  per-channel weights and per-tensor activations, float elsewhere), checked against TensorRT's
  int8 rules; the runtime precision it reports ("int8 GEMMs + fp16") is recorded in ``engine.json``.

Each artifact holds ``model.onnx`` (what TensorRT compiles), ``build_engine.sh`` (the exact
``trtexec`` command that builds the engine on a device, which then writes ``engine.json`` too) and,
where TensorRT, cuda-python and a CUDA GPU exist, ``model.plan`` with ``engine.json`` (TensorRT
version, GPU, the optimisation profiles (one per batch asked), workspace, timing cache, hashes,
runtime precision, the engine inspector's summary) and ``engine_layers.json`` beside it. Engines are
specific to the GPU and TensorRT version that built them. Where TensorRT or a GPU is missing,
everything up to the ONNX is written and validated with ONNX Runtime, and the message says how to
build the engine on the device. Neither the builder nor the runner (:mod:`edgevit.targets.trt_runtime`)
imports PyTorch; the runner imports without it (the float ONNX export in :mod:`edgevit.graph`, which
the builder's module shares, still imports torch at its top).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..float_scope import FP32_OPS
from ..graph import INPUT, OUTPUT, data_file, has_external_data, save_onnx
from ..manifest import sha256_file, write_bytes
from .base import option
from .trt_inspect import engine_layers as engine_layers
from .trt_runtime import ENGINE as ENGINE
from .trt_runtime import ENGINE_LAYERS as ENGINE_LAYERS
from .trt_runtime import ENGINE_META as ENGINE_META
from .trt_runtime import EngineUnavailable as EngineUnavailable
from .trt_runtime import deserialize, device_facts, import_cudart, trt_logger
from .trt_runtime import engine_unavailable as engine_unavailable
from .trt_runtime import load_engine as load_engine

BUILD_SCRIPT = "build_engine.sh"
MIN_TRT_MAJOR = 10  # strongly typed networks and the name-based tensor API


@dataclass
class EngineOptions:
    """How the engine is built. One optimisation profile per batch asked, tuned for it (opt = max = that
    batch, min = ``min_batch``): ``opt_batch`` (latency) and ``max_batch`` (throughput). A batch of 64
    then runs in one call on kernels chosen for 64, not in eight calls on kernels chosen for 1."""

    min_batch: int = option(1, "TensorRT: the smallest batch every optimisation profile takes")
    opt_batch: int = option(1, "TensorRT: the latency batch, with a profile of its own tuned for it")
    max_batch: int = option(8, "TensorRT: the throughput (largest) batch, with a profile of its own tuned for it; "
                               "larger batches run in chunks of it")
    workspace_mb: int = option(1024, "TensorRT: builder workspace limit in MiB (Jetson Orin Nano: 512-1024)")
    timing_cache: str | None = option("default", "TensorRT: timing cache file reused across builds ('default': "
                                                 "keyed by TensorRT version and GPU under ~/.cache/edgevit/tensorrt; "
                                                 "'none': off)")
    optimization_level: int = option(3, "TensorRT: builder optimization level, 0-5 (5: the longest search)")

    def check(self) -> EngineOptions:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise TargetError(f"TensorRT batch profile min {self.min_batch} <= opt {self.opt_batch} <= max "
                              f"{self.max_batch} does not hold", "pass e.g. --max-batch 8 (opt and min are 1)")
        if self.workspace_mb < 16:
            raise TargetError(f"--workspace-mb {self.workspace_mb} is too small for any ViT engine",
                              "use at least 256 (default 1024; Jetson Orin Nano: 512-1024)")
        if not 0 <= self.optimization_level <= 5:
            raise TargetError(f"TensorRT optimization level {self.optimization_level} is outside 0-5",
                              "use 3 (TensorRT's default) or 5 for the longest search")
        return self

    def batches(self) -> list[int]:
        """The batches with a profile of their own, largest first (profile 0: what trtexec runs by default and
        what deploy/jetson refits to its benchmark batch)."""
        return sorted({self.opt_batch, self.max_batch}, reverse=True)

    def profiles(self, input_size: list[int]) -> list[dict[str, list[list[int]]]]:
        """The optimisation profiles: for each batch, min/opt/max shapes of the input."""
        lo = [self.min_batch, *input_size]
        return [{INPUT: [lo, [b, *input_size], [b, *input_size]]} for b in self.batches()]

    def cache_path(self, trt_version: str | None = None, gpu: str | None = None,
                   compute_capability: str | None = None) -> Path | None:
        """The timing cache file, None for none. The default one is keyed by TensorRT version and GPU
        (a cache from another is refused by TensorRT): ``~/.cache/edgevit/tensorrt/10.3.0/orin-sm87/timing.cache``,
        under ``$EDGEVIT_CACHE`` when set ("any" stands for what is not given)."""
        if not self.timing_cache or self.timing_cache.lower() == "none":
            return None
        if self.timing_cache == "default":
            base = Path(os.environ.get("EDGEVIT_CACHE", Path.home() / ".cache" / "edgevit"))
            sm = f"-sm{compute_capability.replace('.', '')}" if compute_capability else ""
            return base / "tensorrt" / _slug(trt_version or "any") / f"{_slug(gpu or 'any-gpu')}{sm}" / "timing.cache"
        return Path(self.timing_cache)


# -- the ONNX TensorRT compiles ---------------------------------------------------------------
def prepare_fp16(onnx_fp32: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and math, float32 I/O, LayerNorm in fp32 (casts inserted around it)."""
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    # from the path: shape inference then goes through a file, which has no 2 GB limit
    m16 = convert_float_to_float16(str(onnx_fp32), keep_io_types=True,
                                   op_block_list=DEFAULT_OP_BLOCK_LIST + list(FP32_OPS))
    facts = {"onnx_precision": "fp16 (float32 inputs/outputs)",
             "fp32_layers": sum(n.op_type in FP32_OPS for n in m16.graph.node),
             "fp32_ops": list(FP32_OPS), "casts": sum(n.op_type == "Cast" for n in m16.graph.node)}
    return {**facts, **save_onnx(m16, dst)}


def trtexec_args(eopts: EngineOptions, input_size: list[int], onnx: str = "model.onnx",
                 engine: str = ENGINE) -> list[str]:
    """The trtexec flags that build the same engine as :func:`build_engine` (paths relative); several
    profiles are ``--profile=N`` followed by its shapes, as trtexec documents it."""
    args = [f"--onnx={onnx}", f"--saveEngine={engine}", "--stronglyTyped"]
    profiles = eopts.profiles(input_size)
    for i, profile in enumerate(profiles):
        dims = ["x".join(map(str, s)) for s in profile[INPUT]]
        args += [f"--profile={i}"] if len(profiles) > 1 else []
        args += [f"--minShapes={INPUT}:{dims[0]}", f"--optShapes={INPUT}:{dims[1]}", f"--maxShapes={INPUT}:{dims[2]}"]
    args += [f"--memPoolSize=workspace:{eopts.workspace_mb}M", f"--builderOptimizationLevel={eopts.optimization_level}",
             "--profilingVerbosity=detailed"]
    if eopts.cache_path() is not None:
        args.append("--timingCacheFile=timing.cache")
    return args


def trtexec_command(args: list[str]) -> str:
    return shlex.join(["trtexec", *args])


_SCRIPT = r"""#!/usr/bin/env bash
# Build the TensorRT engine on the device it will run on (engines are GPU- and
# TensorRT-version-specific). trtexec ships with TensorRT: /usr/src/tensorrt/bin on JetPack.
# Writes model.plan, build.log and engine.json (what built it; edgevit reads it beside the plan).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${TRTEXEC:-trtexec}

json_str() {  # $1 as a JSON string, or null when empty
    if [ -z "${1:-}" ]; then printf 'null'; return 0; fi
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

log_value() {  # the rest of the first build.log line after "$1"
    awk -F"$1" 'NF > 1 { sub(/[[:space:]]+$/, "", $2); print $2; exit }' build.log || true
}

rm -f engine.json
@@TRTEXEC@@ 2>&1 | tee build.log
[ -s model.plan ] || { echo "trtexec finished but wrote no model.plan (see build.log)" >&2; exit 1; }

trt=$(log_value 'TensorRT version: ')
trt=${trt%% *}
if [ -z "$trt" ] && command -v python3 >/dev/null 2>&1; then
    trt=$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)
fi
gpu=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
fi
if [ -z "$gpu" ]; then gpu=$(log_value 'Selected Device: '); fi
if command -v sha256sum >/dev/null 2>&1; then
    sha=$(sha256sum model.plan | cut -d ' ' -f 1)
else
    sha=$(shasum -a 256 model.plan | cut -d ' ' -f 1)
fi
bytes=$(wc -c < model.plan | tr -d ' ')

cat > engine.json.tmp <<EOF
{
  "tensorrt": $(json_str "$trt"),
  "gpu": $(json_str "$gpu"),
  "built_by": "build_engine.sh",
  "trtexec_args": @@ARGS@@,
  "profiles": @@PROFILES@@,
  "engine_sha256": "$sha",
  "engine_bytes": $bytes,
  "runtime_precision": @@PRECISION@@
}
EOF
mv engine.json.tmp engine.json
echo "built $(pwd)/model.plan and engine.json"
"""


def _heredoc(obj: Any) -> str:
    """JSON for an unquoted heredoc: backslash, $ and backtick escaped."""
    return re.sub(r"([\\$`])", r"\\\1", json.dumps(obj))


def profiles_of(args: list[str]) -> list[dict[str, list[list[int]]]]:
    """The optimisation profiles trtexec's flags give ([{"input": [[min], [opt], [max]]}, ...]; ``--profile=N``
    starts the next one), [] for a static-shape build."""
    out: list[dict[str, dict[str, list[int]]]] = []
    for a in args:
        if re.fullmatch(r"--profile=\d+", a) or (not out and re.match(r"--(min|opt|max)Shapes=", a)):
            out.append({})
        if m := re.fullmatch(r"--(min|opt|max)Shapes=(.+)", a):
            for spec in m.group(2).split(","):
                name, _, dims = spec.rpartition(":")
                out[-1].setdefault(name.strip("'\""), {})[m.group(1)] = [int(d) for d in dims.split("x")]
    full = [{n: [s[k] for k in ("min", "opt", "max")] for n, s in p.items() if len(s) == 3} for p in out]
    return [p for p in full if p]


def write_build_script(art_dir: Path, args: list[str], precision: str | None = None) -> Path:
    """``build_engine.sh``: trtexec with ``args``, then ``engine.json`` beside ``model.plan`` (TensorRT version,
    GPU, the args, the profiles, the plan's sha256 and ``precision``, the runtime precision the target reports)."""
    path = art_dir / BUILD_SCRIPT
    text = (_SCRIPT.replace("@@TRTEXEC@@", f'"$TRTEXEC" {shlex.join(args)}')
            .replace("@@ARGS@@", _heredoc(args)).replace("@@PROFILES@@", _heredoc(profiles_of(args)))
            .replace("@@PRECISION@@", _heredoc(precision)))
    path.write_text(text)
    path.chmod(0o755)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


# -- building engines (needs TensorRT, cuda-python and a GPU; no PyTorch) -----------------------
def network_flags(trt) -> int:
    """Strongly typed: required for explicit precision on TensorRT 10, the default on 11."""
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TRT_MAJOR:
        raise EngineUnavailable(f"TensorRT {trt.__version__} is too old: edgevit builds strongly typed networks, "
                                f"which need TensorRT >= {MIN_TRT_MAJOR}",
                                "upgrade TensorRT (JetPack 6 ships TensorRT 10)")
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def configure(trt, builder, config, eopts: EngineOptions, input_size: list[int]) -> None:
    """Apply the options to a builder config: workspace, optimisation level, the profiles, detailed
    profiling verbosity (so the engine inspector can tell layer precisions)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, eopts.workspace_mb << 20)
    config.builder_optimization_level = eopts.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for shapes in eopts.profiles(input_size):  # one per batch asked, in the order trtexec_args lists them
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)


def _try_cache(config, data: bytes) -> str | None:
    """Give the config a timing cache made from ``data``; None when done, else why not."""
    try:
        cache = config.create_timing_cache(data)
    except Exception as e:
        return f"create_timing_cache raised {type(e).__name__}: {e}"
    if cache is None:
        return "create_timing_cache returned None (a corrupt cache file?)"
    try:
        ok = config.set_timing_cache(cache, ignore_mismatch=False)
    except Exception as e:
        return f"set_timing_cache raised {type(e).__name__}: {e}"
    return None if ok else "set_timing_cache refused it (made by another TensorRT version or GPU)"


def attach_timing_cache(config, path: Path | None) -> dict[str, Any] | None:
    """Start from the cache file at ``path`` when TensorRT takes it, else from a fresh cache, else none;
    the record (path, reused, rejected: why the file was not used, active: a cache is attached) goes to engine.json."""
    if path is None:
        return None
    rec: dict[str, Any] = {"path": str(path), "reused": False, "rejected": None, "active": False}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_bytes() if path.is_file() else b""
    except OSError as e:
        rec["rejected"] = f"cannot use {path.parent}: {e}"
        old = b""
    if old:
        rec["rejected"] = _try_cache(config, old)
        rec["reused"] = rec["active"] = rec["rejected"] is None
    if not rec["active"]:
        why = _try_cache(config, b"")
        rec["active"] = why is None
        if why:
            rec["rejected"] = "; ".join(filter(None, [rec["rejected"], f"a fresh cache too: {why}"]))
    return rec


def _save_timing_cache(config, rec: dict[str, Any] | None) -> None:
    if not rec or not rec["active"]:
        return
    try:
        write_bytes(Path(rec["path"]), bytes(config.get_timing_cache().serialize()))
        rec["saved"] = True
    except Exception as e:  # a read-only cache folder does not fail the build
        rec["saved"] = False
        rec["save_error"] = f"{type(e).__name__}: {e}"


def _parse(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TargetError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errors}",
                          "report this with the run's run.json and the ONNX")
    return network, parser  # the parser must outlive the build (it owns the parsed weights)


def _inspect(trt, data: bytes, art_dir: Path) -> dict[str, Any]:
    """The engine inspector's summary; its per-layer list goes to engine_layers.json."""
    try:
        layers = engine_layers(deserialize(trt, data))
    except Exception as e:  # the inspector is a report: it never fails the build
        return {"error": f"{type(e).__name__}: {e}"}
    write_bytes(art_dir / ENGINE_LAYERS, json.dumps(layers, indent=2).encode())
    return layers["summary"]


def build_engine(onnx_path: Path, art_dir: Path, eopts: EngineOptions, input_size: list[int],
                 precision: str | None = None) -> dict[str, Any]:
    """Parse ``onnx_path``, build the engine into ``art_dir/model.plan``, write ``engine.json`` and
    ``engine_layers.json``; ``precision`` is the runtime precision the target reports ("int8 GEMMs + fp16")."""
    if why := engine_unavailable():
        raise EngineUnavailable(f"cannot build a TensorRT engine here: {why}",
                                f"on the device, in {art_dir}: ./{BUILD_SCRIPT}  (or deploy/jetson/edgevit_jetson.sh)")
    import tensorrt as trt

    device = device_facts(import_cudart())
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    configure(trt, builder, config, eopts, input_size)
    cache = attach_timing_cache(config, eopts.cache_path(trt.__version__, device["gpu"], device["compute_capability"]))
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TargetError(f"TensorRT {trt.__version__} failed to build the engine (see its log above)",
                          "try a larger --workspace-mb or a smaller --max-batch")
    build_s = time.perf_counter() - t0
    data = bytes(plan)
    write_bytes(art_dir / ENGINE, data)
    _save_timing_cache(config, cache)
    meta = {"tensorrt": trt.__version__, **device, "built_by": "edgevit", "strongly_typed": True,
            "profiles": eopts.profiles(input_size), "workspace_mb": eopts.workspace_mb,
            "optimization_level": eopts.optimization_level, "build_s": round(build_s, 2), "timing_cache": cache,
            "onnx_sha256": sha256_file(onnx_path), **_data_sha256(onnx_path), "engine_sha256": _sha256(data),
            "engine_bytes": len(data), "input": INPUT, "output": OUTPUT, "runtime_precision": precision,
            "layers_summary": _inspect(trt, data, art_dir)}
    write_bytes(art_dir / ENGINE_META, json.dumps(meta, indent=2).encode())
    return meta

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _data_sha256(onnx_path: Path) -> dict[str, str]:
    """The external data file's sha256, for a large model's ONNX (``onnx_sha256`` is model.onnx's alone)."""
    return {"onnx_data_sha256": sha256_file(data_file(onnx_path))} if has_external_data(onnx_path) else {}


def input_size_of(onnx_path: Path) -> list[int]:
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims[1:]]
