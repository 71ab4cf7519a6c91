"""Tests for models/data.py: digits, synthetic, CIFAR-10 binary, folders."""

import os

import numpy as np
import pytest

from models.data import (
    CIFAR10_RECORD_BYTES,
    DataError,
    Dataset,
    RandomCropFlip,
    center_crop,
    iterate_minibatches,
    load_dataset,
    read_cifar10_batch,
)


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=16, channels=3, seed=0)


def test_digits_shapes_and_dtypes(digits):
    assert isinstance(digits, Dataset)
    assert len(digits.train_images) + len(digits.val_images) == 1797
    assert digits.train_images.shape[1:] == (3, 16, 16)
    assert digits.val_images.shape[1:] == (3, 16, 16)
    assert digits.train_images.dtype == np.float32
    assert digits.val_images.dtype == np.float32
    assert digits.train_labels.dtype == np.int64
    assert digits.val_labels.dtype == np.int64
    assert digits.num_classes == 10
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.mean.shape == (3,) and digits.mean.dtype == np.float32
    assert digits.name == "digits"
    assert digits.augment is None
    assert digits.input_shape == (3, 16, 16)
    # About val_fraction of the data, with every class in both splits.
    assert abs(len(digits.val_images) - 0.2 * 1797) < 10
    assert set(digits.train_labels) == set(digits.val_labels) == set(range(10))


def test_digits_mean_subtracted(digits):
    train_mean = digits.train_images.mean(axis=(0, 2, 3), dtype=np.float64)
    np.testing.assert_allclose(train_mean, 0.0, atol=1e-5)
    # Pixels were in [0, 1] before the (positive) mean was removed.
    assert np.all(digits.mean > 0.1) and np.all(digits.mean < 0.9)
    restored = digits.train_images + digits.mean[None, :, None, None]
    assert restored.min() >= -1e-5 and restored.max() <= 1 + 1e-5
    # Channels are replicas of the grey image.
    np.testing.assert_array_equal(digits.train_images[:, 0],
                                  digits.train_images[:, 2])


def test_digits_channels_and_native_size():
    d = load_dataset("digits", image_size=8, channels=1, seed=0)
    assert d.train_images.shape[1:] == (1, 8, 8)
    # At the native size no interpolation happens: values are k/16 - mean.
    raw = (d.train_images + d.mean[None, :, None, None]) * 16
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-4)


def test_digits_seeded_split_reproducible_and_seed_dependent(digits):
    again = load_dataset("digits", image_size=16, channels=3, seed=0)
    np.testing.assert_array_equal(again.train_images, digits.train_images)
    np.testing.assert_array_equal(again.train_labels, digits.train_labels)
    np.testing.assert_array_equal(again.val_labels, digits.val_labels)
    other = load_dataset("digits", image_size=16, channels=3, seed=1)
    assert not np.array_equal(other.train_labels, digits.train_labels)
    assert len(other.train_labels) == len(digits.train_labels)


def test_bad_spec_and_arguments():
    with pytest.raises(ValueError, match="unknown data set spec"):
        load_dataset("mnist", 8)
    with pytest.raises(ValueError, match="names no folder"):
        load_dataset("cifar10:", 8)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", 8, val_fraction=1.0)


# --------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------


