"""Quantization-aware training with NNCF's PyTorch backend, exported as a Q/DQ ONNX.

1. ``nncf.quantize`` inserts trainable fake-quantizers, initialised from the calibration images
   (transformer model type, symmetric "performance" preset, classifier head kept float; no 7-bit
   overflow fix, the int8 grid TensorRT and OpenVINO use, except on an x86 CPU without VNNI, where
   CPU int8 kernels saturate with 8-bit weights: see :func:`int8_saturates_here`).
2. The fake-quantized model is fine-tuned by edgevit's training engine (checkpoints, history),
   optionally distilled from the float model itself (soft KD on the logits, as FasterTransformer's
   ViT int8 QAT does).
3. Weights are snapped onto their int8 grid and every quantizer exports as a
   QuantizeLinear/DequantizeLinear pair; the int8 targets then build from that graph instead of
   running post-training quantization.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Opener, load_split
from ..errors import DataError
from ..graph import INPUT, OPSET, OUTPUT
from ..train.engine import TrainConfig, fit, train_transform
from .config import QuantConfig
from .nncf_ext import ensure_nncf_extensions


@dataclass
class QatGraph:
    """What QAT hands the int8 targets: the Q/DQ ONNX they convert, the fake-quantized model their
    outputs must reproduce, and the facts for their manifests."""

    onnx: Path
    reference_model: torch.nn.Module
    facts: dict[str, Any]


def quantize_aware(model: torch.nn.Module, name: str, calib: np.ndarray, data: str, data_cfg: dict[str, Any],
                   qcfg: QuantConfig, run_dir: Path, onnx_path: Path, val_fraction: float = 0.2, seed: int = 0,
                   opener: Opener | None = None) -> QatGraph:
    """Fine-tune an int8 fake-quantized copy of ``model`` on ``data`` and export it to ``onnx_path``
    (``opener``: how ``data``'s readers open, :func:`~edgevit.data.load_split`'s)."""
    import nncf

    if not data:
        raise DataError("QAT (--qat-epochs) needs labelled training images", "pass --data (its train split is used)")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    kernels = ensure_nncf_extensions()  # NNCF's first C++ build, with a limit that does not depend on machine speed
    float_model = copy.deepcopy(model).eval()
    for p in float_model.parameters():
        p.requires_grad_(False)
    overflow = int8_saturates_here()
    adv = nncf.AdvancedQuantizationParameters(
        overflow_fix=nncf.OverflowFix.ENABLE if overflow else nncf.OverflowFix.DISABLE)
    dataset = nncf.Dataset([torch.from_numpy(calib[i:i + 1]) for i in range(len(calib))])
    scope = qcfg.float_scope()  # the head stays float unless --quantize-head (NNCF keeps norms/softmax float)
    ignored = nncf.IgnoredScope(patterns=[scope.head_pattern()], validate=False) if scope.head else None
    qmodel = nncf.quantize(copy.deepcopy(model).eval(), dataset, subset_size=len(calib),
                           model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE,
                           ignored_scope=ignored, advanced_parameters=adv)
    tcfg = TrainConfig(epochs=qcfg.qat_epochs, batch_size=qcfg.qat_batch_size, lr=qcfg.qat_lr, min_lr=qcfg.qat_lr / 10,
                       warmup_epochs=0, label_smoothing=0.0, weight_decay=0.0, seed=seed,
                       distillation="soft" if qcfg.qat_distill else "none", alpha=0.5, tau=1.0, amp=False)
    train_ds = load_split(data, "train", train_transform(data_cfg, tcfg), val_fraction, seed, opener=opener)
    n_cls = int(getattr(model, "num_classes", 0) or 0)
    history = fit(qmodel, train_ds, None, tcfg, Path(run_dir) / "qat", data_cfg, n_cls, f"{name}+qat",
                  teacher=float_model if qcfg.qat_distill else None, single_head_kd=True)
    qmodel.cpu().eval()
    n = export_qdq(qmodel, int(data_cfg["input_size"][-1]), onnx_path)
    return QatGraph(onnx_path, qmodel, {"qat": {"epochs": tcfg.epochs, "lr": tcfg.lr, "batch_size": tcfg.batch_size,
                    "distillation": "soft KD from the float model" if qcfg.qat_distill else "none",
                    "train_images": len(train_ds), "final_train_loss": history[-1]["train_loss"] if history else None,
                    "quantizers": n, "tool": f"nncf {nncf.__version__} (torch)",
                    "overflow_fix": ("7-bit weights: this CPU has no VNNI, where 8-bit int8 kernels saturate"
                                     if overflow else "off: full 8-bit weights"),
                    "nncf_kernels": {kind: k["kernels"] for kind, k in kernels.items()}}})


def int8_saturates_here() -> bool:
    """True on an x86 CPU without VNNI (AVX2, AVX-512 before VNNI): there ONNX Runtime's and
    OpenVINO's int8 kernels sum u8×s8 pairs in int16 (VPMADDUBSW), which saturates with full-range
    8-bit weights, so their outputs drift from the fake-quantized model (12-53 % of the largest
    logit measured for a QAT DeiT-Ti on AVX2). NNCF's overflow fix (7-bit weights) keeps the sums
    exact there; VNNI CPUs, GPUs and ARM keep the full 8-bit grid."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def _quantizers(qmodel) -> dict[str, Any]:
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer

    return {n: m for n, m in get_hook_storage(qmodel).named_hooks() if isinstance(m, BaseQuantizer)}


@torch.no_grad()
def snap_weights(qmodel, example: torch.Tensor) -> None:
    """Put every quantized weight on its int8 grid (what ``nncf.strip`` does, which needs torchao):
    NNCF's weight range is [-127, 127] but ONNX's QuantizeLinear clamps to [-128, 127]."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
    from nncf.torch.model_graph_manager import (
        get_const_node,
        get_module_by_name,
        get_weight_tensor_port_ids,
        split_const_name,
    )

    graph = build_nncf_graph(qmodel, example)
    for hook_name, q in _quantizers(qmodel).items():
        hook_type, op_name, port = decode_hook_name(hook_name)
        if hook_type != "pre_hooks":
            continue
        node = graph.get_node_by_name(op_name)
        if node is None or port not in get_weight_tensor_port_ids(node, graph):
            continue
        const = get_const_node(node, port, graph)
        mod_name, attr = split_const_name(const.layer_attributes.name)
        w = getattr(get_module_by_name(mod_name, qmodel), attr)
        lo, hi = q.get_input_low_input_high()
        w.copy_(q.quantize(torch.min(torch.max(w, lo), hi)))


def export_qdq(qmodel, img_size: int, path: Path) -> int:
    """Q/DQ ONNX of a fake-quantized NNCF model (opset 17, dynamic batch); returns the quantizer count."""
    from nncf.torch.quantization.layers import QuantizerExportMode

    x = torch.zeros(1, 3, img_size, img_size)
    snap_weights(qmodel, x)
    quantizers = _quantizers(qmodel)
    for q in quantizers.values():
        q.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(qmodel, (x,), str(path), input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamo=False, dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return len(quantizers)
