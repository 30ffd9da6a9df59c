import pytest
import torch
from conftest import tiny_spec
from safetensors.torch import save_file

from edgevit.errors import CheckpointError, ModelError, OfflineError
from edgevit.models import ModelSpec, create_model, list_models, load_state_dict, resolve, with_checkpoint_hash

SHRINK = {"vit": {"depth": 1}, "mixer": {}, "cnn": {}}  # timm fixes the Mixer depth in its entry points


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_every_zoo_entry_builds_small_and_runs(entry):
    """Each zoo row maps to a real timm model; shrunk to one block it builds and runs at 32 px."""
    import timm

    assert entry.timm_name in timm.list_models()
    patch = 8 if entry.family == "vit" else None  # timm fixes the Mixer's patch size too
    spec = ModelSpec(entry.name, num_classes=7, img_size=32, patch_size=patch, extra=SHRINK[entry.family])
    model = create_model(spec)
    assert not model.training
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_zoo_short_names_and_timm_passthrough():
    assert resolve("deit_tiny").timm_name == "deit_tiny_patch16_224"
    assert resolve("vit_huge").timm_name == "vit_huge_patch14_224"
    assert resolve("deit_small_distilled").distilled
    assert resolve("mixer_b16").family == "mixer"
    passthrough = resolve("vit_small_patch32_224")
    assert passthrough.timm_name == "vit_small_patch32_224" and passthrough.family == "vit"


def test_unknown_model_error_suggests():
    with pytest.raises(ModelError) as e:
        resolve("deit_tinyy")
    assert "deit_tinyy" in e.value.what and "edgevit models" in e.value.fix


def _same_outputs(a, b):
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        return torch.allclose(a(x), b(x))


@pytest.mark.parametrize("layout", ["model_key", "plain", "module_prefix", "safetensors"])
def test_checkpoint_layouts_load_the_same_weights(tmp_path, layout):
    torch.manual_seed(1)
    ref = create_model(tiny_spec())
    sd = ref.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "model_key":
        torch.save({"model": sd, "epoch": 1}, path)
    elif layout == "plain":
        torch.save(sd, path)
    elif layout == "module_prefix":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    spec = tiny_spec(checkpoint=str(path))
    loaded = create_model(spec)
    assert _same_outputs(ref, loaded)
    assert spec.checkpoint_sha256 is None  # create_model never changes the caller's spec
    assert len(with_checkpoint_hash(spec).checkpoint_sha256) == 64


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model(tiny_spec(checkpoint=str(tmp_path / "nope.pth")))


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02not really a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot be read") as e:
        create_model(tiny_spec(checkpoint=str(bad)))
    assert "weights_only" in e.value.fix


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    import collections

    path = tmp_path / "evil.pth"
    torch.save({"model": collections.Counter(a=1)}, path)  # any non-tensor global
    with pytest.raises(CheckpointError):
        load_state_dict(path)


def test_checkpoint_for_other_class_count(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="10-class head") as e:
        create_model(tiny_spec(num_classes=100, checkpoint=str(tiny_checkpoint)))
    assert "--num-classes 10" in e.value.fix


def test_checkpoint_for_other_architecture(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="does not fit") as e:
        create_model(tiny_spec(name="deit_small", checkpoint=str(tiny_checkpoint)))
    assert "shape differs" in e.value.what


def test_checkpoint_with_other_depth_names_missing_keys(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="missing: blocks.2"):
        create_model(tiny_spec(extra={"depth": 3}, checkpoint=str(tiny_checkpoint)))


def test_position_embedding_resampled_for_other_image_size(tiny_checkpoint):
    model = create_model(tiny_spec(img_size=48, checkpoint=str(tiny_checkpoint)))
    assert model.pos_embed.shape[1] == 1 + (48 // 8) ** 2


def test_offline_without_checkpoint_says_pass_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as e:
        create_model(ModelSpec("deit_tiny", pretrained=True, extra={"depth": 1}))
    assert "--checkpoint" in e.value.fix


def test_option_a_model_does_not_take_is_a_model_error():
    with pytest.raises(ModelError, match="does not accept"):
        create_model(ModelSpec("mixer_b16", patch_size=8))


def test_unreachable_hub_fails_fast_without_retries(monkeypatch):
    """No DNS for the hub: edgevit goes straight to the local cache instead of a minute of retries."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("edgevit.models.hub.hub_reachable", lambda timeout=5.0: False)
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="cannot download"):
        create_model(ModelSpec("deit_tiny", pretrained=True, extra={"depth": 1}))
    assert time.perf_counter() - t0 < 30
