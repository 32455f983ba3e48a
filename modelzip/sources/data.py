"""Datasets for a run: the built-ins held in memory as tensors, or a user's factory.

A built-in dataset's files are looked for, in this order (``dataset_search_paths``):

1. ``data.root``, resolved against the recipe's directory; when it is set,
   nothing else is searched, so a typo is an error rather than a silent
   fall-back to another copy;
2. ``$MODELZIP_DATA/<name>``;
3. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` package);
4. ``~/.cache/modelzip/data/<name>`` (where ``download: true`` puts the files
   when neither ``data.root`` nor ``$MODELZIP_DATA`` is set).

Splits: ``train`` (fine-tuning) and ``validation`` (early stopping) are disjoint
parts of the training files; ``eval`` is the held-out test split and the only
one behind a reported accuracy.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from modelzip.errors import InputError
from modelzip.recipe import DataSpec
from modelzip.sources.idx import corrupt_idx, read_idx
from modelzip.sources.locations import (  # noqa: F401 - re-exported: where the dataset files are
    APT_PACKAGES,
    DATA_ENV,
    DOWNLOAD_DIR,
    FILES_FROM,
    IDX_FILES,
    SYSTEM_DATA_DIR,
    TORCHVISION_FOLDERS,
    dataset_not_found,
    dataset_search_paths,
    download_dir,
    find_idx_dir,
    find_idx_file,
)
from modelzip.sources.user_code import check_arguments, import_callable, user_code
from modelzip.tasks import named_targets

SPLITS = ("train", "validation", "eval")

IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DEFAULT_IMAGE_SIZE = 224  # imagefolder: the usual ImageNet input side
# Per-channel mean/std of each training set, on the [0, 1] pixel scale.
DEFAULT_NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": IMAGENET_NORMALIZE,
    # Of the training canvases at seed 0 (the max of two items is brighter than one item).
    "multi-fashion": ((0.3044,), (0.3640,)),
}

# Seeds are mixed with a per-purpose stream number, so that e.g. a calibration
# subset is not the validation subset whenever their sizes happen to match.
_STREAMS = {"shuffle": 0, "validation": 1, "calibration": 2}


# --------------------------------------------------------------------------- datasets


class InMemoryDataset(Dataset):
    """Whole-split tensors; a subset shares them and keeps only row indices.

    Batches are gathered by indexing the tensors, which is far faster than a
    per-sample DataLoader on a small CPU machine.
    """

    def __init__(self, images: Tensor, labels: Tensor, rows: Tensor | None = None,
                 tasks: tuple[str, ...] | None = None) -> None:
        self.images = images  # float32, N x C x H x W, normalized
        self.labels = labels  # int64, N; with ``tasks``: N x tasks, one column per task
        self.rows = torch.arange(len(labels)) if rows is None else rows
        self.tasks = tasks  # a multi-task dataset's task names: items' targets are {task: int}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        row = int(self.rows[index])
        if self.tasks is not None:
            return self.images[row], {t: int(v) for t, v in zip(self.tasks, self.labels[row])}
        return self.images[row], int(self.labels[row])

    def subset(self, positions: Tensor) -> InMemoryDataset:
        return InMemoryDataset(self.images, self.labels, self.rows[positions], self.tasks)

    def batch(self, positions: Tensor) -> tuple[Tensor, Any]:
        # Gathered by numpy: torch's indexing runs on its intra-op thread pool, and on a busy
        # 2-core machine a 256-image gather took ~17 ms that way against 0.03 ms in numpy (measured).
        # The batches stay numpy's arrays (16-byte aligned, where torch allocates at 64): training
        # the zoo CNN ran 1.5x faster on them here (2,550 -> 3,900 samples/s, alternating runs),
        # and a copy into torch's memory gave the old speed back. Float results differ in the last bits.
        rows = self.rows[positions].numpy()
        images, labels = torch.from_numpy(self.images.numpy()[rows]), torch.from_numpy(self.labels.numpy()[rows])
        if self.tasks is not None:
            return images, {t: labels[:, i] for i, t in enumerate(self.tasks)}
        return images, labels


def subset(dataset: Dataset, positions: Tensor) -> Dataset:
    """The items of ``dataset`` at ``positions``, staying in memory when it is."""
    if isinstance(dataset, InMemoryDataset):
        return dataset.subset(positions)
    return Subset(dataset, positions.tolist())


def _generator(seed: int, purpose: str) -> torch.Generator:
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, _STREAMS[purpose]]  # SeedSequence wants non-negative ints
    mixed = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


@dataclass
class DataBundle:
    """The splits of one run plus what a pass needs to know about their samples."""

    train: Dataset  # training split minus the validation subset; for fine-tuning
    validation: Dataset  # seeded subset of the training split (may be empty); for early stopping
    eval: Dataset  # held-out split; the only one behind a reported accuracy
    sample_shape: tuple[int, ...]  # one image, (C, H, W)
    num_classes: int | None
    batch_size: int
    seed: int
    calibration_pool: Dataset | None = None  # capped training split before the carve; None: ``train``
    tasks: tuple[str, ...] | None = None  # model.tasks: batches' targets are {task: labels}, in this order

    def batches(
        self, split: str, batch_size: int | None = None, *, shuffle: bool = False, seed: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) batches of ``"train"``, ``"validation"`` or ``"eval"``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.loader(getattr(self, split), batch_size, shuffle=shuffle, seed=seed)

    def calibration(self, samples: int, *, seed: int | None = None) -> Dataset:
        """A seeded random subset of the training split, at most ``samples`` items."""
        pool = self.train if self.calibration_pool is None else self.calibration_pool
        generator = _generator(self.seed if seed is None else seed, "calibration")
        order = torch.randperm(len(pool), generator=generator)[: max(samples, 0)]
        return subset(pool, order.sort().values)

    def loader(
        self, dataset: Dataset, batch_size: int | None = None, *, shuffle: bool = False,
        seed: int | None = None, named: bool = True,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) batches of any dataset; the order is seeded when shuffled. With
        ``tasks``, labels are {task: labels} in that order (modelzip.tasks.named_targets) unless
        ``named`` is False (the dataset's own targets, for preflight to check)."""
        batch_size = batch_size or self.batch_size
        if shuffle:
            generator = _generator(self.seed if seed is None else seed, "shuffle")
            order = torch.randperm(len(dataset), generator=generator)
        else:
            order = torch.arange(len(dataset))
        if isinstance(dataset, InMemoryDataset):
            batches = (dataset.batch(order[start:start + batch_size])
                       for start in range(0, len(order), batch_size))
        else:
            from torch.utils.data import DataLoader

            # The precomputed order is the sampler, so both paths shuffle identically.
            batches = iter(DataLoader(dataset, batch_size=batch_size, sampler=order.tolist(), num_workers=0))
        if self.tasks is None or not named:
            return batches
        names = self.tasks
        return ((images, named_targets(labels, names)) for images, labels in batches)


