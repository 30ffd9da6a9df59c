"""TensorRT engines for ``tensorrt-fp16`` and ``tensorrt-int8`` (:mod:`edgevit.targets.tensorrt`), built
from ONNX by the TensorRT Python API.

Both build *strongly typed* networks: the ONNX says which tensors are fp16 or int8, and TensorRT
keeps those types (the only mode TensorRT 11 has; opt-in with the same flag on TensorRT 10, which
JetPack 6 ships). So precision is decided here, in the ONNX, not by builder flags:

* ``tensorrt-fp16``: the float ONNX converted to fp16 with float32 inputs/outputs and every
  LayerNormalization kept in fp32 (casts around it): ViT activations before LayerNorm can exceed
  fp16's range, and fp16 statistics over 192-768 channels lose digits.
* ``tensorrt-int8``: the explicit Q/DQ graph of :mod:`edgevit.targets.int8` (int8 weights
  per-channel, activations per-tensor, LayerNorm/Softmax/head float), checked against TensorRT's
  int8 rules.

Each artifact holds ``model.onnx`` (what TensorRT compiles), ``build_engine.sh`` (the exact
``trtexec`` command that builds the engine on a device) and, where TensorRT and a CUDA GPU exist,
``model.plan`` with ``engine.json`` beside it (TensorRT version, GPU, optimisation profile,
workspace, timing cache, hashes). Engines are specific to the GPU and TensorRT version that built
them. Where TensorRT or a GPU is missing, everything up to the ONNX is written and validated with
ONNX Runtime, and the message says how to build the engine on the device.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TargetError
from ..graph import INPUT, OUTPUT, data_file, has_external_data, save_onnx
from ..manifest import sha256_file, write_bytes
from .base import Runner

ENGINE, ENGINE_META, BUILD_SCRIPT = "model.plan", "engine.json", "build_engine.sh"
MIN_TRT_MAJOR = 10  # strongly typed networks and the name-based tensor API
FP32_OPS = ["LayerNormalization"]  # kept in fp32 inside the fp16 engine


class EngineUnavailable(TargetError):
    """TensorRT or a CUDA GPU is missing: the engine cannot be built or run on this machine."""


@dataclass
class EngineOptions:
    """How the engine is built. ``max_batch`` bounds the dynamic-batch optimisation profile."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 1024
    timing_cache: str | None = "default"  # a path; "default": ~/.cache/edgevit; None or "none": no cache
    optimization_level: int = 3  # TensorRT's builder_optimization_level, 0-5

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

    def cache_path(self) -> Path | None:
        if not self.timing_cache or self.timing_cache.lower() == "none":
            return None
        if self.timing_cache == "default":
            base = Path(os.environ.get("EDGEVIT_CACHE", Path.home() / ".cache" / "edgevit"))
            return base / "tensorrt" / "timing.cache"
        return Path(self.timing_cache)

    def shapes(self, input_size: list[int]) -> dict[str, list[list[int]]]:
        """The optimisation profile: min/opt/max shape of the input."""
        return {INPUT: [[b, *input_size] for b in (self.min_batch, self.opt_batch, self.max_batch)]}



