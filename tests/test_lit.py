"""LiT (edgevit.train.lit, edgevit.run.lit): a tiny locked ViT, a tiny text tower, a few steps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.errors import DataError, ModelError, OptionError, ZeroShotError
from edgevit.models import ModelSpec, create_model
from edgevit.train.lit import LitConfig, multi_positive_infonce

CLASSES = ("red", "green", "blue")


def _tower_spec(path: Path | None = None, num_classes: int = 3) -> ModelSpec:
    return ModelSpec("deit_tiny", num_classes=num_classes, img_size=32, patch_size=8, pretrained=False,
                     checkpoint=str(path) if path else None, extra={"depth": 2, "embed_dim": 32, "num_heads": 2})


def _tiny_config(**kw) -> LitConfig:
    base = dict(steps=6, batch_size=8, text_batch=6, warmup_steps=1, text_width=32, text_layers=1, text_heads=2,
                context_length=16, templates="simple", eval_every=3, holdout=0.2)
    base.update(kw)
    return LitConfig(**base)


@pytest.fixture(scope="module")
def tower_ckpt(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_model(_tower_spec())
    path = tmp_path_factory.mktemp("tower") / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """An ImageFolder with train/ and test/ splits: noisy red, green and blue images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def lit_run(tower_ckpt, colours, tmp_path_factory) -> Path:
    from edgevit.run.lit import LitOptions, run_lit

    out = tmp_path_factory.mktemp("runs") / "lit"
    return run_lit(_tower_spec(tower_ckpt), LitOptions(data=str(colours), out=out, config=_tiny_config()))


def test_loss_prefers_alignment_and_ignores_same_class_captions():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    protos = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    image = protos[labels]
    scale = torch.tensor(np.log(50.0), dtype=torch.float32)
    aligned = multi_positive_infonce(image, protos[labels], labels, labels, scale)
    shuffled = multi_positive_infonce(image, protos[labels[[2, 4, 0, 5, 1, 3]]], labels, labels, scale)
    assert aligned < shuffled
    assert aligned < 0.05  # same-class captions are positives: CLIP's one-positive loss would be >= log 2
    swapped = multi_positive_infonce(image, protos[labels][[1, 0, 3, 2, 5, 4]], labels, labels[[1, 0, 3, 2, 5, 4]],
                                     scale)
    assert torch.allclose(aligned, swapped)


def test_loss_clamps_the_scale_at_100():
    labels = torch.tensor([0, 1])
    x = torch.eye(2)
    assert torch.allclose(multi_positive_infonce(x, x, labels, labels, torch.tensor(9.0)),
                          multi_positive_infonce(x, x, labels, labels, torch.tensor(float(np.log(100.0)))))


@pytest.mark.parametrize("kw", [dict(steps=0), dict(batch_size=1), dict(lr=-1.0), dict(warmup_steps=10, steps=10),
                                dict(text_width=30, text_heads=4), dict(context_length=4), dict(holdout=0.7)])
def test_config_check_refuses_impossible_values(kw):
    with pytest.raises(OptionError):
        _tiny_config(**kw).check()


def test_run_loads_and_baked_logits_equal_open_clip(lit_run, colours):
    from edgevit.data import eval_transform, load_split
    from edgevit.models.bake import bake, zeroshot_logits
    from edgevit.models.clip import encode_classes, load_two_tower
    from edgevit.models.prompts import Prompts
    from edgevit.models.zeroshot import data_cfg

    tt = load_two_tower(str(lit_run / "model"))
    assert tt.preprocess["size"] == 32 and tt.preprocess["resize_mode"] == "shortest"
    prompts = Prompts.read(list(CLASSES), "simple")
    text, _ = encode_classes(tt, prompts, cache=False)
    baked, _, _ = bake(tt, prompts, text=text)
    ds = load_split(str(colours), "test", eval_transform(data_cfg(tt.preprocess)))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        assert torch.allclose(baked(x), zeroshot_logits(tt, x, text), atol=1e-4)
    rec = json.loads((lit_run / "lit.json").read_text())
    ev = rec["evaluation"]
    assert ev["images"] == 12 and ev["same_preprocessing"]
    assert ev["zeroshot_minus_classifier_pts"] == pytest.approx(ev["zeroshot_top1"] - ev["classifier_top1"])
    assert {"ci95_pts", "only_ref_correct", "only_candidate_correct"} <= set(ev["paired"])
    assert [r["step"] for r in rec["history"]] == [3, 6] and "holdout_zeroshot_top1" in rec["history"][0]


