"""Property tests: whatever the option values or file contents, the answer is a result or one typed
edgevit error, never another exception."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevit.errors import CheckpointError, DataError, EdgeVitError, OptionError, RecipeError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# YAML documents built from the recipe's own field names, with values of every kind
_keys = st.sampled_from(["model", "data", "train", "targets", "quant", "tensorrt", "bench", "out", "version",
                         "name", "img_size", "epochs", "lr", "batch", "source", "split", "calib_size", "nme"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)


@FAST
@given(doc=st.one_of(st.dictionaries(_keys, _values, max_size=6), _values))
def test_any_recipe_document_loads_or_names_its_problem(tmp_path, doc):
    from edgevit.run.recipe import Recipe, load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(load_recipe(path), Recipe)
    except RecipeError as e:
        assert str(path) in e.what and e.fix


@FAST
@given(text=st.text(max_size=200))
def test_any_recipe_text_loads_or_names_its_problem(tmp_path, text):
    from edgevit.run.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(text)
    try:
        load_recipe(path)
    except RecipeError as e:
        assert str(path) in e.what


@FAST
@given(blob=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b),
                      st.binary(max_size=300).map(lambda b: b"\x80\x02" + b)),
       suffix=st.sampled_from([".pth", ".pt", ".safetensors", ".bin"]))
def test_any_checkpoint_bytes_load_or_raise_checkpoint_error(tmp_path, blob, suffix):
    from edgevit.models import load_state_dict

    path = tmp_path / f"w{suffix}"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError) as e:
        load_state_dict(path)
    assert str(path) in e.value.what and e.value.what.strip()


@FAST
@given(blob=st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                      st.binary(max_size=400).map(lambda b: b"\xff\xd8\xff\xe0" + b)))
def test_any_image_bytes_decode_or_raise_data_error(tmp_path, blob):
    from edgevit.data.readers import image_mode, load_image

    path = tmp_path / "x.JPEG"
    path.write_bytes(blob)
    try:
        mode = image_mode(path)
        img = load_image(path)
        assert img.mode == "RGB" and mode
    except DataError as e:
        assert str(path) in e.what


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_valid_image_still_decodes(tmp_path):
    from edgevit.data.readers import load_image

    (tmp_path / "ok.png").write_bytes(_png_bytes())
    assert load_image(tmp_path / "ok.png").size == (4, 4)


_ints = st.one_of(st.none(), st.integers(-5, 5))


@FAST
@given(batch=st.integers(-5, 5), limit=_ints, threads=_ints, iters=st.integers(-5, 5), warmup=st.integers(-5, 5),
       val_fraction=st.floats(-1, 2, allow_nan=False), split=st.sampled_from(["test", "val", "train", "all", "tets"]),
       targets=st.lists(st.sampled_from(["onnx", "openvino", "onnx-int8"]), max_size=3))
def test_export_options_are_accepted_exactly_when_valid(batch, limit, threads, iters, warmup, val_fraction, split,
                                                         targets):
    from edgevit.run.export import ExportOptions

    opts = ExportOptions(targets=targets, out=Path("unused"), batch=batch, validate_limit=limit, threads=threads,
                         iters=iters, warmup=warmup, val_fraction=val_fraction, split=split)
    valid = (bool(targets) and len(set(targets)) == len(targets) and split != "tets" and 0 < val_fraction < 1
             and batch >= 1 and (limit is None or limit >= 1) and (threads is None or threads >= 1)
             and iters >= 1 and warmup >= 0)
    try:
        opts.check()
        assert valid
    except OptionError as e:
        assert not valid and e.what.startswith(("--", "no --target"))


@FAST
@given(labels=st.lists(st.integers(0, 12), min_size=1, max_size=80), fraction=st.floats(0.05, 0.95),
       seed=st.integers(0, 3))
def test_split_is_a_partition_with_a_validation_part(labels, fraction, seed):
    from edgevit.data import split_indices

    train, val = split_indices(labels, fraction, seed)
    assert sorted(train + val) == list(range(len(labels)))
    assert not set(train) & set(val)
    if len(labels) >= 2 and round(len(labels) * fraction) >= 1:
        assert val, "a non-trivial split must have validation images (one image per class included)"
    assert (train, val) == split_indices(labels, fraction, seed)


@FAST
@given(img=st.integers(-3, 64), patch=st.integers(-3, 17))
def test_model_sizes_are_checked_before_any_work(img, patch):
    from edgevit.models import ModelSpec

    spec = ModelSpec("deit_tiny", img_size=img, patch_size=patch)
    try:
        spec.check()
        assert img >= 1 and patch >= 1 and img % patch == 0
    except EdgeVitError as e:
        assert img < 1 or patch < 1 or img % patch, e.what
