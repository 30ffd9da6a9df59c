"""int8: calibration sets, the TensorRT rules check, the --max-drop search and bad inputs."""
import json

import numpy as np
import pytest
from conftest import tiny_spec, write_image_folder
from PIL import Image

from edgevit.errors import DataError
from edgevit.float_scope import FloatScope
from edgevit.quant.calibration import calibration_set, control_set, sample_indices
from edgevit.quant.config import QuantizationError
from edgevit.quant.fallback import fallback, top1
from edgevit.run.export import ExportOptions, run_export
from edgevit.targets.trt_rules import check_tensorrt_rules

CFG = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
       "crop_pct": 1.0, "crop_mode": "center"}


# -- calibration -------------------------------------------------------------------------------
def test_sampling_is_balanced_and_deterministic():
    targets = [0] * 50 + [1] * 50 + [2] * 5
    a = sample_indices(targets, 30, seed=0)
    assert a == sample_indices(targets, 30, seed=0) and a != sample_indices(targets, 30, seed=1)
    counts = np.bincount([targets[i] for i in a])
    assert list(counts) == [13, 12, 5]  # round-robin; the small class runs out first
    assert len(set(a)) == 30


def test_calibration_set_is_cached_and_keyed_by_preprocessing(tmp_path, image_folder):
    cache = tmp_path / "cache"
    first = calibration_set(image_folder, CFG, 6, cache_dir=cache)
    assert first.images.shape == (6, 3, 32, 32) and first.images.dtype == np.float32 and not first.cached
    again = calibration_set(image_folder, CFG, 6, cache_dir=cache)
    assert again.cached and again.key == first.key and np.array_equal(again.images, first.images)
    other = calibration_set(image_folder, {**CFG, "mean": [0.4] * 3}, 6, cache_dir=cache)
    assert other.key != first.key and not other.cached  # other preprocessing: rebuilt, not reused
    assert not np.allclose(other.images, first.images)


def test_a_cache_file_from_other_preprocessing_is_rebuilt(tmp_path, image_folder):
    cache = tmp_path / "cache"
    good = calibration_set(image_folder, CFG, 6, cache_dir=cache)
    path = cache / f"{good.key}.npz"
    np.savez(path, images=np.zeros_like(good.images), meta=np.array(json.dumps({"preprocessing": {"x": 1}, "size": 6})))
    rebuilt = calibration_set(image_folder, CFG, 6, cache_dir=cache)
    assert not rebuilt.cached and np.array_equal(rebuilt.images, good.images)


def test_calibration_errors(tmp_path, image_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no images"):
        calibration_set(empty, CFG, 4, cache_dir=None)
    with pytest.raises(DataError, match=r"has 12 images, fewer than the 50 asked for") as e:
        calibration_set(image_folder, CFG, 50, cache_dir=None)
    assert "--calib-size 12" in e.value.fix
    grey = tmp_path / "grey" / "c0"
    grey.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((40, 40), 30 * i, np.uint8), mode="L").save(grey / f"{i}.png")
    with pytest.raises(DataError, match="have one channel") as e:
        calibration_set(grey.parent, CFG, 4, cache_dir=None)
    assert "--calib-grey" in e.value.fix
    assert calibration_set(grey.parent, CFG, 4, cache_dir=None, allow_grey=True).images.shape == (4, 3, 32, 32)