def test_locked_tower_is_bitwise_unchanged(lit_run, tower_ckpt):
    from safetensors.torch import load_file

    before = load_file(str(tower_ckpt))
    after = load_file(str(lit_run / "model" / "open_clip_model.safetensors"))
    trunk = {k.removeprefix("visual.trunk."): v for k, v in after.items() if k.startswith("visual.trunk.")}
    assert set(trunk) == {k for k in before if not k.startswith("head.")}
    for k, v in trunk.items():
        assert torch.equal(v, before[k]), k


def test_same_seed_same_text_tower(tower_ckpt, colours, tmp_path, lit_run):
    from safetensors.torch import load_file

    from edgevit.run.lit import LitOptions, run_lit

    again = run_lit(_tower_spec(tower_ckpt), LitOptions(data=str(colours), out=tmp_path / "again",
                                                        config=_tiny_config()))
    a = load_file(str(lit_run / "model" / "open_clip_model.safetensors"))
    b = load_file(str(again / "model" / "open_clip_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _refused(tmp_path, spec, colours, error, match, **kw):
    from edgevit.run.lit import LitOptions, run_lit

    out = tmp_path / "never"
    with pytest.raises(error, match=match):
        run_lit(spec, LitOptions(data=str(colours), out=out, config=_tiny_config(), **kw))
    assert not out.exists()


def test_class_count_differs_from_the_data(tmp_path, colours):
    _refused(tmp_path, _tower_spec(num_classes=5), colours, DataError, "3 classes but the tower's head predicts 5")


def test_class_names_count_differs(tmp_path, tower_ckpt, colours):
    _refused(tmp_path, _tower_spec(tower_ckpt), colours, ZeroShotError, "2 class names were given for 3",
             classes="red,green")


def test_non_vit_tower_is_refused(tmp_path, colours):
    _refused(tmp_path, ModelSpec("resnet18_cifar", num_classes=3, img_size=32), colours, ModelError, "not a ViT")


def test_zeroshot_model_as_tower_is_refused(tmp_path, colours):
    spec = ModelSpec("zeroshot_vit", num_classes=3, extra={"zeroshot": {}})
    _refused(tmp_path, spec, colours, ZeroShotError, "already a zero-shot classifier")


def test_context_length_that_cuts_captions(tmp_path, tower_ckpt, colours):
    from edgevit.run.lit import LitOptions, run_lit

    with pytest.raises(OptionError, match="would cut captions"):
        run_lit(_tower_spec(tower_ckpt), LitOptions(data=str(colours), out=tmp_path / "x",
                                                    classes="a very long name of a red thing,green,blue",
                                                    config=_tiny_config(context_length=8)))
    assert not (tmp_path / "x").exists()


def test_missing_data_and_bad_templates(tmp_path, tower_ckpt, colours):
    _refused(tmp_path, _tower_spec(tower_ckpt), tmp_path / "nowhere", DataError, "does not exist")
    from edgevit.run.lit import LitOptions, run_lit

    with pytest.raises(ZeroShotError, match="placeholders"):
        run_lit(_tower_spec(tower_ckpt), LitOptions(data=str(colours), out=tmp_path / "x",
                                                    config=_tiny_config(templates=["a photo"])))
    assert not (tmp_path / "x").exists()
