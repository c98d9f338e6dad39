"""Fashion-MNIST: read (IDX files or the Keras loader), validate, prepare, split.

Preparation follows the homework: pixels scaled to [0, 1] as float32, images reshaped to the
model's input shape (784 for the MLP, 28x28x1 for LeNet), labels one-hot encoded, and the
development set split 8:2 into train/validation, stratified and seeded. The options of conf/prep
(scale, standardize, augment) are factories here: each makes a Preparation, what it adds.

TensorFlow is imported only by `load_keras`, the online default source.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from omegaconf import OmegaConf

from hw4 import config
from hw4.errors import ConfigError, DataError
from hw4.training.batches import Augment

IDX_FILES = {
    "x_dev": "train-images-idx3-ubyte.gz",
    "y_dev": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# IDX magic numbers: 0x00000801 = unsigned bytes, 1 dimension; 0x00000803 = 3 dimensions.
IDX_LABELS_MAGIC, IDX_IMAGES_MAGIC = 2049, 2051
IMAGE_SHAPE = (28, 28)


@dataclass
class RawData:
    """uint8 images (N, 28, 28) and integer labels (N,), as published."""

    x_dev: np.ndarray
    y_dev: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Splits:
    """Model-ready arrays: float32 images (in [0, 1], or standardized), one-hot float32 targets,
    and what the preparation did (`preparation`: its name and, standardized, the statistics)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preparation: dict[str, Any] = field(default_factory=lambda: {"name": "scale"}, compare=False)

    @property
    def arrays(self) -> list[np.ndarray]:
        return [self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test]

    @property
    def test_labels(self) -> np.ndarray:
        return self.y_test.argmax(axis=1)

    def describe(self) -> dict[str, tuple[int, ...]]:
        return {name: getattr(self, name).shape for name in self.__dataclass_fields__ if name != "preparation"}