# --------------------------------------------------------------------------- entry point


def load_data(spec: DataSpec, *, base_dir: Path, seed: int, tasks: tuple[str, ...] | None = None) -> DataBundle:
    """Load, cap and split the dataset ``spec`` names (``tasks``: model.tasks, see DataBundle)."""
    if spec.dataset in TORCHVISION_FOLDERS:
        train, eval_, num_classes = _load_idx_dataset(spec, base_dir)
    elif spec.dataset == "cifar10":
        train, eval_, num_classes = _load_cifar10(spec, base_dir)
    elif spec.dataset == "imagefolder":
        train, eval_, num_classes = _load_imagefolder(spec, base_dir)
    elif spec.dataset == "multi-fashion":
        train, eval_, num_classes = _load_multi_fashion(spec, base_dir, seed)
    else:
        train, eval_, num_classes = _load_from_callable(spec, base_dir)
    # ImageFolder lists samples class by class, so "the first N" would be a few classes only.
    spread = spec.dataset == "imagefolder"
    train = _cap(train, spec.limit_train, spread=spread)
    eval_ = _cap(eval_, spec.limit_eval, spread=spread)
    fine_tune, validation = _split_validation(train, spec.val_samples, seed)
    return DataBundle(
        train=fine_tune, validation=validation, eval=eval_,
        sample_shape=tuple(eval_[0][0].shape), num_classes=num_classes,
        batch_size=spec.batch_size, seed=seed, calibration_pool=train, tasks=tasks,
    )


