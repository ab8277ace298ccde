"""Checks of the data a density is fitted to, each with an error that names the problem."""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["as_matrix", "check_context_rows", "constant_columns", "split_rows"]


def _listing(indices: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"[{shown}{', ...' if len(indices) > limit else ''}]"


def as_matrix(name: str, value: object, like: torch.Tensor | None = None) -> torch.Tensor:
    """``value`` as a 2-D floating tensor with finite entries.

    A torch tensor keeps its device and (floating) dtype; a NumPy array or nested list becomes a
    tensor of torch's default dtype (on ``like``'s device and in its dtype when given), as does
    an integer or boolean tensor.

    Raises:
        TypeError: ``value`` is not an array.
        ValueError: it is not 2-D (rows are points, columns coordinates), has no rows or no
            columns, or holds NaN or infinite values (the rows and columns are named).

    Example:
        >>> as_matrix("data", [[1, 2], [3, 4]]).dtype
        torch.float32
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if like is not None:
            tensor = tensor.to(device=like.device, dtype=like.dtype)
        elif not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
    elif isinstance(value, np.ndarray | list | tuple):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from (
                error
            )
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        tensor = torch.as_tensor(array, dtype=dtype, device=device)
    else:
        raise TypeError(
            f"{name} must be a torch tensor or a NumPy array, got {type(value).__name__}"
        )
    if tensor.dim() != 2:
        hint = f" (for one-dimensional points use {name}[:, None])" if tensor.dim() == 1 else ""
        raise ValueError(
            f"{name} must be 2-D, one row per point and one column per coordinate, got shape "
            f"{tuple(tensor.shape)}{hint}"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}: it needs rows and columns")
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = ~finite
        rows = torch.nonzero(bad.any(1)).squeeze(-1).tolist()
        columns = torch.nonzero(bad.any(0)).squeeze(-1).tolist()
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite values (NaN or ±inf) in rows "
            f"{_listing(rows)} and columns {_listing(columns)}; remove or impute them"
        )
    return tensor


def check_context_rows(data: torch.Tensor, context: torch.Tensor, what: str = "") -> None:
    """One context row per data row."""
    if context.shape[0] != data.shape[0]:
        raise ValueError(
            f"context{what} has {context.shape[0]} rows but data{what} has {data.shape[0]}: "
            "pass one context row per data row"
        )


def constant_columns(data: torch.Tensor) -> list[int]:
    """The columns where every row holds the same value."""
    return torch.nonzero((data == data[:1]).all(0)).squeeze(-1).tolist()


def split_rows(
    num_rows: int, validation: object, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(training rows, validation rows)`` for ``validation`` = a fraction in ``[0, 1)`` or a
    count of rows, drawn at random with ``generator``.

    Raises:
        ValueError: the fraction is outside ``[0, 1)``, or the split leaves no validation row
            (with a nonzero fraction) or fewer than 2 training rows.
    """
    if isinstance(validation, bool) or not isinstance(validation, numbers.Real):
        raise TypeError(
            "validation must be a fraction in [0, 1), a number of rows, or held-out data, got "
            f"{type(validation).__name__}"
        )
    if isinstance(validation, numbers.Integral) and validation >= 1:
        held_out = int(validation)
        asked = f"validation={held_out} rows"
    else:
        fraction = float(validation)
        if not 0 <= fraction < 1:
            raise ValueError(
                f"validation must be a fraction in [0, 1) or a whole number of rows >= 1, got "
                f"{validation}"
            )
        held_out = int(round(fraction * num_rows))
        asked = f"validation={validation} of {num_rows} rows"
        if fraction > 0 and held_out == 0:
            raise ValueError(
                f"too few rows for the validation split: {asked} holds out none. Pass more "
                "rows, validation=<number of rows> (at least 1), held-out data, or "
                "validation=0 to train without early stopping"
            )
    if num_rows - held_out < 2:
        raise ValueError(
            f"too few rows: {asked} leaves {num_rows - held_out} for training, and fitting "
            "needs at least 2"
        )
    order = torch.randperm(num_rows, generator=generator)
    return order[held_out:], order[:held_out]