def test_synthetic_is_small_seeded_and_learnable():
    d = load_dataset("synthetic", image_size=12, channels=3, seed=0,
                     synthetic_size=120)
    assert len(d.train_images) + len(d.val_images) == 120
    assert d.train_images.shape[1:] == (3, 12, 12)
    assert d.num_classes == 4 and len(d.class_names) == 4
    np.testing.assert_allclose(d.train_images.mean(axis=(0, 2, 3)), 0,
                               atol=1e-5)
    # Class means differ by much more than the noise in those means.
    means = np.stack([d.train_images[d.train_labels == k].mean(axis=0)
                      for k in range(4)])
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(means[a] - means[b]).mean() > 0.1
    # Nearest class mean classifies the validation split well.
    dists = ((d.val_images[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (dists.argmin(axis=1) == d.val_labels).mean() > 0.9

    same = load_dataset("synthetic", 12, seed=0, synthetic_size=120)
    np.testing.assert_array_equal(same.train_images, d.train_images)
    other = load_dataset("synthetic", 12, seed=1, synthetic_size=120)
    assert not np.array_equal(other.train_images, d.train_images)


def test_a_data_set_larger_than_memory_is_refused_before_loading(monkeypatch):
    import models.data as data

    with pytest.raises(DataError, match=r"synthetic: 200 images of 3x100000x100000 float32 need 22,351.7 GiB of "
                                        r"memory, and this machine has .* GiB: use a smaller image size"):
        load_dataset("synthetic", 100_000)
    monkeypatch.setattr(data, "physical_memory", lambda: 2**20)  # a 1 MiB machine
    with pytest.raises(DataError, match=r"digits: 1,797 images of 3x24x24 float32 need 0.0 GiB of memory, and this machine has 0.0 GiB"):
        load_dataset("digits", 24)
    monkeypatch.setattr(data, "physical_memory", lambda: 0)  # the system does not say: no check
    assert load_dataset("synthetic", 8).train_images.shape[2:] == (8, 8)


def test_synthetic_class_count():
    d = load_dataset("synthetic:7", image_size=8, channels=1,
                     synthetic_size=70)
    assert d.num_classes == 7
    assert set(d.train_labels) == set(range(7))


# --------------------------------------------------------------------------
# minibatches and augmentation
# --------------------------------------------------------------------------


def test_iterate_minibatches_covers_everything_once():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10)
    batches = list(iterate_minibatches(x, y, 4, np.random.default_rng(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(10))
    assert not np.array_equal(seen, y)  # shuffled
    for bx, by in batches:
        np.testing.assert_array_equal(bx.ravel(), by)  # pairs stay aligned
    # Same seed -> same order; drop_last drops the short batch.
    again = list(iterate_minibatches(x, y, 4, np.random.default_rng(0)))
    np.testing.assert_array_equal(seen, np.concatenate([b[1] for b in again]))
    dropped = list(iterate_minibatches(x, y, 4, np.random.default_rng(0),
                                       drop_last=True))
    assert [len(b[1]) for b in dropped] == [4, 4]
    ordered = list(iterate_minibatches(x, y, 3, None, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in ordered]), y)
    # Batches are copies: editing one leaves the data set alone.
    ordered[0][0][:] = -1
    assert x.min() == 0


def test_random_crop_flip_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3, 10, 10)).astype(np.float32)
    aug = RandomCropFlip(6)
    a = aug(x, np.random.default_rng(5))
    b = aug(x, np.random.default_rng(5))
    c = aug(x, np.random.default_rng(6))
    assert a.shape == (16, 3, 6, 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Every output is some crop of its input, possibly mirrored.
    flips = 0
    for i in range(16):
        windows = [x[i, :, t:t + 6, l:l + 6] for t in range(5) for l in range(5)]
        plain = any(np.array_equal(a[i], w) for w in windows)
        mirrored = any(np.array_equal(a[i], w[:, :, ::-1]) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 0 < flips < 16


def test_center_crop():
    x = np.arange(36).reshape(1, 1, 6, 6)
    np.testing.assert_array_equal(center_crop(x, 2)[0, 0],
                                  [[14, 15], [20, 21]])


# --------------------------------------------------------------------------
# CIFAR-10 binary format
# --------------------------------------------------------------------------


def _cifar_records(labels, rng):
    """Records with random pixels; returns (bytes, images (N,3,32,32))."""
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32),
                          dtype=np.uint8)
    records = np.concatenate(
        [np.asarray(labels, np.uint8)[:, None], images.reshape(len(labels), -1)],
        axis=1)
    return records.tobytes(), images


def _write_cifar_dir(directory, n_per_file=3, seed=0, meta=True):
    rng = np.random.default_rng(seed)
    train_x, train_y = [], []
    for i in range(1, 6):
        labels = rng.integers(0, 10, size=n_per_file)
        data, images = _cifar_records(labels, rng)
        (directory / f"data_batch_{i}.bin").write_bytes(data)
        train_x.append(images)
        train_y.append(labels)
    labels = rng.integers(0, 10, size=n_per_file)
    data, val_x = _cifar_records(labels, rng)
    (directory / "test_batch.bin").write_bytes(data)
    if meta:
        names = [f"name{k}" for k in range(10)]
        (directory / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return np.concatenate(train_x), np.concatenate(train_y), val_x, labels


def test_cifar_record_layout_exact(tmp_path):
    # One record written byte by byte: label, then the R, G and B planes.
    red = np.full((32, 32), 10, np.uint8)
    red[0, 1] = 200  # row 0, column 1 of the red plane
    green = np.full((32, 32), 20, np.uint8)
    green[31, 0] = 201
    blue = np.full((32, 32), 30, np.uint8)
    blue[5, 7] = 202
    record = bytes([7]) + red.tobytes() + green.tobytes() + blue.tobytes()
    assert len(record) == CIFAR10_RECORD_BYTES
    path = tmp_path / "one.bin"
    path.write_bytes(record + record[:1] + bytes(3072))  # two records
    images, labels = read_cifar10_batch(str(path))
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [7, 7])
    np.testing.assert_array_equal(images[0, 0], red)
    np.testing.assert_array_equal(images[0, 1], green)
    np.testing.assert_array_equal(images[0, 2], blue)
    assert images[0, 0, 0, 1] == 200 and images[0, 1, 31, 0] == 201
    assert images[0, 2, 5, 7] == 202
    assert not images[1].any()


def test_cifar_load_dataset(tmp_path):
    train_x, train_y, val_x, val_y = _write_cifar_dir(tmp_path)
    d = load_dataset(f"cifar10:{tmp_path}", image_size=32)
    assert d.name == "cifar10" and d.num_classes == 10
    assert d.class_names == [f"name{k}" for k in range(10)]
    assert d.train_images.shape == (15, 3, 32, 32)
    assert d.val_images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(d.train_labels, train_y)
    np.testing.assert_array_equal(d.val_labels, val_y)
    expected_mean = (train_x / 255.0).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(d.mean, expected_mean, rtol=1e-5)
    np.testing.assert_allclose(
        d.train_images + d.mean[None, :, None, None], train_x / 255.0,
        atol=1e-6)
    np.testing.assert_allclose(
        d.val_images + d.mean[None, :, None, None], val_x / 255.0, atol=1e-6)


def test_cifar_resize_grey_and_default_names(tmp_path):
    _write_cifar_dir(tmp_path, meta=False)
    d = load_dataset(f"cifar10:{tmp_path}", image_size=20, channels=1)
    assert d.train_images.shape == (15, 1, 20, 20)
    assert d.class_names[0] == "airplane" and d.class_names[9] == "truck"


def test_cifar_truncated_file_names_file_and_record(tmp_path):
    _write_cifar_dir(tmp_path, n_per_file=3)
    bad = tmp_path / "data_batch_2.bin"
    bad.write_bytes(bad.read_bytes()[:-1])  # last record loses a byte
    with pytest.raises(DataError) as err:
        load_dataset(f"cifar10:{tmp_path}", image_size=32)
    msg = str(err.value)
    assert str(bad) in msg and "truncated record 2" in msg
    assert f"{3 * 3073 - 1} bytes" in msg and "3073" in msg
    assert isinstance(err.value, ValueError)


def test_cifar_bad_label_names_file_and_record(tmp_path):
    _write_cifar_dir(tmp_path, n_per_file=4)
    bad = tmp_path / "test_batch.bin"
    data = bytearray(bad.read_bytes())
    data[2 * 3073] = 12  # label byte of record 2
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"test_batch\.bin: record 2 has label 12"):
        load_dataset(f"cifar10:{tmp_path}", image_size=32)


