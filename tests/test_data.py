"""Datasets: IDX files, the search order, splits, normalization, user factories."""
from __future__ import annotations

import gzip
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from modelzip.errors import InputError
from modelzip.recipe import DataSpec, Normalize
from modelzip.sources import data, locations
from modelzip.sources.data import InMemoryDataset, dataset_search_paths, load_data, read_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_system_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist")


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """An IDX file: 00 00, type code 08 (uint8), ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_fake_mnist(directory: Path, *, train: int = 40, test: int = 20, side: int = 8) -> Path:
    """Four MNIST-format files whose pixel values encode the image index (for split checks)."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = np.repeat(np.arange(count, dtype=np.uint8)[:, None, None], side * side, axis=1)
        images = images.reshape(count, side, side)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return directory


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    """Point the system and download directories at empty folders, and unset MODELZIP_DATA."""
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setattr(locations, "DOWNLOAD_DIR", tmp_path / "cache")
    monkeypatch.delenv(data.DATA_ENV, raising=False)


def image_ids(dataset: InMemoryDataset) -> list[int]:
    """The index encoded in each fake image (pixel value 0..count-1), before normalization."""
    mean, std = data.DEFAULT_NORMALIZE["fashion-mnist"]
    pixels = dataset.images[dataset.rows, 0, 0, 0] * std[0] + mean[0]
    return (pixels * 255).round().long().tolist()


# --------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, compress=compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(InputError) as excinfo:
        read_idx(path)
    assert excinfo.value.where == str(path)
    assert "12340801" in excinfo.value.got
    assert excinfo.value.fix


def test_read_idx_rejects_truncated_data(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 2, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputError, match="not a valid IDX") as excinfo:
        read_idx(path)
    assert "32 bytes for shape (4, 2, 2)" in excinfo.value.expected  # 16 header + 16 pixels


def test_read_idx_rejects_damaged_gzip(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((4, 2, 2), np.uint8), compress=True)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InputError) as excinfo:
        read_idx(path)
    assert "gzip" in excinfo.value.got


# --------------------------------------------------------------------------- where files are


def test_search_order_uses_env_then_system_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELZIP_DATA", str(tmp_path / "env"))
    paths = dataset_search_paths("fashion-mnist", None, tmp_path)
    assert paths == [tmp_path / "env" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"),
                     Path("~/.cache/modelzip/data/fashion-mnist").expanduser()]


def test_explicit_root_is_the_only_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELZIP_DATA", str(tmp_path / "env"))
    assert dataset_search_paths("mnist", "data/mnist", tmp_path) == [tmp_path / "data" / "mnist"]
    assert dataset_search_paths("mnist", "/abs/mnist", tmp_path) == [Path("/abs/mnist")]


