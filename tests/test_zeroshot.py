"""Zero-shot classifiers: the baked module equals open_clip's zero-shot logits for every tower kind,
rebuilds from its file alone, caches its text embeddings, refuses bad inputs before any work, and
carries its class names into the manifest and the report. Tiny open_clip models, random weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

TEXT = {"context_length": 16, "width": 32, "heads": 2, "layers": 1}
TOWERS = {  # every kind of image tower the bake handles, at 32 px
    "timm-token-linear": {"embed_dim": 24, "vision_cfg": {
        "timm_model_name": "vit_tiny_patch16_224", "timm_model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2},
        "timm_pool": "token", "timm_proj": "linear", "image_size": 32}},
    "timm-avg-mlp": {"embed_dim": 24, "vision_cfg": {
        "timm_model_name": "vit_tiny_patch16_224", "timm_model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 1},
        "timm_pool": "avg", "timm_proj": "mlp", "timm_proj_bias": True, "image_size": 32}},
    "siglip-map-bias": {"embed_dim": 192, "init_logit_bias": -10.0, "vision_cfg": {
        "timm_model_name": "vit_tiny_patch16_224", "timm_model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 1},
        "timm_pool": "map", "timm_proj": "none", "image_size": 32}},
    "openclip-vit": {"embed_dim": 24, "quick_gelu": True, "vision_cfg": {
        "image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16}},
}
CLASSES = ["class_0", "class_1", "class_2"]


def two_tower(tmp: Path, kind: str = "timm-token-linear", seed: int = 0) -> tuple[Path, Path]:
    """A config JSON and a random-weight checkpoint of a tiny two-tower model."""
    from safetensors.torch import save_file

    from edgevit.models.clip import build_two_tower

    cfg = {**TOWERS[kind], "text_cfg": TEXT}
    torch.manual_seed(seed)
    model = build_two_tower(cfg)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{kind}.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / f"{kind}.safetensors"))
    return tmp / f"{kind}.json", tmp / f"{kind}.safetensors"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("kind", list(TOWERS))
def test_baked_logits_equal_open_clip(tmp_path, kind):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from edgevit.models import ModelSpec, create_model
    from edgevit.models.bake import bake, save_baked
    from edgevit.models.clip import load_two_tower
    from edgevit.models.prompts import Prompts

    cfg, ckpt = two_tower(tmp_path, kind)
    tt = load_two_tower(str(cfg), ckpt)
    prompts = Prompts.read(["cat", "dog", "small red car", "tree"], "simple")
    baked, record, _ = bake(tt, prompts)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():  # open_clip's own path: its classifier builder, encode_image, scale and bias
        weights = build_zero_shot_classifier(tt.model, tt.tokenizer, prompts.classes, prompts.templates)
        ref = tt.model.logit_scale.exp() * tt.model.encode_image(x, normalize=True) @ weights
        if tt.model.logit_bias is not None:
            ref = ref + tt.model.logit_bias
        out = baked(x)
    assert out.shape == (5, 4)
    assert (out - ref).abs().max().item() <= 1e-4
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert ("head.classifier.bias" in baked.state_dict()) == (kind == "siglip-map-bias")
    spec = save_baked(baked, record, tmp_path / "run" / "model")
    for again in (create_model(spec), create_model(ModelSpec(spec.name, checkpoint=spec.checkpoint))):
        with torch.no_grad():  # rebuilt from the spec, and from the baked file's own record
            assert torch.equal(again(x), out)
        assert again.class_names == list(prompts.classes)


def test_timm_tower_is_a_timm_vit_with_a_float_head(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from edgevit.models.bake import bake
    from edgevit.models.clip import load_two_tower
    from edgevit.models.prompts import Prompts
    from edgevit.quant.config import is_head

    cfg, ckpt = two_tower(tmp_path)
    baked, _, _ = bake(load_two_tower(str(cfg), ckpt), Prompts.read(CLASSES, "photo"))
    assert isinstance(baked, VisionTransformer)  # token transforms and int8 treat it as the ViT it is
    assert is_head("/head/classifier/Gemm") and is_head("/head/proj/1/proj/MatMul")
    assert baked.pretrained_cfg["crop_pct"] == 1.0 and baked.pretrained_cfg["input_size"] == (3, 32, 32)


def test_text_embeddings_are_cached_by_weights_classes_and_templates(tmp_path):
    from edgevit.models.clip import encode_classes, load_two_tower
    from edgevit.models.prompts import Prompts

    cfg, ckpt = two_tower(tmp_path)
    tt = load_two_tower(str(cfg), ckpt)
    first, facts = encode_classes(tt, Prompts.read(CLASSES, "simple"))
    again, facts2 = encode_classes(tt, Prompts.read(CLASSES, "simple"))
    assert not facts["cached"] and facts2["cached"] and torch.equal(first, again)
    other, facts3 = encode_classes(tt, Prompts.read(CLASSES, "photo"))
    assert not facts3["cached"] and facts3["key"] != facts["key"]
    _, ckpt2 = two_tower(tmp_path / "b", seed=1)
    _, facts4 = encode_classes(load_two_tower(str(cfg), ckpt2), Prompts.read(CLASSES, "simple"))
    assert not facts4["cached"] and facts4["key"] != facts["key"]  # other weights: another key


def _timm_classifier(tmp: Path) -> Path:
    from conftest import tiny_spec

    from edgevit.models import create_model

    path = tmp / "classifier.pth"
    torch.save(create_model(tiny_spec()).state_dict(), path)
    return path


def _wide_text(tmp: Path) -> Path:
    from safetensors.torch import load_file, save_file

    _, ckpt = two_tower(tmp)
    state = load_file(str(ckpt))
    state["text_projection"] = torch.randn(TEXT["width"], 40)  # the text tower projects to 40, the image to 24
    save_file(state, str(tmp / "wide.safetensors"))
    return tmp / "wide.safetensors"


def _bad_input(tmp: Path, case: str) -> dict:
    cfg, ckpt = two_tower(tmp / "m")
    (tmp / "empty.txt").write_text("# no names\n\n")
    (tmp / "twice.txt").write_text("cat\ndog\ncat\n")
    (tmp / "notemplate.txt").write_text("a photo of a {}.\na photo of something.\n")
    base = {"model": str(cfg), "checkpoint": str(ckpt), "classes": CLASSES, "templates": "photo"}
    return {**base, **{
        "empty classes": {"classes": []},
        "empty class file": {"classes": str(tmp / "empty.txt")},
        "duplicated classes": {"classes": str(tmp / "twice.txt")},
        "blank class": {"classes": "cat,,dog"},
        "missing class file": {"classes": str(tmp / "nope.txt")},
        "template without {}": {"templates": str(tmp / "notemplate.txt")},
        "template with two {}": {"templates": ["a {} and a {}"]},
        "not two-tower": {"checkpoint": str(_timm_classifier(tmp))},
        "width mismatch": {"checkpoint": str(_wide_text(tmp))},
        "unknown arch": {"model": "ViT-B-33"},
        "data class count": {"classes": ["a", "b"]},
    }[case]}


BAD = {"empty classes": "class list is empty", "empty class file": "empty.txt is empty",
       "duplicated classes": "repeats 1 name(s): 'cat'", "blank class": "empty name at position(s) 1",
       "missing class file": "nope.txt does not exist", "template without {}": "has 0 '{}' placeholders",
       "template with two {}": "has 2 '{}' placeholders", "not two-tower": "not a two-tower model",
       "width mismatch": "(40) does not match the image tower's (24)", "unknown arch": "unknown two-tower model",
       "data class count": "has 3 classes but --classes names 2"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_fail_before_any_work(tmp_path, case):
    from edgevit import api
    from edgevit.errors import EdgeVitError

    z = _bad_input(tmp_path, case)
    data = write_image_folder(tmp_path / "images", classes=3, per_class=2, size=32)
    out = tmp_path / "run"
    with pytest.raises(EdgeVitError) as e:
        api.zeroshot(api.ZeroShotOptions(**z), api.ExportOptions(targets=["onnx"], out=out, data=str(data)))
    assert BAD[case] in e.value.what and e.value.fix
    assert not out.exists()  # nothing half-written
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_cli_bad_template_exits_2_naming_the_file(tmp_path):
    from typer.testing import CliRunner

    from edgevit.cli import app

    cfg, ckpt = two_tower(tmp_path)
    (tmp_path / "t.txt").write_text("a photo of a {}.\nno placeholder here\n")
    r = CliRunner().invoke(app, ["zeroshot", "--model", str(cfg), "--checkpoint", str(ckpt), "--classes", "a,b",
                                 "--templates", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "template 2" in r.output and "t.txt" in r.output and "fix:" in r.output
    assert not (tmp_path / "run").exists()


def test_class_names_round_trip_into_manifest_and_report(tmp_path):
    from edgevit import api

    cfg, ckpt = two_tower(tmp_path)
    data = write_image_folder(tmp_path / "images", classes=3, per_class=3, size=32)
    names = ["a tabby cat", "golden retriever", "fire truck"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    zopts = api.ZeroShotOptions(model=str(cfg), checkpoint=str(ckpt), classes=str(tmp_path / "classes.txt"),
                                templates="simple")
    opts = api.ExportOptions(targets=["onnx"], out=tmp_path / "run", data=str(data), split="all", bench=False)
    run = api.zeroshot(zopts, opts, prune="evit:0.5")
    manifest = json.loads((run / "artifacts" / "onnx" / "manifest.json").read_text())
    assert manifest["classes"] == names
    assert manifest["model"]["extra"]["zeroshot"]["templates_from"] == "simple"
    assert manifest["prune"]["spec"].startswith("evit:0.5")  # token pruning applies to the tower
    assert json.loads((run / "run.json").read_text())["classes"] == names
    report = json.loads((run / "report.json").read_text())
    assert report["run"]["classes"] == names
    md = (run / "report.md").read_text()
    assert "classes (3, zero-shot" in md and ", ".join(names) in md
    assert "CPU: no latency measured in this run" in md  # bench=False: not "benched by an older edgevit"
    assert "golden retriever" in (run / "report.html").read_text()
    val = json.loads((run / "results" / "validate.json").read_text())["onnx"]
    assert val["images"] == 9 and val["agreement_pct"] == 100.0
    baked = json.loads((run / "model" / "zeroshot.json").read_text())
    assert baked["classes"] == names and baked["source"]["checkpoint_sha256"]
    weights = run / "model" / "zeroshot.safetensors"  # shared like the rest of the run, not safetensors' 0600
    assert weights.stat().st_mode == (run / "model" / "zeroshot.json").stat().st_mode


def test_recipe_zeroshot_section_bakes_then_exports(tmp_path):
    from edgevit import api
    from edgevit.errors import RecipeError

    cfg, ckpt = two_tower(tmp_path)
    data = write_image_folder(tmp_path / "images", classes=3, per_class=2, size=32)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"zeroshot:\n  model: {cfg}\n  checkpoint: {ckpt}\n  classes: [x, y, z]\n  templates: photo\n"
                      f"data:\n  source: {data}\n  split: all\ntargets: [onnx]\nbench:\n  enabled: false\n"
                      f"out: {tmp_path / 'run'}\n")
    run = api.run(recipe)
    assert json.loads((run / "artifacts" / "onnx" / "manifest.json").read_text())["classes"] == ["x", "y", "z"]
    recipe.write_text(f"zeroshot:\n  model: {cfg}\n  clases: [x]\n")
    with pytest.raises(RecipeError, match="zeroshot.clases"):
        api.load_recipe(recipe)


@pytest.mark.parametrize("name", ["imagenet", "cifar10"])
def test_builtin_class_sets_pass_their_own_checks(name):
    from edgevit.models.prompts import BUILTIN_TEMPLATES, Prompts

    for templates in BUILTIN_TEMPLATES:  # open_clip's ImageNet names repeat two: the built-in set tells them apart
        p = Prompts.read(name, templates)
        assert len(set(p.classes)) == len(p.classes) == {"imagenet": 1000, "cifar10": 10}[name]
    assert len(Prompts.read(name, "openai").templates) == 80


def test_cli_bake_only_then_export_the_baked_file(tmp_path):
    from typer.testing import CliRunner

    from edgevit.cli import app

    cfg, ckpt = two_tower(tmp_path)
    run = tmp_path / "bake"
    r = CliRunner().invoke(app, ["zeroshot", "--model", str(cfg), "--checkpoint", str(ckpt), "--classes", "a,b,c",
                                 "--templates", "photo", "--bake-only", "--out", str(run)])
    assert r.exit_code == 0, r.output
    baked = run / "model" / "zeroshot.safetensors"
    assert baked.is_file() and not (run / "artifacts").exists()
    r = CliRunner().invoke(app, ["export", "--model", "zeroshot_vit", "--checkpoint", str(baked), "--target", "onnx",
                                 "--no-bench", "--out", str(tmp_path / "export")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "export" / "artifacts" / "onnx" / "manifest.json").read_text())
    assert manifest["classes"] == ["a", "b", "c"] and manifest["model"]["extra"]["zeroshot"]["templates"]


@pytest.mark.parametrize("kind", ["timm-token-linear", "openclip-vit"])
def test_every_target_exports_a_baked_classifier(tmp_path, kind):
    """Every target of the table (a new one is tested for free), both tower kinds: exported, checked
    against PyTorch (or structurally, off its platform) and carrying the class names."""
    from edgevit import api

    cfg, ckpt = two_tower(tmp_path, kind)
    data = write_image_folder(tmp_path / "images", classes=3, per_class=4, size=32)
    targets = [t.name for t in api.targets() if not t.missing()]  # an optional extra's, where it is installed
    run = api.zeroshot(api.ZeroShotOptions(model=str(cfg), checkpoint=str(ckpt), classes=CLASSES, templates="photo"),
                       api.ExportOptions(targets=targets, out=tmp_path / "run", data=str(data), split="all",
                                         bench=False, options={"calib_size": 8}))
    for t in targets:
        mf = json.loads((run / "artifacts" / t / "manifest.json").read_text())
        assert mf["classes"] == CLASSES
        check = mf["check_vs_pytorch"]
        assert "skipped" in check or check["top1_agreement_pct"] >= 50, (t, check)


def test_pruned_fine_tune_of_a_baked_classifier_keeps_its_record(tmp_path):
    """A distilled fine-tune saves plain weights: the spec's record still rebuilds the zero-shot model."""
    from conftest import write_cifar

    from edgevit import api

    cfg, ckpt = two_tower(tmp_path)
    data = write_cifar(tmp_path / "cifar", n_train=80, n_test=10)
    names = [f"c{i}" for i in range(10)]
    _, baked = api.bake_zeroshot(api.ZeroShotOptions(model=str(cfg), checkpoint=str(ckpt), classes=names,
                                                     templates="photo"), tmp_path / "bake")
    spec = api.ModelSpec("zeroshot_vit", checkpoint=baked.checkpoint)  # the record comes from the file
    run = api.prune(spec, "evit:0.5@1", api.ExportOptions(targets=["onnx"], out=tmp_path / "pruned", data=str(data),
                                                          bench=False), finetune_epochs=1)
    mf = json.loads((run / "artifacts" / "onnx" / "manifest.json").read_text())
    assert mf["model"]["checkpoint"].endswith("weights.safetensors") and mf["classes"] == names
    val = json.loads((run / "results" / "validate.json").read_text())["onnx"]
    assert val["agreement_pct"] == 100.0 and "dense_top1" in val  # the baked dense model scored beside it
