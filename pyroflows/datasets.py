"""Loading the statically binarized MNIST file, with its checksum and shapes verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["DataFileError", "load_binarized_mnist", "sha256_of"]

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