def test_cifar_missing_and_empty_files(tmp_path):
    _write_cifar_dir(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match="data_batch_4.bin"):
        load_dataset(f"cifar10:{tmp_path}", image_size=32)
    (tmp_path / "data_batch_4.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"data_batch_4\.bin: file is empty"):
        load_dataset(f"cifar10:{tmp_path}", image_size=32)


# --------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------


def _write_png_folder(root, per_class=4, classes=("cat", "dog", "emu"),
                      size=(14, 10)):
    """Tiny PNGs whose colour identifies the class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((size[1], size[0], 3), 40 + 80 * k, np.uint8)
            pixels += rng.integers(0, 10, size=pixels.shape, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i}.png")
    (root / classes[0] / "notes.txt").write_text("not an image")


def test_folder_seeded_split(tmp_path):
    _write_png_folder(tmp_path)
    d = load_dataset(f"folder:{tmp_path}", image_size=8, seed=0,
                     val_fraction=0.25)
    assert d.class_names == ["cat", "dog", "emu"] and d.num_classes == 3
    assert len(d.train_images) == 9 and len(d.val_images) == 3
    # Training images stay at resize_to = round(8 * 256 / 227) = 9 for crops;
    # validation images are centre crops at the network size.
    assert d.train_images.shape[1:] == (3, 9, 9)
    assert d.val_images.shape[1:] == (3, 8, 8)
    assert isinstance(d.augment, RandomCropFlip) and d.input_shape == (3, 8, 8)
    np.testing.assert_allclose(d.train_images.mean(axis=(0, 2, 3)), 0,
                               atol=1e-5)
    # The class colour survives loading.
    raw = d.val_images + d.mean[None, :, None, None]
    for img, label in zip(raw, d.val_labels):
        assert abs(img.mean() - (40 + 80 * label + 4.5) / 255) < 0.03

    batches = list(d.train_batches(4, np.random.default_rng(3)))
    assert [b[0].shape for b in batches] == [(4, 3, 8, 8)] * 2 + [(1, 3, 8, 8)]
    again = list(d.train_batches(4, np.random.default_rng(3)))
    for (x1, y1), (x2, y2) in zip(batches, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    val = list(d.val_batches(2))
    assert sum(len(b[1]) for b in val) == 3

    other = load_dataset(f"folder:{tmp_path}", image_size=8, seed=1,
                         val_fraction=0.25)
    assert not np.array_equal(other.val_images, d.val_images)


def test_folder_train_val_subfolders_and_resize_to(tmp_path):
    _write_png_folder(tmp_path / "train", per_class=2, size=(20, 30))
    _write_png_folder(tmp_path / "val", per_class=1, classes=("dog",))
    d = load_dataset(f"folder:{tmp_path}", image_size=12, channels=1,
                     resize_to=16)
    assert d.class_names == ["cat", "dog", "emu"]
    assert d.train_images.shape == (6, 1, 16, 16)
    assert d.val_images.shape == (1, 1, 12, 12)
    np.testing.assert_array_equal(d.val_labels, [1])


def test_folder_corrupt_image_names_file(tmp_path):
    _write_png_folder(tmp_path)
    bad = tmp_path / "dog" / "broken.png"
    good = (tmp_path / "dog" / "img0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    with pytest.raises(DataError, match=r"broken\.png"):
        load_dataset(f"folder:{tmp_path}", image_size=8)
    bad.write_bytes(b"definitely not a PNG")
    with pytest.raises(DataError, match=r"folder: .*broken\.png: cannot read"):
        load_dataset(f"folder:{tmp_path}", image_size=8)


def test_folder_without_images(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path}", image_size=8)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no .* images"):
        load_dataset(f"folder:{tmp_path}", image_size=8)


# --------------------------------------------------------------------------
# user mistakes and odd files: each a DataError naming what is wrong
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("synthetic:abc", r"synthetic:K needs a whole number of classes K >= 2, got 'abc'"),
    ("synthetic:1", r"K >= 2, got '1'"),
    ("cifar10", r"'cifar10' names no folder: give cifar10:DIR"),
    ("folder:", r"names no folder: give folder:DIR"),
    ("imagenet:/data", r"unknown data set spec 'imagenet:/data'; expected 'digits'"),
    ("digits:3", r"unknown data set spec"),
])
def test_bad_specs_are_data_errors_before_any_reading(spec, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec, 8)


def test_digits_without_scikit_learn_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if absent
    with pytest.raises(DataError, match=r"scikit-learn.*pip install '\.\[data\]'"):
        load_dataset("digits", 8)


def test_huge_cifar_batch_is_refused_by_its_size_before_reading(tmp_path, monkeypatch):
    _write_cifar_dir(tmp_path)
    huge = tmp_path / "data_batch_2.bin"
    with open(huge, "wb") as f:  # 60 GB, sparse: no disk used
        f.truncate(60 * 10 ** 9)

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(np, "fromfile", no_reading)
    with pytest.raises(DataError, match=r"data_batch_2\.bin: file is 60,000,000,000 bytes; a CIFAR-10 batch"):
        load_dataset(f"cifar10:{tmp_path}", image_size=32)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    levels = {"dark": 8000, "light": 50000}  # of 65535: 12% and 76% grey
    for name, level in levels.items():
        os.makedirs(tmp_path / name)
        for i in range(3):
            pixels = np.full((10, 10), level, np.uint16)
            Image.fromarray(pixels).save(tmp_path / name / f"img{i}.png")
        with Image.open(tmp_path / name / "img0.png") as im:
            assert im.mode.startswith("I")  # really a 16-bit image
    for channels in (1, 3):
        d = load_dataset(f"folder:{tmp_path}", image_size=8, channels=channels, val_fraction=0.34)
        for images, labels in ((d.train_images, d.train_labels), (d.val_images, d.val_labels)):
            raw = images + d.mean[None, :, None, None]
            assert raw.shape[1] == channels and len(labels)
            for k, name in enumerate(d.class_names):
                np.testing.assert_allclose(raw[labels == k], levels[name] / 65535, atol=1e-4)


@pytest.mark.parametrize("where", ["image", "class folder"])
def test_symlink_loops_are_reported(tmp_path, where):
    _write_png_folder(tmp_path)
    if where == "image":
        os.symlink(tmp_path / "dog" / "b.png", tmp_path / "dog" / "a.png")
        os.symlink(tmp_path / "dog" / "a.png", tmp_path / "dog" / "b.png")
        bad = "a.png"
    else:
        os.symlink(tmp_path / "loop", tmp_path / "loop")
        bad = "loop"
    with pytest.raises(DataError, match=f"{bad}: a loop of symbolic links"):
        load_dataset(f"folder:{tmp_path}", image_size=8)