def _cap(dataset: Dataset, limit: int | None, *, spread: bool) -> Dataset:
    """The first ``limit`` items, or ``limit`` evenly spaced ones when ``spread``."""
    if limit is None or limit >= len(dataset):
        return dataset
    positions = torch.arange(limit) * len(dataset) // limit if spread else torch.arange(limit)
    return subset(dataset, positions)


def _split_validation(train: Dataset, val_samples: int, seed: int) -> tuple[Dataset, Dataset]:
    """(fine-tuning part, validation part); validation is at most half of ``train``."""
    count = min(val_samples, len(train) // 2)
    order = torch.randperm(len(train), generator=_generator(seed, "validation"))
    # Sorting keeps the files' order within each part, so unshuffled passes are reproducible.
    return subset(train, order[count:].sort().values), subset(train, order[:count].sort().values)


# --------------------------------------------------------------------------- where files are


def _download_idx(spec: DataSpec, base_dir: Path) -> Path:
    from torchvision import datasets

    root = download_dir(spec.dataset, spec.root, base_dir)
    dataset_class = {"fashion-mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}[spec.dataset]
    try:
        dataset_class(root=str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"downloading {spec.dataset!r} failed", where="data.download",
                         got=f"{type(exc).__name__}: {exc}", expected=f"the files under {root}",
                         fix="check the network, or put the files there yourself") from exc
    return root / TORCHVISION_FOLDERS[spec.dataset] / "raw"


def _idx_directory(spec: DataSpec, base_dir: Path) -> Path:
    """The folder holding the four IDX files of ``spec.dataset`` (downloaded there if allowed)."""
    searched = dataset_search_paths(spec.dataset, spec.root, base_dir)
    directory = find_idx_dir(spec.dataset, searched)
    if directory is None and not spec.download:
        stems = [stem for pair in IDX_FILES.values() for stem in pair]
        raise dataset_not_found(spec.dataset, searched,
                         f"{', '.join(stems)} (each optionally .gz), directly in a searched directory "
                         f"or in its {TORCHVISION_FOLDERS[spec.dataset]}/raw/")
    return directory if directory is not None else _download_idx(spec, base_dir)


def _load_idx_dataset(spec: DataSpec, base_dir: Path) -> tuple[Dataset, Dataset, int]:
    directory = _idx_directory(spec, base_dir)
    mean, std = _normalization(spec, channels=1)
    train = _read_idx_split(directory, *IDX_FILES["train"], mean=mean, std=std)
    eval_ = _read_idx_split(directory, *IDX_FILES["eval"], mean=mean, std=std)
    return train, eval_, 10


def _read_idx_split(directory: Path, images_stem: str, labels_stem: str, *, mean, std) -> InMemoryDataset:
    images, labels = _read_idx_arrays(directory, images_stem, labels_stem)
    return InMemoryDataset(_normalized(images[:, None], mean, std), torch.from_numpy(labels.astype(np.int64)))


def _read_idx_arrays(directory: Path, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) and their labels (N,), checked."""
    images_path = find_idx_file(directory, images_stem)
    labels_path = find_idx_file(directory, labels_stem)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise corrupt_idx(images_path, f"{images.dtype} array of shape {images.shape}",
                           "uint8 images, shape (N, H, W)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise corrupt_idx(labels_path, f"shape {labels.shape}", f"({len(images)},), one label per image")
    return images, labels


def _load_multi_fashion(spec: DataSpec, base_dir: Path, seed: int) -> tuple[Dataset, Dataset, int]:
    """Two-task canvases from the Fashion-MNIST files (modelzip.sources.multi_fashion)."""
    from modelzip.sources import multi_fashion

    directory = _idx_directory(spec.model_copy(update={"dataset": FILES_FROM[spec.dataset]}), base_dir)
    mean, std = _normalization(spec, channels=1)
    splits = []
    for index, split in enumerate(("train", "eval")):
        canvases, labels = multi_fashion.compose(*_read_idx_arrays(directory, *IDX_FILES[split]), seed, index)
        splits.append(InMemoryDataset(*multi_fashion.to_tensors(canvases, labels, mean, std),
                                      tasks=multi_fashion.TASKS))
    return splits[0], splits[1], 10


# --------------------------------------------------------------------------- other built-ins


def _normalization(spec: DataSpec, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if spec.normalize is None:
        return DEFAULT_NORMALIZE[spec.dataset]
    mean, std = spec.normalize.mean, spec.normalize.std
    if len(mean) != channels or len(std) != channels:
        raise InputError(
            "data.normalize needs one mean and one std per image channel", where="data.normalize",
            got=f"mean {list(mean)}, std {list(std)}", expected=f"{channels} value(s) each",
            fix=f"give {channels} value(s), or remove data.normalize for the defaults",
        )
    return mean, std


def _normalized(images: np.ndarray, mean, std) -> Tensor:
    """uint8 N x C x H x W -> float32 ((x / 255) - mean) / std, per channel."""
    x = torch.from_numpy(images).float().div_(255)
    return x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))


def _load_cifar10(spec: DataSpec, base_dir: Path) -> tuple[Dataset, Dataset, int]:
    from torchvision.datasets import CIFAR10

    searched = dataset_search_paths(spec.dataset, spec.root, base_dir)
    # torchvision wants the parent of cifar-10-batches-py; accept either.
    candidates = [p.parent if p.name == "cifar-10-batches-py" else p for p in searched]
    root = next((p for p in candidates if (p / "cifar-10-batches-py").is_dir()), None)
    if root is None and not spec.download:
        raise dataset_not_found(spec.dataset, searched,
                         "cifar-10-batches-py/ (the python version) in a searched directory")
    root = root or download_dir(spec.dataset, spec.root, base_dir)
    mean, std = _normalization(spec, channels=3)
    splits = []
    for is_train in (True, False):
        try:
            data = CIFAR10(str(root), train=is_train, download=spec.download)
        except (OSError, RuntimeError) as exc:
            raise InputError("cannot read CIFAR-10", where=str(root), got=f"{type(exc).__name__}: {exc}",
                             fix="delete the folder and download it again (`data.download: true`)") from exc
        images = np.ascontiguousarray(np.asarray(data.data).transpose(0, 3, 1, 2))  # NHWC -> NCHW
        splits.append(InMemoryDataset(_normalized(images, mean, std), torch.tensor(data.targets)))
    return splits[0], splits[1], 10


def _load_imagefolder(spec: DataSpec, base_dir: Path) -> tuple[Dataset, Dataset, int]:
    from torchvision import datasets, transforms

    searched = dataset_search_paths(spec.dataset, spec.root, base_dir)
    root = next((p for p in searched if (p / "train").is_dir() and (p / "val").is_dir()), None)
    if root is None:
        raise InputError("imagefolder needs train/ and val/ subfolders", where="data.root",
                         got="searched " + ", ".join(map(str, searched)),
                         expected="<root>/train/<class>/<image> and <root>/val/<class>/<image>",
                         fix="set `data.root` to the folder holding train/ and val/")
    mean, std = _normalization(spec, channels=3)
    size = spec.image_size or DEFAULT_IMAGE_SIZE
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=transform)
        eval_ = datasets.ImageFolder(str(root / "val"), transform=transform)
    except (OSError, RuntimeError) as exc:
        raise InputError("cannot read the image folders", where=str(root), got=str(exc),
                         expected="one subfolder of images per class in train/ and in val/") from exc
    if train.classes != eval_.classes:
        # Labels are class-folder indices, so differing folders would mislabel val images.
        raise InputError("train/ and val/ hold different class folders", where=str(root),
                         got=f"train {train.classes[:10]}, val {eval_.classes[:10]}",
                         expected="the same class folder names in both", fix="add or remove class folders")
    return train, eval_, len(train.classes)


# --------------------------------------------------------------------------- <module>:<callable>


def _load_from_callable(spec: DataSpec, base_dir: Path) -> tuple[Dataset, Dataset, int | None]:
    factory = import_callable(spec.dataset, base_dir, what="dataset", where="data.dataset")
    check_arguments(factory, spec.args, what="dataset", where="data.args")
    fix = "fix the dataset code; `modelzip --debug run ...` shows the traceback"
    with user_code(f"the dataset factory {spec.dataset!r}", where="data.dataset", fix=fix):
        returned = factory(**spec.args)
    train, eval_ = _unpack_splits(returned, spec.dataset)
    for split, dataset in (("train", train), ("eval", eval_)):
        with user_code(f"reading the first item of the {split} split of {spec.dataset!r}",
                       where="data.dataset", fix=fix):
            _check_dataset(dataset, split, spec.dataset)
    train, eval_ = _in_memory_if_tensors(train), _in_memory_if_tensors(eval_)
    return train, eval_, _count_classes(train)


def _unpack_splits(returned: Any, ref: str) -> tuple[Any, Any]:
    if isinstance(returned, dict) and {"train", "eval"} <= returned.keys():
        return returned["train"], returned["eval"]
    if isinstance(returned, (tuple, list)) and len(returned) == 2:
        return returned[0], returned[1]
    if isinstance(returned, dict):
        got = f"a dict with keys {sorted(map(str, returned))}"
    elif isinstance(returned, (tuple, list)):
        got = f"a {type(returned).__name__} of length {len(returned)}"
    else:
        got = f"a {type(returned).__name__}"
    raise InputError(f"dataset factory {ref!r} returned something other than two splits",
                     where="data.dataset", got=got,
                     expected="(train_dataset, eval_dataset) or {'train': ..., 'eval': ...}",
                     fix="return the training and the evaluation torch Datasets")


def _check_dataset(dataset: Any, split: str, ref: str) -> None:
    """Each split is a non-empty Dataset whose items are (image tensor, integer label)."""
    problem = None
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        problem = f"a {type(dataset).__name__}, which has no __len__/__getitem__"
    elif len(dataset) == 0:
        problem = "an empty dataset"
    else:
        item = dataset[0]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            problem = f"items of type {type(item).__name__}"
        elif not isinstance(item[0], Tensor) or not _is_target(item[1]):
            problem = f"items ({type(item[0]).__name__}, {type(item[1]).__name__})"
    if problem:
        raise InputError(f"the {split} split from dataset factory {ref!r} does not fit", where="data.dataset",
                         got=problem, expected="a torch Dataset of (image_tensor, int_label) items (or "
                                               "(image_tensor, {task: int_label}) for a multi-task model)",
                         fix="return image tensors (e.g. via transforms.ToTensor()) and integer labels")


def _is_target(target: Any) -> bool:
    """An integer label, or a multi-task model's {task name: integer label}."""
    if isinstance(target, dict):
        return bool(target) and all(isinstance(k, str) and _is_integer_label(v) for k, v in target.items())
    return _is_integer_label(target)


def _is_integer_label(label: Any) -> bool:
    if isinstance(label, Tensor):
        return label.numel() == 1 and not label.is_floating_point() and not label.is_complex()
    return isinstance(label, (int, np.integer)) and not isinstance(label, bool)


def _in_memory_if_tensors(dataset: Dataset) -> Dataset:
    """A two-tensor TensorDataset becomes an InMemoryDataset, for tensor-sliced batches."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        images, labels = dataset.tensors
        return InMemoryDataset(images.float(), labels.long())
    return dataset


def _count_classes(dataset: Dataset) -> int | None:
    if isinstance(getattr(dataset, "classes", None), (list, tuple)):
        return len(dataset.classes)
    if isinstance(getattr(dataset, "num_classes", None), int):
        return dataset.num_classes
    if isinstance(dataset, InMemoryDataset) and dataset.tasks is None:
        return int(dataset.labels.max()) + 1
    return None  # unknown without reading every label