def test_flat_folder_calibrates_and_control_set_is_disjoint(tmp_path, image_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(image_folder.rglob("*.png"))[:5]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    assert calibration_set(flat, CFG, 5, cache_dir=None).images.shape[0] == 5
    with pytest.raises(DataError, match="needs labelled images"):
        control_set(flat, CFG, exclude=2)
    calib = calibration_set(image_folder, CFG, 6, cache_dir=None)
    x, y = control_set(image_folder, CFG, exclude=6, size=100)
    assert len(x) == 6 and sorted(np.bincount(y)) == [2, 2, 2]
    seen = {a.tobytes() for a in calib.images}
    assert not any(a.tobytes() in seen for a in x)


# -- TensorRT rules ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "run"
    run_export(tiny_spec(), ExportOptions(targets=["tensorrt-int8"], out=out, bench=False,
                                         options=dict(calib="digits", calib_size=40)))
    return out


def test_tensorrt_graph_follows_the_rules(trt_run):
    import onnx

    path = trt_run / "artifacts" / "tensorrt-int8" / "model.onnx"
    rules = check_tensorrt_rules(path)
    assert rules["violations"] == [] and rules["weights_per_channel"] > 0 and rules["activations_per_tensor"] > 0
    g = onnx.load(str(path)).graph
    consumers = {i: n.op_type for n in g.node for i in n.input}
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    assert not any(consumers.get(o) in ("LayerNormalization", "Softmax") for o in dq_out)
    mf = json.loads((trt_run / "artifacts" / "tensorrt-int8" / "manifest.json").read_text())
    assert mf["export"]["tensorrt_rules"]["count"] == 0 and mf["export"]["trtexec_args"][0] == "--onnx=model.onnx"
    assert "head/Gemm" not in " ".join(n.name for n in g.node if n.op_type == "DequantizeLinear")
    from edgevit.quant.attention import softmax_output_qparams

    softmax = softmax_output_qparams(onnx.load(str(path), load_external_data=False))  # fixed [0, 1], not calibrated
    assert len(softmax) == 2 and all(q["scale"] == float(np.float16(1 / 127)) and q["zero_point"] == 0
                                     and q["zero_point_type"] == "int8" for q in softmax)
    assert mf["export"]["softmax_output_range"]["tensors"] == 2 and mf["export"]["attention_kept_float"] == []


def _mutate(path, fn):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    fn(m, inits, numpy_helper)
    return m


@pytest.mark.parametrize("breakage,message", [
    ("zero_point", "zero-point not 0"),
    ("uint8", "needs signed int8"),
    ("per_channel_activation", "activation quantized per channel"),
    ("weight_axis", "needs the output-channel axis"),
])
def test_rules_check_catches_each_violation(trt_run, breakage, message):
    path = trt_run / "artifacts" / "tensorrt-int8" / "model.onnx"

    def act_q(m):
        return next(n for n in m.graph.node if n.op_type == "QuantizeLinear")

    def weight_dq(m, inits):
        return next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                    and inits[n.input[1]].dims)

    def fn(m, inits, nh):
        if breakage == "zero_point":
            zp = inits[act_q(m).input[2]]
            zp.CopyFrom(nh.from_array(np.full(nh.to_array(zp).shape, 3, np.int8), zp.name))
        elif breakage == "uint8":
            zp = inits[act_q(m).input[2]]
            zp.CopyFrom(nh.from_array(np.zeros(nh.to_array(zp).shape, np.uint8), zp.name))
        elif breakage == "per_channel_activation":
            dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits)
            s = inits[dq.input[1]]
            s.CopyFrom(nh.from_array(np.full(4, float(nh.to_array(s)), np.float32), s.name))
        else:
            dq = weight_dq(m, inits)
            next(a for a in dq.attribute if a.name == "axis").i = 0
    rules = check_tensorrt_rules(_mutate(path, fn))
    assert rules["count"] >= 1 and any(message in v for v in rules["violations"]), rules["violations"]


