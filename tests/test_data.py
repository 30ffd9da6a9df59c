import os
import pickle

import numpy as np
import pytest
from conftest import SHARED_DATA, write_cifar, write_image_folder

from edgevit.data import (
    Cifar,
    Digits,
    ImageFolder,
    data_config,
    eval_transform,
    load_split,
    read_cifar_batch,
    split_indices,
)
from edgevit.errors import DataError


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_reader_takes_n_from_the_arrays(tmp_path, bytes_keys):
    root = write_cifar(tmp_path / "c", n_train=14, n_test=6, bytes_keys=bytes_keys)
    train, test = Cifar(root, "train"), Cifar(root, "test")
    assert len(train) == 14 and len(test) == 6
    img, label = train[3]
    assert img.size == (32, 32) and img.mode == "RGB" and label == 3
    assert train.classes[0] == "c0"


def test_cifar_pixels_are_rgb_planes(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    data = np.zeros((1, 3072), np.uint8)
    data[0, :1024] = 255  # red plane
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [1]}, f, protocol=2)
    arr, labels = read_cifar_batch(root / "test_batch")
    assert arr.shape == (1, 32, 32, 3) and labels == [1]
    assert (arr[0, :, :, 0] == 255).all() and (arr[0, :, :, 1:] == 0).all()


@pytest.mark.skipif(not (SHARED_DATA / "cifar-10-batches-py").exists(), reason="shared CIFAR subset not present")
def test_shared_cifar_subset_counts():
    root = SHARED_DATA / "cifar-10-batches-py"
    assert len(Cifar(root, "train")) == 4660
    test = Cifar(root, "test")
    assert len(test) == 600 and test.classes[:2] == ["airplane", "automobile"]


def test_file_that_is_not_a_pickle(tmp_path):
    root = write_cifar(tmp_path / "c")
    (root / "test_batch").write_text("hello, I am text")
    with pytest.raises(DataError, match="is not a CIFAR pickle") as e:
        Cifar(root, "test")
    assert "test_batch" in e.value.what


def test_pickle_of_the_wrong_shape(tmp_path):
    root = write_cifar(tmp_path / "c")
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, f)
    with pytest.raises(DataError, match="N×3072"):
        Cifar(root, "test")


def test_pickle_that_runs_code_is_refused(tmp_path):
    root = write_cifar(tmp_path / "c")

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump(Boom(), f)
    with pytest.raises(DataError, match="not allowed"):
        Cifar(root, "test")


def test_image_folder(image_folder):
    ds = ImageFolder(image_folder)
    assert ds.classes == ["class_0", "class_1", "class_2"] and len(ds) == 12
    assert ds[5][1] == 1


def test_empty_image_folder(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        ImageFolder(tmp_path / "empty")


def test_undecodable_image_names_the_file(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    (root / "class_1" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolder(root)
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.name == "broken.jpg")
    with pytest.raises(DataError, match="broken.jpg"):
        ds[bad]


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nowhere", "test")


def test_digits_split_is_stratified_disjoint_and_deterministic():
    d = Digits()
    assert len(d) == 1797
    tr, va = split_indices(d.targets, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 1797
    assert split_indices(d.targets, 0.2, seed=0) == (tr, va)
    assert split_indices(d.targets, 0.2, seed=1) != (tr, va)
    counts = np.bincount([d.targets[i] for i in va], minlength=10)
    assert counts.min() >= 30  # every class is represented in val


def test_limit_takes_a_stratified_subset():
    ds = load_split("digits", "val", limit=50)
    assert len(ds) == 50 and len(set(ds.targets)) == 10


def test_image_folder_with_train_and_val_subfolders(tmp_path):
    write_image_folder(tmp_path / "ds" / "train", per_class=3)
    write_image_folder(tmp_path / "ds" / "val", per_class=2)
    assert len(load_split(tmp_path / "ds", "train")) == 9
    assert len(load_split(tmp_path / "ds", "val")) == 6


def test_small_images_are_not_center_cropped(spec):
    from edgevit.models import create_model

    cfg = data_config(create_model(spec), 32)
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0
    x = eval_transform(cfg)(Digits()[0][0])
    assert tuple(x.shape) == (3, 32, 32)


def test_cifar100_layout(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 8), ("test", 4)):
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [99 - i for i in range(n)], b"coarse_labels": [0] * n}, f, protocol=2)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f, protocol=2)
    train = load_split(root, "train")
    assert len(train) == 8 and train.targets[0] == 99 and len(train.classes) == 100
    assert len(load_split(root, "test")) == 4


def test_every_format_pillow_reads_is_used_and_other_files_are_named(tmp_path, capsys):
    from PIL import Image

    from edgevit.data import ImageFolder

    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=1)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "class_0" / "anim.gif")
    Image.new("RGB", (8, 8)).save(root / "class_1" / "icon.tga")
    (root / "class_1" / "labels.txt").write_text("not an image")
    (root / "class_1" / ".DS_Store").write_bytes(b"\0")
    ds = ImageFolder(root)
    names = sorted(p.name for p, _ in ds.samples)
    assert "anim.gif" in names and "icon.tga" in names and len(ds) == 4
    assert ds[names.index("anim.gif")][0].mode == "RGB"
    err = capsys.readouterr().err
    assert "skipped 1 file(s) that are not images" in err and "labels.txt" in err and "DS_Store" not in err


def test_one_image_per_class_still_has_a_validation_split(tmp_path):
    from edgevit.data import load_split

    root = write_image_folder(tmp_path / "imgs", classes=20, per_class=1)
    val = load_split(root, "test", val_fraction=0.2)
    train = load_split(root, "train", val_fraction=0.2)
    assert len(val) == 4 and len(train) == 16
    assert not set(val.indices) & set(train.indices)
    assert len(load_split(root, "all")) == 20


def test_an_empty_split_is_a_clear_error(tmp_path):
    from edgevit.data import load_split
    from edgevit.errors import DataError

    root = write_image_folder(tmp_path / "imgs", classes=1, per_class=1)
    with pytest.raises(DataError, match="split of .* is empty"):
        load_split(root, "test", val_fraction=0.2)


@pytest.mark.skipif(not (SHARED_DATA / "imagenet-sample").is_dir(), reason="needs ../shared/data/imagenet-sample")
def test_imagenet_sample_splits_for_validation():
    from edgevit.data import load_split

    val = load_split(SHARED_DATA / "imagenet-sample", "test", val_fraction=0.2)
    assert len(val) == 200 and len(set(val.targets)) == 200