def digest(raw: RawData) -> str:
    """A short content hash of the four arrays: the same data gives the same digest, wherever it
    was read from."""
    hasher = hashlib.sha256()
    for name in IDX_FILES:
        hasher.update(np.ascontiguousarray(getattr(raw, name)).data)
    return hasher.hexdigest()[:16]


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzip-compressed IDX file of unsigned bytes, checking header and length."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a complete gzip file ({exc})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(f"{path}: wrong IDX magic number {found}, expected {magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or padded IDX data: header says {dims} = {expected} bytes, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_dir(folder: str | Path, n_classes: int = 10) -> RawData:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found (data.dir / HW4_DATA_DIR)")
    arrays = {
        key: read_idx(folder / name, IDX_IMAGES_MAGIC if key.startswith("x") else IDX_LABELS_MAGIC)
        for key, name in IDX_FILES.items()
    }
    raw = RawData(**arrays)
    validate(raw, {key: folder / name for key, name in IDX_FILES.items()}, n_classes)
    return raw


def load_keras(n_classes: int = 10) -> RawData:
    """keras.datasets' copy: its cache ($KERAS_HOME/datasets/fashion-mnist) or a download."""
    from hw4.runtime import quiet

    quiet.load_keras()
    import keras

    try:
        (x_dev, y_dev), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # the loader raises plain Exceptions on network failures
        raise DataError(
            f"keras.datasets.fashion_mnist could not load ({exc}); offline, set data.dir or "
            "HW4_DATA_DIR to a folder with the four IDX files"
        ) from None
    raw = RawData(x_dev, y_dev, x_test, y_test)
    validate(raw, {key: f"keras fashion_mnist {key}" for key in IDX_FILES}, n_classes)
    return raw


def load(data_dir: Optional[str | Path], n_classes: int) -> RawData:
    """From the IDX files in `data_dir`, or from keras.datasets when it is None."""
    return load_idx_dir(data_dir, n_classes) if data_dir else load_keras(n_classes)


def validate(raw: RawData, sources: dict, n_classes: int) -> None:
    """Shapes, counts and label range that every later step relies on."""
    for images, labels in (("x_dev", "y_dev"), ("x_test", "y_test")):
        x, y = getattr(raw, images), getattr(raw, labels)
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{sources[images]}: images must be 28x28, found shape {x.shape}")
        if len(x) != len(y):
            raise DataError(f"{sources[images]} has {len(x)} images but {sources[labels]} has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{sources[images]}: holds no images")
        if y.max() >= n_classes:
            raise DataError(f"{sources[labels]}: labels must be in 0-{n_classes - 1}, found {int(y.max())}")


def stratified_subset(x: np.ndarray, y: np.ndarray, size: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    if size > len(y):
        raise DataError(f"data.limit={size} is larger than the {what} set ({len(y)} samples)")
    if size == len(y):
        return x, y
    try:
        from sklearn.model_selection import train_test_split  # here: the digest needs no scikit-learn

        x_sub, _, y_sub, _ = train_test_split(x, y, train_size=size, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"data.limit={size}: cannot take a stratified subset ({exc})") from None
    return x_sub, y_sub


def to_model_input(images: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 in [0, 1] with the model's input shape."""
    if math.prod(input_shape) != math.prod(IMAGE_SHAPE):
        raise DataError(f"model.input_shape {list(input_shape)} does not hold a 28x28 image")
    scaled = images.astype(np.float32)
    scaled /= np.float32(255.0)  # in place: no float64 copy of the whole set
    return scaled.reshape((-1, *input_shape))


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    from sklearn.preprocessing import label_binarize

    return label_binarize(labels, classes=list(range(n_classes))).astype(np.float32)


def standardized(splits: Splits) -> dict[str, Any]:
    """Minus the training images' mean, over their standard deviation (one value each, over
    every pixel of the training split only: nothing of validation or test leaks in), applied
    alike to all three, in place; returns the statistics."""
    mean, std = float(splits.x_train.mean(dtype=np.float64)), float(splits.x_train.std(dtype=np.float64))
    for x in (splits.x_train, splits.x_val, splits.x_test):
        x -= np.float32(mean)
        x /= np.float32(std)
    return {"mean": mean, "std": std, "from": "training split"}


@dataclass(frozen=True)
class Preparation:
    """An option of conf/prep as its factory (the YAML's `_target_`) made it from the YAML's
    arguments. `fit` prepares the scaled splits further, in place, from the training split alone,
    and returns what the run records of it (Splits.preparation); the served model reproduces a
    `mean` and `std` it records (hw4.serving). `augment` moves training batches, drawn per batch
    (hw4.training.batches); `record` is what the run records of that."""

    fit: Optional[Callable[[Splits], dict[str, Any]]] = None
    augment: Optional[Augment] = None
    record: Mapping[str, Any] = field(default_factory=dict)


# The factories of conf/prep (a new preparation is one more, and its YAML). hw4.config calls them
# to check the config before anything loads: they check their arguments and prepare nothing yet.


def scale() -> Preparation:
    """The homework's: pixels / 255 into [0, 1] (what `prepare` does for every option), nothing more."""
    return Preparation()


def standardize() -> Preparation:
    """Scaled, then standardized with the training split's mean and standard deviation."""
    return Preparation(fit=standardized)


def augment(*, max_shift: int, flip: bool) -> Preparation:
    """Scaled; each training batch shifted by up to max_shift pixels each way and, with flip,
    flipped left-right, at random."""
    if not 0 <= max_shift <= 8:
        raise ConfigError(f"prep.max_shift must be 0 to 8 pixels, got {max_shift}")
    return Preparation(
        augment=Augment(max_shift, flip),
        record={
            "max_shift": max_shift,
            "flip": flip,
            "applied_to": "training batches only, drawn from (trainer.seed, epoch)",
        },
    )


PrepOption = Union[str, Mapping[str, Any], None]  # a conf/prep option's name, its config, or None: scale


def prep_config(prep: PrepOption) -> Mapping[str, Any]:
    """`prep` as its config: a name is read from conf/prep/<name>.yaml."""
    if prep is None or isinstance(prep, str):
        return config.option_config("prep", prep or "scale")
    return prep


def preparation(prep: PrepOption) -> Preparation:
    """The conf/prep option `prep` (cfg.prep, or an option's name) as its factory makes it."""
    return config.option("prep", prep_config(prep))


def prepare(
    raw: RawData,
    input_shape: Sequence[int],
    n_classes: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    limit: Optional[int] = None,
    *,
    prep: PrepOption = None,
) -> Splits:
    """The homework's preparation (scale to [0, 1], one-hot, a stratified 8:2 split), then the
    conf/prep option `prep`'s (cfg.prep or an option's name; None: scale only): its `fit` on the
    training split (standardize), its record; an augmentation is drawn on the training batches
    later (hw4.training.batches, hw4.training.step.augmented)."""
    option = prep_config(prep)
    chosen = preparation(option)
    x_dev, y_dev, x_test, y_test = raw.x_dev, raw.y_dev, raw.x_test, raw.y_test
    if limit is not None:
        x_dev, y_dev = stratified_subset(x_dev, y_dev, limit, seed, "development")
        x_test, y_test = stratified_subset(x_test, y_test, min(limit, len(y_test)), seed, "test")

    n_val = math.ceil(len(y_dev) * val_fraction)
    if n_val < n_classes or len(y_dev) - n_val < n_classes:
        raise DataError(
            f"{len(y_dev)} development samples cannot be split {1 - val_fraction:g}:{val_fraction:g}"
            f" with every one of {n_classes} classes on both sides; raise data.limit"
        )
    try:
        from sklearn.model_selection import train_test_split

        x_train, x_val, y_train, y_val = train_test_split(
            x_dev, y_dev, test_size=val_fraction, stratify=y_dev, random_state=seed
        )
    except ValueError as exc:  # e.g. a class with a single sample
        raise DataError(f"cannot split the development set stratified: {exc}") from None

    splits = Splits(
        x_train=to_model_input(x_train, input_shape),
        y_train=one_hot(y_train, n_classes),
        x_val=to_model_input(x_val, input_shape),
        y_val=one_hot(y_val, n_classes),
        x_test=to_model_input(x_test, input_shape),
        y_test=one_hot(y_test, n_classes),
    )
    fitted = chosen.fit(splits) if chosen.fit else {}
    splits.preparation = {"name": option["name"], **chosen.record, **fitted}
    return splits


KERAS_SOURCE = "keras.datasets"  # data.dir=null: the published set, through Keras' loader


def source_digest(data_dir: Optional[str | Path]) -> str:
    """A content hash of the four IDX files (as stored, compressed), computed before the data
    loads: what a run's identity (config_key) hashes instead of the folder's path. Runs on the
    same files share it wherever the files lie; other data gets another key."""
    if not data_dir:
        return KERAS_SOURCE
    return _source_digest(str(data_dir), files_stamp(data_dir))


@functools.lru_cache(maxsize=8)
def _source_digest(data_dir: str, _stamp: tuple) -> str:  # the stamp: files changed, hash again
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: data folder not found (data.dir / HW4_DATA_DIR)")
    hasher = hashlib.sha256()
    for name in IDX_FILES.values():
        path = Path(data_dir) / name
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    return hasher.hexdigest()[:16]


def files_stamp(data_dir: Optional[str | Path]) -> tuple:
    """Size and modification time of each IDX file: what says the files did not change."""
    if not data_dir:
        return ()
    stamps: list[tuple[str, Optional[int], Optional[int]]] = []
    for name in IDX_FILES.values():
        try:
            stat = (Path(data_dir) / name).stat()
            stamps.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            stamps.append((name, None, None))  # load() reports it
    return tuple(stamps)


def load_prepared(
    data_dir: Optional[str | Path],
    input_shape: Sequence[int],
    n_classes: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    limit: Optional[int] = None,
    *,
    prep: PrepOption = None,
) -> tuple[RawData, Splits]:
    """`load` then `prepare`, kept for the next call with the same files and settings: the jobs
    of a sweep in one process read and prepare the data once. The arrays are read-only, since
    every later job shares them."""
    option = prep_config(prep)
    values = OmegaConf.to_container(option, resolve=True) if OmegaConf.is_config(option) else dict(option)
    return _load_prepared(
        str(data_dir) if data_dir else None, files_stamp(data_dir), tuple(input_shape), n_classes,
        val_fraction, seed, limit, json.dumps(values, sort_keys=True),
    )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _load_prepared(
    data_dir, _stamp, input_shape, n_classes, val_fraction, seed, limit, prep_json
) -> tuple[RawData, Splits]:
    raw = load(data_dir, n_classes)
    splits = prepare(raw, input_shape, n_classes, val_fraction, seed, limit, prep=json.loads(prep_json))
    for array in [*vars(raw).values(), *splits.arrays]:
        array.setflags(write=False)
    return raw, splits
