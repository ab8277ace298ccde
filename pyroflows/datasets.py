"""Data sets: the statically binarized MNIST file (checksum and shapes verified), the seed's
two-dimensional density example, and the tabular sets scikit-learn bundles, prepared for density
estimation."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DENSITY_DATA_SETS",
    "DataFileError",
    "DensitySplits",
    "banana_log_prob",
    "banana_sample",
    "load_binarized_mnist",
    "load_density_data",
    "sha256_of",
]

BINARIZED_MNIST_SHAPES = {"train": (50000, 784), "valid": (10000, 784), "test": (10000, 784)}


class DataFileError(ValueError):
    """A data file that is missing, corrupt, or not what it claims to be."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_binarized_mnist(
    path: str | Path,
    checksum: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """The ``train``, ``valid`` and ``test`` splits as ``(N, 784)`` tensors of 0/1 pixels.

    Verifies the file's SHA-256 against ``checksum`` (a hex digest, or a path to a
    ``sha256sum``-style file; default: ``<path>.sha256`` beside the data), then that every split
    has the expected shape and holds only 0 and 1. Each failure raises :class:`DataFileError`
    naming the file and what is wrong.

    Example:
        >>> data = load_binarized_mnist("../shared/data/binarized_mnist.npz")  # doctest: +SKIP
        >>> data["test"].shape  # doctest: +SKIP
        torch.Size([10000, 784])
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"no data file at {path}")
    if checksum is None:
        checksum = path.with_name(path.name + ".sha256")
        if not checksum.is_file():
            raise DataFileError(
                f"no checksum file {checksum} beside the data; pass checksum= (a hex digest or "
                "a file) to verify against"
            )
    expected = checksum
    if isinstance(checksum, Path) or Path(str(checksum)).is_file():
        text = Path(checksum).read_text().split()
        if not text:
            raise DataFileError(f"checksum file {checksum} is empty")
        expected = text[0]
    expected = str(expected).strip().lower()
    actual = sha256_of(path)
    if actual != expected:
        raise DataFileError(
            f"checksum mismatch for {path}: expected SHA-256 {expected}, file has {actual} "
            "(a corrupt or different file)"
        )
    try:
        archive = np.load(path)
    except Exception as error:  # numpy raises several types for a non-npz file
        raise DataFileError(f"{path} is not a readable .npz archive: {error}") from error
    splits = {}
    with archive:
        for name, shape in BINARIZED_MNIST_SHAPES.items():
            if name not in archive.files:
                raise DataFileError(f"{path} has no array {name!r} (it has {archive.files})")
            array = archive[name]
            if array.shape != shape:
                raise DataFileError(
                    f"{path}: split {name!r} has shape {array.shape}, expected {shape}"
                )
            if not np.isin(array, (0, 1)).all():
                raise DataFileError(f"{path}: split {name!r} holds values other than 0 and 1")
            splits[name] = torch.from_numpy(array.astype(np.float32)).to(dtype)
    return splits


# ---- density estimation ---------------------------------------------------------------------


def banana_sample(num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws from the seed's two-dimensional example (Papamakarios et al. 2017, section 2.3):
    ``x2 ~ N(0, 4)`` (standard deviation 2), ``x1 | x2 ~ N(x2² / 4, 1)``; rows ``(x1, x2)``.

    Example:
        >>> banana_sample(3, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """
    x2 = 2.0 * torch.randn(num_samples, generator=generator)
    x1 = x2 * x2 / 4.0 + torch.randn(num_samples, generator=generator)
    return torch.stack([x1, x2], -1)


def banana_log_prob(x: torch.Tensor) -> torch.Tensor:
    """``log N(x2 | 0, 4) + log N(x1 | x2² / 4, 1)``, the exact log density of
    :func:`banana_sample`, per row.

    Example:
        >>> round(float(banana_log_prob(torch.zeros(1, 2))), 4)  # log(1 / (2π·2))
        -2.5310
    """
    x1, x2 = x[..., 0], x[..., 1]
    log_norm = -0.5 * math.log(2.0 * math.pi)
    return (log_norm - math.log(2.0) - 0.5 * (x2 / 2.0) ** 2) + (
        log_norm - 0.5 * (x1 - x2 * x2 / 4.0) ** 2
    )