def test_norms_get_qdq_only_when_asked(tmp_path):
    """--quantize-norms is LayerNorm's input only: Cast -> Q -> DQ -> LayerNorm in fp32 (no DQ -> Cast -> LayerNorm,
    the shape of TensorRT issue 4832), float gamma/beta, the residual Add and every Softmax input left float."""
    import onnx

    from edgevit.precision import precision_map

    out = run_export(tiny_spec(), ExportOptions(targets=["tensorrt-int8"], out=tmp_path / "r", bench=False,
                                                options=dict(calib="digits", calib_size=40, quantize_norms=True)))
    path = out / "artifacts" / "tensorrt-int8" / "model.onnx"
    assert check_tensorrt_rules(path, FloatScope.of(quantize_norms=True))["count"] == 0
    strict = check_tensorrt_rules(path)
    assert any("feeds LayerNormalization" in v for v in strict["violations"])
    assert not any("Softmax" in v for v in strict["violations"])
    g = onnx.load(str(path), load_external_data=False).graph
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    inits = {t.name for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    norms = [n for n in g.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 5 and all(i in inits for n in norms for i in n.input[1:])
    for n in norms:
        dq = producers[n.input[0]]
        quant = producers[dq.input[0]]
        assert (dq.op_type, quant.op_type, producers[quant.input[0]].op_type) == (
            "DequantizeLinear", "QuantizeLinear", "Cast") and readers[dq.output[0]] == ["LayerNormalization"]
    softmax_in = [producers[n.input[0]].op_type for n in g.node if n.op_type == "Softmax"]
    assert softmax_in and "DequantizeLinear" not in softmax_in
    mf = json.loads((path.parent / "manifest.json").read_text())["export"]
    assert mf["norm_qdq_readers_restored"] == 4 and mf["fp32_qdq_into_layernorm"] == 5  # the residual Adds read float
    assert precision_map(path)["summary"]["fp32_ops_outside_norms"] == 0


def test_a_missing_zero_point_is_a_warning_not_a_violation(trt_run):
    path = trt_run / "artifacts" / "tensorrt-int8" / "model.onnx"

    def drop_zero_points(m, inits, nh):  # TensorRT's parser reads a Q/DQ without one as int8 with zero-point 0
        for n in m.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in inits:
                del n.input[2:]
    rules = check_tensorrt_rules(_mutate(path, drop_zero_points))
    assert rules["count"] == 0 and rules["warnings"] and all("no zero-point" in w for w in rules["warnings"])
    assert check_tensorrt_rules(path)["warnings"] == []


def test_rules_flag_int8_norm_weights_even_when_norms_are_allowed(trt_run):
    def int8_gamma(m, inits, nh):  # gamma of the first LayerNorm through a weight DQ, as ORT's quantizer makes it
        ln = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
        gamma = nh.to_array(inits[ln.input[1]]).astype(np.float32)
        scale = np.float32(np.abs(gamma).max() / 127)
        m.graph.initializer.extend([nh.from_array(np.round(gamma / scale).astype(np.int8), "g_q"),
                                    nh.from_array(np.array(scale, np.float32 if gamma.dtype == np.float32
                                                           else np.float16), "g_s"),
                                    nh.from_array(np.array(0, np.int8), "g_z")])
        m.graph.node.insert(0, onnx.helper.make_node("DequantizeLinear", ["g_q", "g_s", "g_z"], ["g_dq"], name="g_DQ"))
        ln.input[1] = "g_dq"

    import onnx

    path = trt_run / "artifacts" / "tensorrt-int8" / "model.onnx"
    rules = check_tensorrt_rules(_mutate(path, int8_gamma), FloatScope.of(quantize_norms=True))
    assert any("int8 weights feed LayerNormalization" in v for v in rules["violations"]), rules["violations"]


# -- the --max-drop search -------------------------------------------------------------------------
def _fake_build(layer_harm: dict[str, float], y: np.ndarray):
    """Predictions that lose layer_harm[layer] of the images for each quantized layer."""
    def build(exclude):
        wrong = sum(h for n, h in layer_harm.items() if n not in exclude)
        n_wrong = int(round(wrong * len(y)))

        def predict(x):
            idx = x[:, 0, 0, 0].astype(int)
            logits = np.eye(3)[y[idx]]
            logits[idx < n_wrong] = np.eye(3)[(y[idx][idx < n_wrong] + 1) % 3]
            return logits
        return predict
    return build


def test_fallback_keeps_the_most_sensitive_layers_float():
    y = np.arange(1000) % 3
    x = np.arange(1000, dtype=np.float32).reshape(-1, 1, 1, 1)
    harm = {"a": 0.001, "b": 0.05, "c": 0.0, "d": 0.02}
    ref = np.eye(3)[y]
    res = fallback(_fake_build(harm, y), list(harm), (x, y), ref, max_drop=0.5, rank_images=1000)
    assert res["float_layers"] == ["b", "d"] and res["control_drop_pts"] <= 0.5
    assert top1(ref, y) == 100.0
    easy = fallback(_fake_build(harm, y), list(harm), (x, y), ref, max_drop=10.0)
    assert easy["float_layers"] == []


def test_fallback_that_cannot_be_met_says_what_it_reached():
    y = np.arange(300) % 3
    x = np.arange(300, dtype=np.float32).reshape(-1, 1, 1, 1)
    harm = {"a": 0.05, "b": 0.05, "c": 0.05, "d": 0.05}
    with pytest.raises(QuantizationError, match=r"--max-drop 0.5 was not met: the best control-set drop reached "
                                                r"was 10.00 pts, with 2 of 4 layers float") as e:
        fallback(_fake_build(harm, y), list(harm), (x, y), np.eye(3)[y], max_drop=0.5)
    assert "--max-float 4" in e.value.fix


# -- the command, end to end -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_ckpt(tmp_path_factory):
    """Weights for the command line's model (12 blocks at 32 px, patch 8: the CLI sets no depth)."""
    import torch

    from edgevit.models import ModelSpec, create_model

    torch.manual_seed(0)
    m = create_model(ModelSpec("deit_tiny", num_classes=10, img_size=32, patch_size=8))
    p = tmp_path_factory.mktemp("cli") / "w.pth"
    torch.save(m.state_dict(), p)
    return p


def _quantize(tmp_path, *extra, checkpoint=None):
    from typer.testing import CliRunner

    from edgevit.cli import app

    args = ["quantize", "--model", "deit_tiny", "--num-classes", "10", "--img-size", "32", "--patch-size", "8",
            "--no-pretrained", "--out", str(tmp_path / "run"), "--no-bench", *extra]
    if checkpoint:
        args += ["--checkpoint", str(checkpoint)]
    return CliRunner().invoke(app, args)


def test_quantize_command_builds_every_int8_target(tmp_path, cli_ckpt, monkeypatch):
    monkeypatch.setenv("EDGEVIT_CALIB_CACHE", str(tmp_path / "cache"))
    images = write_image_folder(tmp_path / "calib", classes=3, per_class=12, size=36)
    r = _quantize(tmp_path, "--data", "digits", "--limit", "60", "--calib", str(images), "--calib-size", "30",
                  checkpoint=cli_ckpt)
    assert r.exit_code == 0, r.output
    val = json.loads((tmp_path / "run" / "results" / "validate.json").read_text())
    assert set(val) == {"openvino-int8", "onnx-int8", "tensorrt-int8"}
    mf = json.loads((tmp_path / "run" / "artifacts" / "openvino-int8" / "manifest.json").read_text())
    assert mf["export"]["calibration"]["size"] == 30 and mf["export"]["calibration"]["classes"] == 3
    assert mf["export"]["form"] == "nncf" and mf["runtime"]["precision"].startswith("int8")
    assert list((tmp_path / "cache").glob("*.npz"))


@pytest.mark.parametrize("case", ["empty", "too_few", "grey", "unmet", "backend"])
def test_quantize_bad_inputs_leave_nothing_behind(tmp_path, cli_ckpt, monkeypatch, case):
    calib = write_image_folder(tmp_path / "calib", classes=2, per_class=10, size=36)
    extra = ["--target", "tensorrt-int8", "--calib", str(calib), "--calib-size", "8"]
    if case == "empty":
        (tmp_path / "nothing").mkdir()
        extra[3], want = str(tmp_path / "nothing"), "holds no images"
    elif case == "too_few":
        extra[5], want = "500", "has 20 images, fewer than the 500 asked for"
    elif case == "grey":
        for p in calib.rglob("*.png"):
            Image.open(p).convert("L").save(p)
        want = "have one channel"
    elif case == "unmet":
        extra += ["--max-drop", "-5"]
        want = "--max-drop -5.0 was not met"
    else:
        from edgevit.targets import TARGETS

        monkeypatch.setattr(type(TARGETS["openvino-int8"]), "requires", ("openvino", "nncf_not_installed_xyz"))
        extra[1], want = "openvino-int8", "pip install nncf_not_installed_xyz"
    r = _quantize(tmp_path, *extra, checkpoint=cli_ckpt)
    assert r.exit_code == 2, r.output
    assert want in " ".join(r.output.split()), r.output
    assert not (tmp_path / "run").exists()


def test_report_lists_how_int8_artifacts_were_made(trt_run):
    md = (trt_run / "report.md").read_text()
    assert "## int8 artifacts" in md and "| tensorrt-int8 | trt-qdq | percentile | 40 images of digits" in md
    assert "int8 artifacts" in (trt_run / "report.html").read_text()


def test_qat_fine_tunes_and_exports_to_every_int8_target(tmp_path):
    """NNCF QAT on the tiny model: every int8 target is built from the fine-tuned Q/DQ graph and
    reproduces the fake-quantized PyTorch model (checked at export), TensorRT rules included."""
    out = run_export(tiny_spec(), ExportOptions(
        targets=["onnx-int8", "tensorrt-int8", "openvino-int8"], out=tmp_path / "r", data="digits", split="val",
        validate_limit=40, bench=False, options=dict(calib_size=32, qat_epochs=1, qat_batch_size=64)))
    for t in ("onnx-int8", "tensorrt-int8", "openvino-int8"):
        mf = json.loads((out / "artifacts" / t / "manifest.json").read_text())
        assert mf["export"]["form"].startswith("qat-qdq") and mf["export"]["qat"]["epochs"] == 1
        assert mf["export"]["qat"]["distillation"].startswith("soft KD")
        assert mf["check_vs_pytorch"]["rel_max_abs_diff"] < 0.1  # vs the fake-quantized model
    trt = json.loads((out / "artifacts" / "tensorrt-int8" / "manifest.json").read_text())["export"]
    assert trt["tensorrt_rules"]["count"] == 0
    assert trt["runtime_precision"] == "int8 GEMMs + fp16" and trt["precision_map"]["fp32_ops_outside_norms"] == 0
    assert (out / "qat" / "checkpoints" / "last.pt").is_file()


def test_calibrator_choices(tmp_path):
    out = run_export(tiny_spec(), ExportOptions(targets=["openvino-int8", "onnx-int8"], out=tmp_path / "r", bench=False,
                                                options=dict(calib="digits", calib_size=20, calibrator="percentile",
                                                             form="static")))
    for t in ("openvino-int8", "onnx-int8"):
        assert json.loads((out / "artifacts" / t / "manifest.json").read_text())["export"]["calibrator"] == "percentile"
    with pytest.raises(QuantizationError, match="unknown calibrator 'mse'"):
        run_export(tiny_spec(), ExportOptions(targets=["tensorrt-int8"], out=tmp_path / "r2", bench=False,
                                              options=dict(calib_size=20, calibrator="mse")))
    assert not (tmp_path / "r2").exists()


def test_int8_without_calibration_images_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match="need\\(s\\) calibration images") as e:
        run_export(tiny_spec(), ExportOptions(targets=["onnx", "tensorrt-int8"], out=tmp_path / "r", bench=False))
    assert "--calib DIR" in e.value.fix and not (tmp_path / "r").exists()
