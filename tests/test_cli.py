"""The command line: listings, and every bad input gives one clear error, exit code 2, no residue."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import write_cifar
from typer.testing import CliRunner

from edgevit.cli import app

runner = CliRunner()
TINY = ["--model", "deit_tiny", "--img-size", "32", "--patch-size", "8", "--num-classes", "10", "--no-bench"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clear_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    for n in needles:
        assert n in result.output, result.output


def test_models_and_targets_listings():
    r = invoke("models")
    assert r.exit_code == 0 and "deit_tiny_patch16_224" in r.output and "mixer_l16" in r.output
    r = invoke("targets")
    assert r.exit_code == 0 and "openvino-fp16" in r.output and "tensorrt-int8" in r.output


def test_help_teaches():
    r = invoke("export", "--help")
    assert r.exit_code == 0 and "--checkpoint" in r.output and "edgevit targets" in r.output


def test_target_flags_come_from_the_table_with_their_help():
    """One flag per target option, on every command that exports, each saying what it does."""
    from edgevit.targets import option_fields

    fields = option_fields()
    for command in ("export", "quantize", "zeroshot"):
        r = invoke(command, "--help")
        assert r.exit_code == 0, r.output
        assert all("--" + name.replace("_", "-") in r.output for name in fields), r.output
    assert "--no-per-channel" in r.output and "--no-qat-distill" in r.output  # options on by default
    assert "onnx-int8, openvino-int8, tensorrt-int8" in invoke("quantize", "--help").output  # its default targets
    undocumented = sorted(f"{f.name} ({', '.join(f.targets)})" for f in fields.values() if not f.help)
    assert not undocumented, f"target options without help: {undocumented}"


@pytest.fixture
def ckpt(tmp_path):
    from edgevit.models import ModelSpec, create_model

    m = create_model(ModelSpec("deit_tiny", num_classes=10, img_size=32, patch_size=8))
    p = tmp_path / "w.pth"
    torch.save(m.state_dict(), p)
    return p


def test_export_validate_bench_report_end_to_end(tmp_path, ckpt):
    out = tmp_path / "run"
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--target", "onnx,openvino", "--data", "digits",
               "--split", "val", "--limit", "20", "--out", out)
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and (out / "report.html").is_file()
    art = out / "artifacts" / "onnx"
    r = invoke("validate", art, "--data", "digits", "--split", "val", "--limit", "20", "--json", tmp_path / "v.json")
    assert r.exit_code == 0, r.output
    assert "agreement" in r.output and (tmp_path / "v.json").is_file()
    r = invoke("bench", art, out / "artifacts" / "openvino", "--iters", "3", "--warmup", "1", "--rounds", "2",
               "--json", tmp_path / "b.json")
    assert r.exit_code == 0 and "pytorch-eager" in r.output and "p50" in r.output and "noise" in r.output, r.output
    rows = json.loads((tmp_path / "b.json").read_text())
    assert all(len(row["noise"]["rounds_p50_ms"]) == 2 and row["cpu"]["cores"] for row in rows)
    assert invoke("bench", art, "--rounds", "0").exit_code == 2
    r = invoke("report", out)
    assert r.exit_code == 0 and "report.html" in r.output


def test_unknown_model(tmp_path):
    r = invoke("export", "--model", "deit_tinyy", "--no-pretrained", "--out", tmp_path / "o")
    assert_clear_error(r, "unknown model", "edgevit models")
    assert not (tmp_path / "o").exists()


def test_unknown_target(tmp_path, ckpt):
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--target", "onnx-int9", "--out", tmp_path / "o")
    assert_clear_error(r, "unknown target", "edgevit targets")
    assert not (tmp_path / "o").exists()


def test_planned_target_says_so(tmp_path, ckpt, monkeypatch):
    from edgevit import targets

    monkeypatch.setitem(targets.PLANNED, "tflite-int8", "TFLite flatbuffer, int8")
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--target", "tflite-int8", "--out", tmp_path / "o")
    assert_clear_error(r, "not built in this version")


def test_missing_checkpoint(tmp_path):
    r = invoke("export", *TINY, "--checkpoint", tmp_path / "nope.pth", "--out", tmp_path / "o")
    assert_clear_error(r, "does not exist", "--checkpoint")
    assert not (tmp_path / "o").exists()


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 100)
    r = invoke("export", *TINY, "--checkpoint", bad, "--out", tmp_path / "o")
    assert_clear_error(r, "cannot be read")
    assert not (tmp_path / "o").exists()


def test_checkpoint_for_other_class_count(tmp_path, ckpt):
    args = [a if a != "10" else "100" for a in TINY]
    r = invoke("export", *args, "--checkpoint", ckpt, "--out", tmp_path / "o")
    assert_clear_error(r, "10-class head", "--num-classes 10")


def test_checkpoint_for_other_architecture(tmp_path, ckpt):
    args = ["deit_small" if a == "deit_tiny" else a for a in TINY]
    r = invoke("export", *args, "--checkpoint", ckpt, "--out", tmp_path / "o")
    assert_clear_error(r, "does not fit model 'deit_small'")


def test_offline_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke("export", "--model", "deit_tiny", "--out", tmp_path / "o")
    assert_clear_error(r, "cannot download pretrained weights", "--checkpoint PATH")
    assert not (tmp_path / "o").exists()


def test_empty_data_folder(tmp_path, ckpt):
    (tmp_path / "empty").mkdir()
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--data", tmp_path / "empty", "--out", tmp_path / "o")
    assert_clear_error(r, "holds no images")
    assert not (tmp_path / "o").exists()


def test_undecodable_image(tmp_path, ckpt):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    (root / "class_0" / "0.png").write_bytes(b"\x89PNG broken")
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--data", root, "--out", tmp_path / "o")
    assert_clear_error(r, "cannot be decoded", "0.png")
    assert not (tmp_path / "o").exists()


def test_cifar_file_that_is_not_a_pickle(tmp_path, ckpt):
    root = write_cifar(tmp_path / "cifar")
    (root / "test_batch").write_bytes(b"PK\x03\x04 a zip, not a pickle")
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--data", root, "--out", tmp_path / "o")
    assert_clear_error(r, "is not a CIFAR pickle", "test_batch")
    assert not (tmp_path / "o").exists()


def test_existing_output_directory(tmp_path, ckpt):
    (tmp_path / "o").mkdir()
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--out", tmp_path / "o")
    assert_clear_error(r, "already exists", "--exist-ok")
    r = invoke("export", *TINY, "--checkpoint", ckpt, "--out", tmp_path / "o", "--exist-ok")
    assert r.exit_code == 0, r.output


def test_validate_on_something_that_is_not_an_artifact(tmp_path):
    r = invoke("validate", tmp_path, "--data", "digits")
    assert_clear_error(r, "is not an edgevit artifact")


def test_real_process_exit_code(tmp_path):
    """The console script itself (not the in-process runner) exits non-zero with one message."""
    p = subprocess.run([sys.executable, "-m", "edgevit", "export", "--model", "nope_model", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "unknown model" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """The README's first command, minus the install: train, export to every target, report."""
    from edgevit.targets import TARGETS

    r = invoke("quickstart", "--out", tmp_path / "qs", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and (tmp_path / "qs" / "report.html").is_file()
    assert sorted(p.name for p in (tmp_path / "qs" / "artifacts").iterdir()) == sorted(TARGETS)


def test_distill_student_without_token(tmp_path):
    r = invoke("distill", "--teacher", "resnet18_cifar", "--student", "deit_tiny", "--data", "digits",
               "--num-classes", "10", "--img-size", "32", "--patch-size", "8", "--out", tmp_path / "o")
    assert_clear_error(r, "no distillation token", "deit_tiny_distilled")
    assert not (tmp_path / "o").exists()


def test_train_unknown_set_option(tmp_path):
    r = invoke("train", "--model", "deit_tiny", "--data", "digits", "--set", "mixpu=0.8", "--out", tmp_path / "o")
    assert_clear_error(r, "unknown training option 'mixpu'", "mixup")


def test_train_resume_without_checkpoint(tmp_path):
    r = invoke("train", "--model", "deit_tiny", "--data", "digits", "--num-classes", "10", "--img-size", "32",
               "--patch-size", "8", "--resume", "--out", tmp_path / "o")
    assert_clear_error(r, "nothing to resume")


def test_train_cli_runs_and_report_plots_training(tmp_path):
    r = invoke("train", "--model", "deit_tiny", "--data", "digits", "--num-classes", "10", "--img-size", "32",
               "--patch-size", "8", "--epochs", "2", "--batch-size", "128", "--out", tmp_path / "t")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t" / "model" / "weights.safetensors").is_file()
    r = invoke("report", tmp_path / "t")
    assert r.exit_code == 0 and "validation top-1 per epoch" in (tmp_path / "t" / "report.html").read_text()


def test_train_flags_do_not_override_the_recipe_unless_given(tmp_path):
    from edgevit.run.recipe import train_config as _train_config

    r = tmp_path / "r.yaml"
    r.write_text("train: {seed: 7, epochs: 3, mixup: 0.8}\n")
    cfg = _train_config(r, [], seed=None, epochs=None)
    assert (cfg.seed, cfg.epochs, cfg.mixup) == (7, 3, 0.8)
    cfg = _train_config(r, ["mixup=0.2"], seed=3, epochs=None)
    assert (cfg.seed, cfg.epochs, cfg.mixup) == (3, 3, 0.2)
