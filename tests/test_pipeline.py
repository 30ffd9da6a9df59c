"""Run directories, atomic artifacts, output checks, report."""

import pytest
from conftest import tiny_spec

from edgevit.errors import ExportError, RunDirError
from edgevit.report.report import collect, mark_pareto, write_report
from edgevit.run.export import ExportOptions, run_export
from edgevit.targets import TARGETS


def _opts(out, **kw):
    base = dict(targets=["onnx"], out=out, bench=False)
    base.update(kw)
    return ExportOptions(**base)


def test_existing_output_dir_is_refused_unless_exist_ok(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already exists") as e:
        run_export(tiny_spec(), _opts(out))
    assert "--exist-ok" in e.value.fix
    assert (out / "keep.txt").read_text() == "mine" and not (out / "artifacts").exists()
    run_export(tiny_spec(), _opts(out, exist_ok=True))
    assert (out / "artifacts" / "onnx" / "model.onnx").is_file()


def test_interrupted_export_leaves_nothing_half_written(tmp_path, monkeypatch):
    """Ctrl-C in the middle of the second target: the first artifact is complete, the second absent."""
    ov = type(TARGETS["openvino"])
    real = ov.export

    def interrupted(self, onnx_fp32, out_dir, options):
        real(self, onnx_fp32, out_dir, options)  # files are half there...
        raise KeyboardInterrupt  # ...when the user presses Ctrl-C

    monkeypatch.setattr(ov, "export", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_export(tiny_spec(), _opts(out, targets=["onnx", "openvino"]))
    arts = out / "artifacts"
    assert sorted(p.name for p in arts.iterdir()) == ["onnx"]  # no openvino, no .tmp-* folder
    assert (arts / "onnx" / "manifest.json").is_file()


def test_failure_before_any_artifact_removes_the_new_run_dir(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("edgevit.run.export.export_onnx", boom)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_export(tiny_spec(), _opts(out))
    assert not out.exists()


def test_output_mismatch_fails_the_export(tmp_path, monkeypatch):
    """A backend that returns wrong numbers is caught by the check against PyTorch on real images."""
    from edgevit.targets.base import Runner

    onnx_t = type(TARGETS["onnx"])
    real = onnx_t.load

    def wrong(self, art_dir, threads=None):
        r = real(self, art_dir, threads)
        return Runner(lambda x: r.predict(x) + 1.0, r.info)

    monkeypatch.setattr(onnx_t, "load", wrong)
    with pytest.raises(ExportError, match="outputs differ from PyTorch"):
        run_export(tiny_spec(), _opts(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_empty_data_folder_fails_before_export(tmp_path):
    (tmp_path / "data").mkdir()
    from edgevit.errors import DataError

    with pytest.raises(DataError, match="holds no images"):
        run_export(tiny_spec(), _opts(tmp_path / "run", data=str(tmp_path / "data")))
    assert not (tmp_path / "run").exists()


def test_report_files_and_pareto(tmp_path):
    out = tmp_path / "run"
    run_export(tiny_spec(), _opts(out, targets=["onnx", "openvino"], data="digits", split="val",
                                  validate_limit=30, bench=True, iters=3, warmup=1))
    for f in ("report.json", "report.md", "report.html", "plot.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 200
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "openvino" in page and "pytorch-eager" in page
    data = collect(out)
    names = [r["name"] for r in data["rows"]]
    assert names[0] == "pytorch-eager" and set(names) == {"pytorch-eager", "onnx", "openvino"}
    assert all("top1" in r and "p50_ms" in r for r in data["rows"])
    assert any(r["pareto"] for r in data["rows"])
    md = (out / "report.md").read_text()
    assert md.count("\n| ") >= 4  # header + 3 rows
    assert write_report(out) == out / "report.html"


def test_mark_pareto():
    rows = [{"name": "a", "p50_ms": 10, "top1": 80}, {"name": "b", "p50_ms": 5, "top1": 79},
            {"name": "c", "p50_ms": 6, "top1": 70}, {"name": "d", "p50_ms": 4, "top1": 60}]
    mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, True, False, True]


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="not an edgevit run directory"):
        write_report(tmp_path)


def test_artifacts_of_different_models_are_not_mixed(tmp_path):
    from edgevit.errors import ArtifactError
    from edgevit.run.artifacts import bench_artifacts, validate_artifacts

    a, b = tmp_path / "a", tmp_path / "b"
    run_export(tiny_spec(), _opts(a))
    run_export(tiny_spec(num_classes=5), _opts(b))
    arts = [a / "artifacts" / "onnx", b / "artifacts" / "onnx"]
    with pytest.raises(ArtifactError, match="another model"):
        validate_artifacts(arts, "digits")
    with pytest.raises(ArtifactError, match="another model"):
        bench_artifacts(arts)


def test_api_accepts_a_string_output_path(tmp_path):
    out = run_export(tiny_spec(), ExportOptions(targets=["onnx"], out=str(tmp_path / "s"), bench=False))
    assert (out / "artifacts" / "onnx" / "model.onnx").is_file()


def test_non_finite_artifact_outputs_fail_the_check():
    import numpy as np
    import torch

    from edgevit.eval.check import output_check
    from edgevit.models import create_model

    model = create_model(tiny_spec())
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        good = model(torch.from_numpy(x)).numpy()
    assert "vacuous" not in output_check(lambda a: good, model, x)
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ExportError, match="NaN or Inf on 1 of 4"):
        output_check(lambda a: bad, model, x)


def test_non_finite_model_is_refused_before_any_export(tmp_path, tiny_checkpoint):
    import torch

    from edgevit.models import create_model

    model = create_model(tiny_spec(checkpoint=str(tiny_checkpoint)))
    with torch.no_grad():
        model.head.bias.fill_(float("inf"))
    out = tmp_path / "run"
    with pytest.raises(ExportError, match="tiny.pth outputs NaN or Inf"):
        run_export(tiny_spec(checkpoint=str(tiny_checkpoint)), _opts(out), model=model)
    assert not out.exists()


def test_constant_logits_make_the_check_say_it_is_vacuous(tmp_path):
    import torch

    from edgevit.models import create_model

    model = create_model(tiny_spec())
    with torch.no_grad():  # timm zero-initialises some heads (MLP-Mixer): every class scores the same
        model.head.weight.zero_()
        model.head.bias.zero_()
    run = run_export(tiny_spec(), _opts(tmp_path / "run"), model=model)
    import json

    check = json.loads((run / "artifacts" / "onnx" / "manifest.json").read_text())["check_vs_pytorch"]
    assert "proves nothing" in check["vacuous"]


def test_relative_checkpoint_is_recorded_absolute(tmp_path, monkeypatch, tiny_checkpoint):
    import json
    import shutil

    shutil.copy(tiny_checkpoint, tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    run = run_export(tiny_spec(checkpoint="w.pth"), _opts(tmp_path / "run"))
    recorded = json.loads((run / "run.json").read_text())["model"]["checkpoint"]
    assert recorded == str(tmp_path / "w.pth")
    monkeypatch.chdir("/")
    from edgevit.run.artifacts import validate_artifacts

    res = validate_artifacts([run / "artifacts" / "onnx"], "digits", "val", limit=10)
    assert res["onnx"]["images"] == 10


def test_failed_run_removes_the_parents_it_made(tmp_path, monkeypatch):
    from edgevit.run import export as pipeline

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "_export_all", fail)
    (tmp_path / "a").mkdir()
    out = tmp_path / "a" / "b" / "c" / "run"
    with pytest.raises(OSError):
        run_export(tiny_spec(), _opts(out))
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "b").exists()