def test_files_found_through_modelzip_data(tmp_path, monkeypatch, no_system_data):
    write_fake_mnist(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("MODELZIP_DATA", str(tmp_path / "env"))
    bundle = load_data(DataSpec(dataset="fashion-mnist", val_samples=10), base_dir=tmp_path, seed=0)
    assert (len(bundle.train), len(bundle.validation), len(bundle.eval)) == (30, 10, 20)
    assert bundle.sample_shape == (1, 8, 8)
    assert bundle.num_classes == 10


def test_torchvision_layout_under_root(tmp_path, no_system_data):
    write_fake_mnist(tmp_path / "downloads" / "MNIST" / "raw")
    spec = DataSpec(dataset="mnist", root="downloads", val_samples=0)
    bundle = load_data(spec, base_dir=tmp_path, seed=0)
    assert len(bundle.train) == 40 and len(bundle.validation) == 0


def test_missing_dataset_lists_every_path_searched(tmp_path, monkeypatch, no_system_data):
    monkeypatch.setenv("MODELZIP_DATA", str(tmp_path / "env"))
    with pytest.raises(InputError) as excinfo:
        load_data(DataSpec(dataset="fashion-mnist"), base_dir=tmp_path, seed=0)
    error = excinfo.value
    for path in dataset_search_paths("fashion-mnist", None, tmp_path):
        assert str(path) in error.got
    assert "apt-get install dataset-fashion-mnist" in error.fix
    assert "data.download: true" in error.fix
    assert error.where == "data.dataset"


def test_corrupt_file_in_dataset_is_an_input_error(tmp_path, no_system_data):
    directory = write_fake_mnist(tmp_path / "fm")
    (directory / "t10k-labels-idx1-ubyte").write_bytes(b"garbage!")
    with pytest.raises(InputError) as excinfo:
        load_data(DataSpec(dataset="fashion-mnist", root=str(directory)), base_dir=tmp_path, seed=0)
    assert excinfo.value.where == str(directory / "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- splits


@pytest.fixture
def fake_fashion(tmp_path, no_system_data) -> DataSpec:
    write_fake_mnist(tmp_path / "fm", train=40, test=20)
    return DataSpec(dataset="fashion-mnist", root=str(tmp_path / "fm"), val_samples=10, batch_size=8)


def test_validation_is_disjoint_from_train_and_seeded(fake_fashion, tmp_path):
    first = load_data(fake_fashion, base_dir=tmp_path, seed=0)
    again = load_data(fake_fashion, base_dir=tmp_path, seed=0)
    other = load_data(fake_fashion, base_dir=tmp_path, seed=1)
    train, validation = image_ids(first.train), image_ids(first.validation)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == list(range(40))
    assert image_ids(again.validation) == validation
    assert image_ids(other.validation) != validation


def test_validation_is_at_most_half_of_train(fake_fashion, tmp_path):
    spec = fake_fashion.model_copy(update={"val_samples": 1000})
    bundle = load_data(spec, base_dir=tmp_path, seed=0)
    assert len(bundle.validation) == 20 and len(bundle.train) == 20


def test_limits_take_the_first_images_before_the_split(fake_fashion, tmp_path):
    spec = fake_fashion.model_copy(update={"limit_train": 12, "limit_eval": 5, "val_samples": 4})
    bundle = load_data(spec, base_dir=tmp_path, seed=0)
    assert sorted(image_ids(bundle.train) + image_ids(bundle.validation)) == list(range(12))
    assert image_ids(bundle.eval) == list(range(5))


def test_calibration_is_seeded_and_capped(fake_fashion, tmp_path):
    bundle = load_data(fake_fashion, base_dir=tmp_path, seed=0)
    ten = image_ids(bundle.calibration(10))
    assert ten == image_ids(bundle.calibration(10)) and len(set(ten)) == 10
    assert ten != image_ids(bundle.calibration(10, seed=5))
    assert ten != image_ids(bundle.validation)  # its own random stream
    assert len(bundle.calibration(1000)) == 40  # the whole (capped) training split


def test_shuffled_batches_are_seeded_and_cover_the_split(fake_fashion, tmp_path):
    bundle = load_data(fake_fashion, base_dir=tmp_path, seed=0)

    def labels(**kwargs):
        return torch.cat([y for _, y in bundle.batches("train", **kwargs)]).tolist()

    assert labels(shuffle=True, seed=3) == labels(shuffle=True, seed=3)
    assert labels(shuffle=True, seed=3) != labels(shuffle=True, seed=4)
    assert sorted(labels(shuffle=True)) == sorted(labels())
    assert [len(y) for _, y in bundle.batches("eval", 8)] == [8, 8, 4]
    with pytest.raises(ValueError):
        bundle.batches("test")


# --------------------------------------------------------------------------- normalization


def test_default_normalization(fake_fashion, tmp_path):
    bundle = load_data(fake_fashion, base_dir=tmp_path, seed=0)
    image, _ = bundle.eval[3]
    assert image.dtype == torch.float32
    assert image[0, 0, 0].item() == pytest.approx((3 / 255 - 0.2860) / 0.3530, abs=1e-6)


def test_normalization_override_and_channel_check(fake_fashion, tmp_path):
    spec = fake_fashion.model_copy(update={"normalize": Normalize(mean=(0.0,), std=(1.0,))})
    image, _ = load_data(spec, base_dir=tmp_path, seed=0).eval[3]
    assert image[0, 0, 0].item() == pytest.approx(3 / 255)
    wrong = fake_fashion.model_copy(update={"normalize": Normalize(mean=(0.5, 0.5, 0.5), std=(1, 1, 1))})
    with pytest.raises(InputError) as excinfo:
        load_data(wrong, base_dir=tmp_path, seed=0)
    assert excinfo.value.where == "data.normalize" and "1 value" in excinfo.value.expected


# --------------------------------------------------------------------------- <module>:<callable>


FACTORY_MODULE = '''
import torch
from torch.utils.data import Dataset, TensorDataset

def tensors(n=12):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    y = torch.arange(n) % 3
    return TensorDataset(x, y), TensorDataset(x[:6], y[:6])

class Pairs(Dataset):
    classes = ["a", "b"]
    def __len__(self):
        return 5
    def __getitem__(self, i):
        return torch.full((2, 3, 3), float(i)), i % 2

def as_dict():
    return {"train": Pairs(), "eval": Pairs()}

def not_splits():
    return [1, 2, 3]

def float_labels():
    return TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4)), Pairs()

def raises():
    raise FileNotFoundError("/data/train.csv")

def exits():
    raise SystemExit("usage: prepare.py DIR")

class Broken(Pairs):
    def __getitem__(self, i):
        raise ValueError("corrupt image 0")

def broken_items():
    return Pairs(), Broken()
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    """A module beside the 'recipe' (tmp_path), with a name unique to this test."""
    name = f"user_data_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY_MODULE))
    monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    return name


def test_callable_tensor_datasets_are_held_in_memory(factory_module, tmp_path):
    spec = DataSpec(dataset=f"{factory_module}:tensors", args={"n": 20}, val_samples=4)
    bundle = load_data(spec, base_dir=tmp_path, seed=0)
    assert isinstance(bundle.train, InMemoryDataset)
    assert (len(bundle.train), len(bundle.validation), len(bundle.eval)) == (16, 4, 6)
    assert bundle.sample_shape == (1, 4, 4) and bundle.num_classes == 3


def test_callable_generic_dataset_from_a_dict(factory_module, tmp_path):
    spec = DataSpec(dataset=f"{factory_module}:as_dict", val_samples=1, batch_size=2)
    bundle = load_data(spec, base_dir=tmp_path, seed=0)
    images, labels = next(bundle.batches("eval"))
    assert images.shape == (2, 2, 3, 3) and labels.tolist() == [0, 1]
    assert bundle.num_classes == 2 and len(bundle.train) == 4


@pytest.mark.parametrize(("factory", "args", "where", "fragment"), [
    ("not_splits", {}, "data.dataset", "a list of length 3"),
    ("float_labels", {}, "data.dataset", "(Tensor, Tensor)"),
    ("tensors", {"size": 3}, "data.args", "size"),
    ("missing", {}, "data.dataset", None),
    ("raises", {}, "data.dataset", "FileNotFoundError: /data/train.csv"),  # any exception, not a bug of ours
    ("exits", {}, "data.dataset", "sys.exit('usage: prepare.py DIR')"),
    ("broken_items", {}, "data.dataset", "ValueError: corrupt image 0"),
])
def test_callable_mistakes_are_input_errors(factory_module, tmp_path, factory, args, where, fragment):
    spec = DataSpec(dataset=f"{factory_module}:{factory}", args=args)
    with pytest.raises(InputError) as excinfo:
        load_data(spec, base_dir=tmp_path, seed=0)
    assert excinfo.value.where == where and excinfo.value.exit_code == 2
    if fragment:
        assert fragment in str(excinfo.value)


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for index, cls in enumerate(("cat", "dog")):
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (12, 10), (index * 200, k * 50, 0)).save(tmp_path / split / cls / f"{k}.png")
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), image_size=8, val_samples=1, limit_eval=2)
    bundle = load_data(spec, base_dir=tmp_path, seed=0)
    assert bundle.sample_shape == (3, 8, 8) and bundle.num_classes == 2
    # limit_eval spreads over the class-ordered folder instead of taking one class.
    assert torch.cat([y for _, y in bundle.batches("eval")]).tolist() == [0, 1]


def test_imagefolder_needs_train_and_val(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError) as excinfo:
        load_data(DataSpec(dataset="imagefolder", root=str(tmp_path)), base_dir=tmp_path, seed=0)
    assert excinfo.value.where == "data.root" and str(tmp_path) in excinfo.value.got


# --------------------------------------------------------------------------- real Fashion-MNIST


@needs_system_fashion
def test_real_fashion_mnist_subset(monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    spec = DataSpec(dataset="fashion-mnist", limit_train=2000, limit_eval=500, val_samples=200)
    bundle = load_data(spec, base_dir=Path.cwd(), seed=0)
    assert (len(bundle.train), len(bundle.validation), len(bundle.eval)) == (1800, 200, 500)
    assert bundle.sample_shape == (1, 28, 28) and bundle.num_classes == 10
    images = bundle.calibration_pool.images[:2000]
    # Normalized with the full training set's statistics, so a 2000-image subset is close to (0, 1).
    assert abs(images.mean().item()) < 0.05 and abs(images.std().item() - 1) < 0.05
    assert set(bundle.eval.labels[bundle.eval.rows].tolist()) == set(range(10))
