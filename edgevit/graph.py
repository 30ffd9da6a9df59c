"""The float ONNX graph every backend starts from: export from PyTorch, and saving/copying with
external data.

Large models (initializers over :data:`LARGE_BYTES`, e.g. ViT-H/14's 2.5 GB of fp32 weights) do
not fit protobuf's 2 GB limit on one message, so every ONNX edgevit writes for them keeps its
tensors in one external data file beside it: ``model.onnx`` + ``model.onnx.data`` (see
:func:`data_file`). ONNX Runtime, OpenVINO, onnx.checker, trtexec and TensorRT's parser read the
data file from the model's folder. ``EDGEVIT_ONNX_EXTERNAL_DATA=1`` forces the large-model path on
any model (the tests use it on a tiny one).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a model is exported: the TensorRT target reads graphs without it
    import torch

OPSET = 17  # the first opset with a native LayerNormalization
INPUT, OUTPUT = "input", "logits"
EXTERNAL_DATA_ENV = "EDGEVIT_ONNX_EXTERNAL_DATA"
LARGE_BYTES = int(1.8 * 2**30)  # protobuf refuses messages over 2 GiB; leave room for the graph itself
NOT_SIMPLIFIED = ("onnxslim serializes the whole model in memory, which protobuf refuses over 2 GB; "
                  "the runtimes' own graph optimizers still run")


def edges(graph) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """An ONNX graph's wiring: (the node producing each tensor, the nodes reading each tensor)."""
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return producers, readers


# -- external data: one convention, used by every target ----------------------------------------
def data_file(onnx_path: Path) -> Path:
    """Where the tensors of a large ONNX live: ``model.onnx`` -> ``model.onnx.data`` beside it."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".data")


def has_external_data(onnx_path: Path) -> bool:
    return data_file(onnx_path).is_file()


def external_data_facts(onnx_path: Path) -> dict[str, Any]:
    """``{"external_data": "model.onnx.data"}`` when the ONNX has one, else ``{}``. onnx creates data
    files private (0600): the data file gets the mode of its model file, so the artifact stays shareable."""
    onnx_path = Path(onnx_path)
    if not has_external_data(onnx_path):
        return {}
    data_file(onnx_path).chmod(onnx_path.stat().st_mode & 0o777)
    return {"external_data": data_file(onnx_path).name}


def tensor_bytes(model) -> int:
    """Bytes of tensor data an ONNX ModelProto holds (inline or external), without serializing it."""
    from onnx import external_data_helper as ext

    total = 0
    for t in ext._get_all_tensors(model):
        if ext.uses_external_data(t):
            total += ext.ExternalDataInfo(t).length or 0
        else:
            total += len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
                len(t.int64_data) + len(t.double_data))
    return total


def is_large(model) -> bool:
    """Does this ModelProto need external data (or is it forced by ``EDGEVIT_ONNX_EXTERNAL_DATA=1``)?"""
    return os.environ.get(EXTERNAL_DATA_ENV) == "1" or tensor_bytes(model) > LARGE_BYTES


def save_onnx(model, path: Path) -> dict[str, Any]:
    """Save a ModelProto, large ones with their tensors in :func:`data_file`; returns manifest facts.

    Saving with external data moves the tensors out of ``model`` (the ModelProto keeps the graph)."""
    import onnx

    path, data = Path(path), data_file(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not is_large(model):
        onnx.save_model(model, str(path))
        return {}
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return external_data_facts(path)


def copy_onnx(src: Path, dst: Path) -> dict[str, Any]:
    """Copy an ONNX with its external data (renamed after ``dst``); returns manifest facts."""
    import onnx
    from onnx import external_data_helper as ext

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)  # the graph only: the data file is copied as is
    tensors = [t for t in ext._get_all_tensors(model) if ext.uses_external_data(t)]
    if not tensors:
        shutil.copyfile(src, dst)
        return {}
    locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
    if locations != {data_file(src).name}:  # another layout (e.g. a file per tensor): rewrite it as ours
        onnx.load_external_data_for_model(model, str(src.parent))
        return save_onnx(model, dst)
    for entry in (e for t in tensors for e in t.external_data if e.key == "location"):
        entry.value = data_file(dst).name
    shutil.copyfile(data_file(src), data_file(dst))
    onnx.save_model(model, str(dst))
    return external_data_facts(dst)


# -- the float graph -------------------------------------------------------------------------
def export_onnx(model: torch.nn.Module, img_size: int, path: Path, opset: int = OPSET) -> dict[str, Any]:
    """Float32 ONNX with a dynamic batch axis, simplified with onnxslim. Returns node counts.

    Large models are written with external data (:func:`save_onnx`) and not simplified."""
    import onnx

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".edgevit-export-", dir=path.parent) as work:
        raw = Path(work) / "raw.onnx"  # a folder of its own: over 2 GB the exporter writes a file per tensor
        _torch_export(model, img_size, raw, opset)
        graph = onnx.load(str(raw))
    facts: dict[str, Any] = {"opset": opset, "nodes_exported": len(graph.graph.node)}
    if is_large(graph):
        facts.update(simplified=False, why=NOT_SIMPLIFIED)
    else:
        graph, facts["simplified"] = _simplify(graph)
    facts["nodes"] = len(graph.graph.node)
    facts["external_data"] = bool(save_onnx(graph, path))
    del graph
    onnx.checker.check_model(str(path))  # from the file: reads external data, no 2 GB limit
    return facts


def _torch_export(model: torch.nn.Module, img_size: int, raw: Path, opset: int) -> None:
    import torch

    x = torch.zeros(1, 3, img_size, img_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        try:
            torch.onnx.export(model, (x,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=opset, dynamo=False, do_constant_folding=True,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except TypeError:  # a torch without the TorchScript exporter: use torch.export's
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(model, (x,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=max(opset, 18), dynamo=True,
                              dynamic_shapes={"x": {0: batch}})


def _simplify(graph):
    try:
        import onnxslim
    except ImportError:
        return graph, False
    return onnxslim.slim(graph), True