@dataclass
class DensitySplits:
    """Training, validation and test rows of a data set, standardized with the training rows'
    mean and standard deviation per column; ``info`` says what was done to the raw data."""

    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.train.shape[1]


#: the data sets :func:`load_density_data` prepares, with what it does to each
DENSITY_DATA_SETS = {
    "digits": "scikit-learn's 8x8 digits (1797 images, 64 pixels of 0..16): dequantized, "
    "(pixel + u) / 17 with u ~ U(0, 1), then standardized",
    "breast_cancer": "scikit-learn's Wisconsin breast cancer table (569 rows, 30 measurements): "
    "the 13 rows whose six concavity measurements are exactly 0 (a point mass) removed, one of "
    "each pair of columns with |correlation| > 0.98 removed (perimeter and area, which follow "
    "from the radius: 26 columns left), as in the MAF paper's preprocessing; standardized",
}


def load_density_data(
    name: str,
    seed: int = 0,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> DensitySplits:
    """A data set bundled with scikit-learn, prepared for density estimation
    (:data:`DENSITY_DATA_SETS`) and split at random (``seed``): ``test_fraction`` of the rows
    for testing, ``validation_fraction`` of the rest for early stopping, the remainder for
    training; all three standardized with the training rows' statistics.

    Needs scikit-learn (``pip install scikit-learn``); its bundled files load offline.

    Example:
        >>> splits = load_density_data("digits")  # doctest: +SKIP
        >>> splits.train.shape, splits.validation.shape, splits.test.shape
        (torch.Size([1294, 64]), torch.Size([144, 64]), torch.Size([359, 64]))
    """
    if name not in DENSITY_DATA_SETS:
        raise ValueError(f"no density data set {name!r}; available: {sorted(DENSITY_DATA_SETS)}")
    try:
        from sklearn import datasets as sklearn_datasets
    except ImportError as error:
        raise ImportError(
            f"the {name!r} data set comes with scikit-learn: pip install scikit-learn"
        ) from error
    rng = np.random.default_rng(seed)
    info: dict = {"name": name, "seed": seed, "preprocessing": DENSITY_DATA_SETS[name]}
    if name == "digits":
        raw = sklearn_datasets.load_digits().data.astype(np.float64)
        data = (raw + rng.uniform(size=raw.shape)) / 17.0
        columns = list(range(raw.shape[1]))
    else:
        bundle = sklearn_datasets.load_breast_cancer()
        raw = bundle.data.astype(np.float64)
        concavity = [i for i, n in enumerate(bundle.feature_names) if "concav" in n]
        raw = raw[~(raw[:, concavity] == 0).all(1)]
        correlation = np.corrcoef(raw.T)
        columns = []
        for j in range(raw.shape[1]):
            if all(abs(correlation[i, j]) <= 0.98 for i in columns):
                columns.append(j)
        data = raw[:, columns]
        info["columns"] = [str(bundle.feature_names[j]) for j in columns]
    order = rng.permutation(len(data))
    num_test = int(round(test_fraction * len(data)))
    num_validation = int(round(validation_fraction * (len(data) - num_test)))
    test = data[order[:num_test]]
    validation = data[order[num_test : num_test + num_validation]]
    train = data[order[num_test + num_validation :]]
    mean, sd = train.mean(0), train.std(0, ddof=1)
    info.update(
        rows=len(data),
        columns_kept=len(columns),
        train_rows=len(train),
        validation_rows=len(validation),
        test_rows=len(test),
    )

    def prepare(part: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((part - mean) / sd, dtype=dtype)

    return DensitySplits(prepare(train), prepare(validation), prepare(test), info)
