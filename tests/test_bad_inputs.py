"""Every kind of bad input, one row each, through the real console script in a subprocess.

Each row asserts what a user must see: exit code 2, no traceback, a message that names the input or
option at fault, and nothing left behind in ``--out`` or the working directory. The rows run
concurrently (each is a separate process that mostly waits on imports), then each is its own test.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import write_cifar, write_image_folder

EDGEVIT = str(Path(sys.executable).with_name("edgevit"))
TINY = ["--model", "deit_tiny", "--img-size", "32", "--patch-size", "8", "--num-classes", "10", "--no-bench"]


@dataclass
class Row:
    id: str
    args: Callable[[dict], list]  # inputs -> argv after `edgevit`
    needles: tuple[str, ...]  # each must appear in the output
    absent: tuple[str, ...] = ()  # work that must not have started
    out: Callable[[dict], Path] | None = None  # where --out points, when not <cwd>/out
    setup: Callable[[dict], None] | None = None  # per-row preparation (e.g. a full disk)
    result: dict = field(default_factory=dict)


def _export(ckpt: str = "ckpt", *extra) -> Callable[[dict], list]:
    return lambda f: ["export", *TINY, "--checkpoint", f[ckpt], *[f.get(e, e) for e in extra]]


def _quantize(*extra) -> Callable[[dict], list]:
    return lambda f: ["quantize", *TINY, "--checkpoint", f["ckpt"], "--target", "openvino-int8",
                      *[f.get(e, e) for e in extra]]


ROWS = [
    # 1. non-finite weights never pass as an artifact
    Row("nan_checkpoint", _export("nan_ckpt"), ("nan.pth", "non-finite")),
    # 2. user text is never read as markup
    Row("markup_in_path", _export("markup_ckpt"), ("weird[/raw]dir", "does not exist")),
    Row("yaml_error_line_kept", lambda f: ["run", f["yaml_error"]], ("not valid YAML", "[deit_tiny")),
    # 3. bad images in a calibration folder
    Row("calib_zero_byte_image", _quantize("--calib", "calib_zero", "--calib-size", "2"),
        ("empty.JPEG", "cannot be decoded"), absent=("exporting",)),
    Row("calib_text_as_jpeg", _quantize("--calib", "calib_text", "--calib-size", "2"),
        ("notes.JPEG", "cannot be decoded"), absent=("exporting",)),
    Row("calib_symlink_loop", _quantize("--calib", "calib_loop", "--calib-size", "2"),
        ("loop.JPEG",), absent=("exporting",)),
    Row("calib_empty_folder", _quantize("--calib", "calib_empty"), ("holds no images",), absent=("exporting",)),
    # 4. zero-byte checkpoints
    Row("zero_byte_checkpoint", _export("empty_ckpt"), ("empty.pth", "0 bytes")),
    Row("zero_byte_resume_checkpoint",
        lambda f: ["train", "--model", "deit_tiny", "--data", "digits", "--img-size", "32", "--patch-size", "8",
                   "--num-classes", "10", "--out", f["zero_resume_run"], "--resume"],
        ("last.pt", "is empty (0 bytes)"), out=lambda f: Path(f["zero_resume_run"]) / "model"),
    # 6. broken artifacts and runs
    Row("truncated_model_file", lambda f: ["validate", f["art_truncated"], "--data", "digits"],
        ("model.onnx", "cannot be loaded")),
    Row("missing_model_file", lambda f: ["bench", f["art_missing"], "--iters", "2"], ("missing model.onnx",)),
    Row("empty_manifest", lambda f: ["validate", f["art_empty_manifest"], "--data", "digits"],
        ("manifest.json", "cannot be read")),
    Row("manifest_without_target", lambda f: ["bench", f["art_no_target"]], ("incomplete", "'target'")),
    Row("corrupt_run_json", lambda f: ["report", f["run_corrupt"]], ("run.json", "cannot be read")),
    # 7. output paths
    Row("out_under_a_file", _export("ckpt", "--out", "out_file_parent"), ("is a file",),
        out=lambda f: Path(f["out_file_parent"])),
    Row("out_cannot_be_created", _export("ckpt", "--out", "/proc/edgevit-run"), ("/proc/edgevit-run",),
        out=lambda f: Path("/proc/edgevit-run")),
    Row("out_name_too_long", lambda f: ["export", *TINY, "--checkpoint", f["ckpt"], "--out", "x" * 300],
        ("255 bytes",)),
    Row("disk_full", _export("ckpt", "--target", "onnx,openvino", "--out", "full_disk_out"),
        ("No space left on device",), out=lambda f: Path(f["full_disk_out"]),
        setup=lambda f: _full_disk(Path(f["full_disk_out"]).parent)),
    # 8. option values before any work
    Row("negative_batch", _export("ckpt", "--batch", "-1", "--bench"), ("--batch",), absent=("exporting",)),
    Row("negative_limit", _export("ckpt", "--data", "digits", "--limit", "-5"), ("--limit",),
        absent=("exporting", "val_fraction")),
    Row("bad_split", _export("ckpt", "--split", "tets"), ("--split", "tets")),
    Row("bad_val_fraction", _export("ckpt", "--val-fraction", "1.5"), ("--val-fraction",)),
    # 9. silently accepted before
    Row("empty_recipe", lambda f: ["run", f["recipe_empty"]], ("empty.yaml", "is empty")),
    Row("more_classes_than_model", _export("ckpt", "--data", "twelve_classes"), ("12 classes", "predicts 10")),
    Row("img_size_not_multiple_of_patch",
        lambda f: ["export", "--model", "deit_tiny", "--no-pretrained", "--img-size", "30", "--patch-size", "4"],
        ("--img-size 30", "multiple")),
    Row("duplicate_target", _export("ckpt", "--target", "onnx,onnx"), ("onnx", "more than once")),
    Row("resume_with_other_epochs",
        lambda f: ["train", "--model", "deit_tiny", "--data", "digits", "--img-size", "32", "--patch-size", "8",
                   "--num-classes", "10", "--out", f["trained_run"], "--resume", "--epochs", "3"],
        ("epochs 3", "the run has 1"), out=lambda f: Path(f["trained_run"]) / "never"),
    # 10. messages
    Row("folder_as_checkpoint", _export("ckpt_folder"), ("is a folder",)),
    Row("archive_as_data", _export("ckpt", "--data", "archive"), ("data.tar.gz", "unpack")),
    Row("recipe_reports_every_problem", lambda f: ["run", f["recipe_many"]],
        ("3 problems", "'version'", "'model.nme'", "'bench.batch'")),
    Row("recipe_is_a_folder", lambda f: ["run", f["ckpt_folder"]], ("is a folder",)),
    Row("set_value_not_yaml", lambda f: ["train", "--model", "deit_tiny", "--data", "digits", "--set", "lr=[1"],
        ("--set 'lr=[1'", "not valid YAML")),
    # 11. what is checked before any model is built (no hub download, no forward pass)
    Row("int8_without_calibration_source", lambda f: ["export", "--model", "deit_tiny", "--target", "tensorrt-int8"],
        ("tensorrt-int8", "--calib", "--data"), absent=("cannot download", "exporting")),
    Row("calib_not_a_folder", _quantize("--calib", "no/such/calib"), ("--calib no/such/calib", "not a folder"),
        absent=("exporting",)),
    Row("option_at_its_default_not_honoured", _export("ckpt", "--target", "onnx", "--max-batch", "8"),
        ("--max-batch is not honoured by onnx", "tensorrt-fp16"), absent=("exporting",)),
    # kinds the older tests cover, kept here so the table is the whole list
    Row("malicious_pickle", _export("evil_ckpt"), ("evil.pth", "cannot be read"), absent=("UserWarning",)),
    Row("unknown_target", _export("ckpt", "--target", "onnx-int9"), ("unknown target", "onnx-int9")),
    Row("unknown_model", lambda f: ["export", "--model", "deit_tinyy", "--no-pretrained"], ("deit_tinyy",)),
    Row("missing_data", _export("ckpt", "--data", "no/such/folder"), ("no/such/folder", "does not exist")),
    Row("existing_out", _export("ckpt", "--out", "existing_out"), ("already exists", "--exist-ok"),
        out=lambda f: Path(f["existing_out"]) / "untouched"),
]


def _full_disk(mount: Path) -> None:
    """A tmpfs with room for bytes but almost no inodes: writes fail with ENOSPC mid-run."""
    mount.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,nr_inodes=6", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode:
        raise _Skip(f"cannot mount a small tmpfs here to fill a disk: {r.stderr.strip()}")


class _Skip(Exception):
    pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    from edgevit.models import ModelSpec, create_model

    d = tmp_path_factory.mktemp("bad-inputs")
    f: dict = {}
    torch.manual_seed(0)
    model = create_model(ModelSpec("deit_tiny", num_classes=10, img_size=32, patch_size=8))
    f["ckpt"] = str(d / "w.pth")
    torch.save(model.state_dict(), f["ckpt"])
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(nan, d / "nan.pth")
    f["nan_ckpt"] = str(d / "nan.pth")
    f["markup_ckpt"] = str(d / "weird[/raw]dir" / "w.pth")
    (d / "empty.pth").write_bytes(b"")
    f["empty_ckpt"] = str(d / "empty.pth")
    (d / "ckpt_folder").mkdir()
    f["ckpt_folder"] = str(d / "ckpt_folder")
    f["evil_ckpt"] = str(_evil_pickle(d))
    _calibration_folders(d, f)
    _recipes(d, f)
    _artifacts(d, f, model)
    _runs(d, f)
    _data(d, f)
    (d / "a_file").write_text("x")
    f["out_file_parent"] = str(d / "a_file" / "run")
    f["full_disk_out"] = str(d / "full" / "run")
    (d / "existing").mkdir()
    f["existing_out"] = str(d / "existing")
    yield f
    subprocess.run(["umount", str(d / "full")], capture_output=True)


def _evil_pickle(d: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    path = d / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    return path


def _calibration_folders(d: Path, f: dict) -> None:
    from PIL import Image

    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for name, bad in (("calib_zero", "empty.JPEG"), ("calib_text", "notes.JPEG"), ("calib_loop", "loop.JPEG")):
        folder = d / name
        folder.mkdir()
        good.save(folder / "good.png")
        if name == "calib_zero":
            (folder / bad).write_bytes(b"")
        elif name == "calib_text":
            (folder / bad).write_text("these are my notes, not a photo\n")
        else:
            os.symlink(folder / bad, folder / bad)
        f[name] = str(folder)
    (d / "calib_empty").mkdir()
    f["calib_empty"] = str(d / "calib_empty")


def _recipes(d: Path, f: dict) -> None:
    (d / "bad.yaml").write_text("model:\n  name: [deit_tiny\ntargets: [onnx]\n")
    f["yaml_error"] = str(d / "bad.yaml")
    (d / "empty.yaml").write_text("# nothing yet\n")
    f["recipe_empty"] = str(d / "empty.yaml")
    (d / "many.yaml").write_text("version: 1\nmodel:\n  nme: deit_tiny\nbench:\n  batch: two\n")
    f["recipe_many"] = str(d / "many.yaml")


def _artifacts(d: Path, f: dict, model) -> None:
    from edgevit.models import ModelSpec
    from edgevit.run.export import ExportOptions, run_export

    spec = ModelSpec("deit_tiny", num_classes=10, img_size=32, patch_size=8, checkpoint=f["ckpt"])
    run = run_export(spec, ExportOptions(targets=["onnx"], out=d / "good-run", bench=False))
    good = run / "artifacts" / "onnx"
    for name in ("art_truncated", "art_missing", "art_empty_manifest", "art_no_target"):
        shutil.copytree(good, d / name)
        f[name] = str(d / name)
    onnx = d / "art_truncated" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 3])
    (d / "art_missing" / "model.onnx").unlink()
    (d / "art_empty_manifest" / "manifest.json").write_text("")
    mf = json.loads((d / "art_no_target" / "manifest.json").read_text())
    del mf["target"]
    (d / "art_no_target" / "manifest.json").write_text(json.dumps(mf))
    shutil.copytree(run, d / "run_corrupt")
    (d / "run_corrupt" / "run.json").write_text('{"model": ')
    f["run_corrupt"] = str(d / "run_corrupt")


def _runs(d: Path, f: dict) -> None:
    from edgevit.models import ModelSpec
    from edgevit.run.training import run_training
    from edgevit.train.engine import TrainConfig

    spec = ModelSpec("deit_tiny", num_classes=10, img_size=32, patch_size=8)
    cifar = write_cifar(d / "train-cifar", n_train=20, n_test=10)
    run_training(spec, TrainConfig(epochs=1, batch_size=10, warmup_epochs=0), str(cifar), d / "trained",
                 split="test")
    f["trained_run"] = str(d / "trained")
    (d / "zero-resume" / "checkpoints").mkdir(parents=True)
    (d / "zero-resume" / "checkpoints" / "last.pt").write_bytes(b"")
    f["zero_resume_run"] = str(d / "zero-resume")


def _data(d: Path, f: dict) -> None:
    f["twelve_classes"] = str(write_image_folder(d / "twelve", classes=12, per_class=2))
    with tarfile.open(d / "data.tar.gz", "w:gz") as tar:
        tar.add(f["twelve_classes"], arcname="twelve")
    f["archive"] = str(d / "data.tar.gz")


def _run_row(row: Row, inputs: dict, base: Path) -> dict:
    cwd = base / row.id
    cwd.mkdir()
    f = inputs
    if row.setup:
        try:
            row.setup(f)
        except _Skip as e:
            return {"skip": str(e)}
    argv = [str(a) for a in row.args(f)]
    if row.out is None and "--out" not in argv and argv[0] in ("export", "quantize"):
        argv += ["--out", str(cwd / "out")]
    env = {**os.environ, "EDGEVIT_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    p = subprocess.run([EDGEVIT, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    out_dir = row.out(f) if row.out else cwd / "out"
    return {"code": p.returncode, "output": p.stdout + p.stderr, "argv": argv, "left_in_cwd": sorted(os.listdir(cwd)),
            "out_exists": out_dir.exists(),
            "existing_untouched": sorted(os.listdir(inputs["existing_out"]))}


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("rows")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {row.id: pool.submit(_run_row, row, inputs, base) for row in ROWS}
        done = {k: fut.result() for k, fut in futures.items()}
    if log := os.environ.get("EDGEVIT_BAD_INPUTS_LOG"):  # what each row printed, for reading by a person
        Path(log).write_text("".join(f"## {k}\n$ edgevit {' '.join(r.get('argv', []))}\n{r.get('output', r)}\n"
                                     for k, r in done.items()))
    return done


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_one_clear_error(row: Row, results, inputs):
    r = results[row.id]
    if "skip" in r:
        pytest.skip(r["skip"])
    shown = f"edgevit {' '.join(r['argv'])}\n{r['output']}"
    assert r["code"] == 2, shown
    assert "Traceback" not in r["output"], shown
    assert "error:" in r["output"], shown
    for needle in row.needles:
        assert needle in r["output"], f"{needle!r} not in:\n{shown}"
    for word in row.absent:
        assert word not in r["output"], f"{word!r} should not appear (work started):\n{shown}"
    assert r["left_in_cwd"] == [], f"left behind in the working directory: {r['left_in_cwd']}\n{shown}"
    assert not r["out_exists"], f"--out was created:\n{shown}"
    assert r["existing_untouched"] == [], "an existing --out was written into"
    assert not (Path(inputs["ckpt"]).parent / "PWNED").exists(), "the malicious pickle ran"
