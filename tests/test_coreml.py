"""CoreML targets: packages built and checked structurally here; predicted and validated on macOS."""
import json
import platform

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools", reason="coremltools is not installed (pip install -e '.[test]' has it)")

from conftest import tiny_spec  # noqa: E402

from edgevit.errors import ExportError, TargetError  # noqa: E402
from edgevit.run.artifacts import load_artifact  # noqa: E402
from edgevit.run.export import ExportOptions, run_export  # noqa: E402
from edgevit.targets import ExportContext, get_target  # noqa: E402
from edgevit.targets.coreml import inspect_package  # noqa: E402
from edgevit.transforms import build_model  # noqa: E402

ON_MAC = platform.system() == "Darwin"


@pytest.fixture(scope="module")
def coreml_run(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("coreml") / "r"
    run_export(tiny_spec(checkpoint=str(tiny_checkpoint), prune="evit:0.7"),
               ExportOptions(targets=["coreml", "coreml-int8"], out=out, data="digits", split="val",
                             validate_limit=40, iters=3, warmup=1))
    return out


def test_packages_are_built_and_checked_structurally(coreml_run):
    mfs = {t: json.loads((coreml_run / "artifacts" / t / "manifest.json").read_text())
           for t in ("coreml", "coreml-int8")}
    for mf in mfs.values():
        s = mf["export"]["structure"]
        assert mf["files"] == ["model.mlpackage"] and mf["size_bytes"] > 0
        assert s["inputs"] == [{"name": "input", "shape": [1, 3, 32, 32], "dtype": "FLOAT32"}]
        assert s["outputs"][0]["name"] == "logits" and s["outputs"][0]["dtype"] == "FLOAT32"
        assert s["ops"]["layer_norm"] == 5 and s["ops"]["linear"] >= 9  # 2 blocks x 4 + head
        assert "topk" in s["ops"] or "argsort" in s["ops"]  # EViT's static top-k survived conversion
        assert mf["prune"]["spec"].startswith("evit")
    assert mfs["coreml"]["export"]["structure"]["int8_weight_ops"] == 0
    assert mfs["coreml-int8"]["export"]["structure"]["int8_weight_ops"] >= 9
    assert mfs["coreml-int8"]["export"]["weights"] == "int8 symmetric per-channel"
    ratio = mfs["coreml-int8"]["size_bytes"] / mfs["coreml"]["size_bytes"]
    assert 0.4 < ratio < 0.6  # int8 weights are half the fp16 ones; the rest is metadata


@pytest.mark.skipif(ON_MAC, reason="on macOS the packages run and are validated (next test)")
def test_off_macos_packages_are_skipped_with_the_reason(coreml_run):
    for t in ("coreml", "coreml-int8"):
        mf = json.loads((coreml_run / "artifacts" / t / "manifest.json").read_text())
        assert "CoreML runs only on macOS" in mf["check_vs_pytorch"]["skipped"]
    assert not (coreml_run / "results" / "validate.json").exists()  # nothing runnable: no accuracy rows
    report = (coreml_run / "report.md").read_text()
    assert "coreml-int8" in report and "not run here" in report
    with pytest.raises(TargetError, match="CoreML runs only on macOS"):
        load_artifact(coreml_run / "artifacts" / "coreml")


@pytest.mark.skipif(not ON_MAC, reason="CoreML predicts only on macOS")
def test_on_macos_packages_predict_like_pytorch(coreml_run, tiny_checkpoint):

    model = build_model(tiny_spec(checkpoint=str(tiny_checkpoint), prune="evit:0.7"))[0].eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    for t in ("coreml", "coreml-int8"):
        _, runner, _, _ = load_artifact(coreml_run / "artifacts" / t)
        assert np.corrcoef(runner(x).ravel(), ref.ravel())[0, 1] > 0.95
    assert set(json.loads((coreml_run / "results" / "validate.json").read_text())) == {"coreml", "coreml-int8"}


@pytest.mark.skipif(ON_MAC, reason="W8A8 builds on macOS")
def test_w8a8_off_macos_is_refused_before_any_work(tmp_path):
    opts = ExportOptions(targets=["onnx", "coreml-int8"], out=tmp_path / "r", bench=False,
                         options=dict(coreml_w8a8=True))
    with pytest.raises(TargetError, match="--coreml-w8a8 .* macOS"):
        run_export(tiny_spec(), opts)
    assert not (tmp_path / "r").exists()


def test_broken_package_and_missing_model_are_clear_errors(tmp_path):
    (tmp_path / "bad.mlpackage").mkdir()
    with pytest.raises(ExportError, match="does not load as a CoreML package"):
        inspect_package(tmp_path / "bad.mlpackage")
    with pytest.raises(ExportError, match="converts the PyTorch model"):
        get_target("coreml").export(tmp_path / "x.onnx", tmp_path, ExportContext(options=None, input_size=[3, 32, 32]))