# -- the ONNX TensorRT compiles ---------------------------------------------------------------
def prepare_fp16(onnx_fp32: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and math, float32 I/O, LayerNorm in fp32 (casts inserted around it)."""
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    # from the path: shape inference then goes through a file, which has no 2 GB limit
    m16 = convert_float_to_float16(str(onnx_fp32), keep_io_types=True,
                                   op_block_list=DEFAULT_OP_BLOCK_LIST + FP32_OPS)
    facts = {"onnx_precision": "fp16 (float32 inputs/outputs)",
             "fp32_layers": sum(n.op_type in FP32_OPS for n in m16.graph.node),
             "fp32_ops": FP32_OPS, "casts": sum(n.op_type == "Cast" for n in m16.graph.node)}
    return {**facts, **save_onnx(m16, dst)}


def trtexec_args(eopts: EngineOptions, input_size: list[int], onnx: str = "model.onnx",
                 engine: str = ENGINE) -> list[str]:
    """The trtexec flags that build the same engine as :func:`build_engine` (paths relative)."""
    dims = ["x".join(map(str, s)) for s in eopts.shapes(input_size)[INPUT]]
    args = [f"--onnx={onnx}", f"--saveEngine={engine}", "--stronglyTyped",
            f"--minShapes={INPUT}:{dims[0]}", f"--optShapes={INPUT}:{dims[1]}", f"--maxShapes={INPUT}:{dims[2]}",
            f"--memPoolSize=workspace:{eopts.workspace_mb}M", f"--builderOptimizationLevel={eopts.optimization_level}"]
    if eopts.cache_path() is not None:
        args.append("--timingCacheFile=timing.cache")
    return args


def trtexec_command(args: list[str]) -> str:
    return shlex.join(["trtexec", *args])


def write_build_script(art_dir: Path, args: list[str]) -> Path:
    path = art_dir / BUILD_SCRIPT
    path.write_text("#!/usr/bin/env bash\n"
                    "# Build the TensorRT engine on the device it will run on (engines are GPU- and\n"
                    "# TensorRT-version-specific). trtexec ships with TensorRT: /usr/src/tensorrt/bin on JetPack.\n"
                    "set -euo pipefail\ncd \"$(dirname \"$0\")\"\nTRTEXEC=${TRTEXEC:-trtexec}\n"
                    f"\"$TRTEXEC\" {shlex.join(args)}\n")
    path.chmod(0o755)
    return path


# -- building and running engines (need TensorRT and a GPU) -----------------------------------
def engine_unavailable() -> str | None:
    """Why engines cannot be built or run here, or None when they can."""
    if importlib.util.find_spec("tensorrt") is None:
        return ("TensorRT is not installed (x86-64 with an NVIDIA GPU: pip install tensorrt; Jetson: it comes "
                "with JetPack, sudo apt install nvidia-jetpack)")
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def network_flags(trt) -> int:
    """Strongly typed: required for explicit precision on TensorRT 10, the default on 11."""
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TRT_MAJOR:
        raise EngineUnavailable(f"TensorRT {trt.__version__} is too old: edgevit builds strongly typed networks, "
                                f"which need TensorRT >= {MIN_TRT_MAJOR}",
                                "upgrade TensorRT (JetPack 6 ships TensorRT 10)")
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def configure(trt, builder, config, eopts: EngineOptions, input_size: list[int]) -> bytes | None:
    """Apply the options to a builder config; returns the timing cache bytes it started from."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, eopts.workspace_mb << 20)
    config.builder_optimization_level = eopts.optimization_level
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in eopts.shapes(input_size).items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    cache_file = eopts.cache_path()
    if cache_file is None:
        return None
    old = cache_file.read_bytes() if cache_file.is_file() else b""
    cache = config.create_timing_cache(old)
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # a cache from another GPU/TensorRT
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        old = b""
    return old


def build_engine(onnx_path: Path, art_dir: Path, eopts: EngineOptions, input_size: list[int]) -> dict[str, Any]:
    """Parse ``onnx_path``, build the engine into ``art_dir/model.plan`` and write ``engine.json``."""
    if why := engine_unavailable():
        raise EngineUnavailable(f"cannot build a TensorRT engine here: {why}",
                                f"on the device, in {art_dir}: ./{BUILD_SCRIPT}  (or deploy/jetson/edgevit_jetson.sh)")
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TargetError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errors}",
                          "report this with the run's run.json and the ONNX")
    config = builder.create_builder_config()
    old_cache = configure(trt, builder, config, eopts, input_size)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TargetError(f"TensorRT {trt.__version__} failed to build the engine (see its log above)",
                          "try a larger --workspace-mb or a smaller --max-batch")
    build_s = time.perf_counter() - t0
    data = bytes(plan)
    write_bytes(art_dir / ENGINE, data)
    cache_file = eopts.cache_path()
    if cache_file is not None:
        write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    props = torch.cuda.get_device_properties(0)
    meta = {"tensorrt": trt.__version__, "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "strongly_typed": True, "profile": eopts.shapes(input_size), "workspace_mb": eopts.workspace_mb,
            "optimization_level": eopts.optimization_level, "build_s": round(build_s, 2),
            "timing_cache": {"path": str(cache_file), "reused": bool(old_cache)} if cache_file else None,
            "onnx_sha256": sha256_file(onnx_path), **_data_sha256(onnx_path), "engine_sha256": _sha256(data),
            "engine_bytes": len(data), "input": INPUT, "output": OUTPUT}
    write_bytes(art_dir / ENGINE_META, json.dumps(meta, indent=2).encode())
    return meta


def load_engine(art_dir: Path) -> Runner:
    """Deserialize ``model.plan`` and run it on the GPU (torch CUDA tensors hold the buffers)."""
    if why := engine_unavailable():
        raise EngineUnavailable(f"cannot run {art_dir / ENGINE} here: {why}",
                                "run it on a machine with TensorRT and an NVIDIA GPU")
    import tensorrt as trt
    import torch

    meta = json.loads((art_dir / ENGINE_META).read_text())
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((art_dir / ENGINE).read_bytes())
    if engine is None:
        raise EngineUnavailable(f"{art_dir / ENGINE} was built by TensorRT {meta.get('tensorrt')} on "
                                f"{meta.get('gpu')} and does not load with TensorRT {trt.__version__} here",
                                f"rebuild it here: edgevit engine {art_dir}")
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    max_batch = meta["profile"][INPUT][2][0]

    def run(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(x).cuda()
        context.set_input_shape(INPUT, tuple(x.shape))
        y = torch.empty(tuple(context.get_tensor_shape(OUTPUT)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(INPUT, xt.data_ptr())
        context.set_tensor_address(OUTPUT, y.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise TargetError("TensorRT execution failed", "see TensorRT's log above")
        stream.synchronize()
        return y.cpu().numpy()

    def predict(x: np.ndarray) -> np.ndarray:  # batches beyond the profile run in chunks
        return np.concatenate([run(x[i:i + max_batch]) for i in range(0, len(x), max_batch)])

    return Runner(predict, {"runtime": f"tensorrt {trt.__version__}", "device": meta.get("gpu"),
                            "precision": None})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _data_sha256(onnx_path: Path) -> dict[str, str]:
    """The external data file's sha256, for a large model's ONNX (``onnx_sha256`` is model.onnx's alone)."""
    return {"onnx_data_sha256": sha256_file(data_file(onnx_path))} if has_external_data(onnx_path) else {}


def input_size_of(onnx_path: Path) -> list[int]:
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims[1:]]
