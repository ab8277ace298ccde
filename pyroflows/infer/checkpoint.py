"""Fit checkpoints: everything needed to continue a :func:`~pyroflows.fit` exactly, on disk.

A checkpoint holds the trained parameters (by param-store name, unconstrained), the guide's
buffers (a pyroflows guide's start: a rebuilt guide would recompute it from another random
state), the optimizer
state (Pyro's ``PyroOptim.get_state()``, which includes the decayed learning rate), the step
counter, the free-energy history, the settings of the run and the random states of torch, numpy
and Python (``pyro.util.get_rng_state``). It is written atomically: to a temporary file in the
same folder, flushed to disk, then renamed over the old one with ``os.replace``, so a run killed
while writing leaves the previous checkpoint intact. Only plain containers and tensors are
stored, so it loads with ``torch.load(weights_only=True)``.

Example:
    >>> result = fit(model, guide, data, steps=5000, checkpoint="fit.pt")  # doctest: +SKIP
    >>> # the process dies; later, with a fresh guide:
    >>> result = fit(model, AutoIAF(model), data, resume="fit.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "module_buffers",
    "restore_buffers",
    "restore_parameters",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "pyroflows-fit-checkpoint"
#: 2: the guides' fixed step scales (a conditioner's ``output_step_scale``) change what stored
#: weights mean, so a version 1 checkpoint of those guides would load into another
#: distribution; it is refused instead. 3: AutoIAF's outputs are scaled too (0.1, was 1), so a
#: version 2 checkpoint of an AutoIAF guide would load into another distribution
VERSION = 3


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed with the given guide and model."""


def rng_state() -> dict[str, Any]:
    """The random states of torch, Python and numpy, as plain containers and tensors."""
    # numpy's global (legacy) generator is what Pyro's get_rng_state saves too
    numpy_state = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": (
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            *numpy_state[2:],
        ),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    numpy_state = state["numpy"]
    pyro.util.set_rng_state(
        {
            "torch": state["torch"],
            "random": _as_tuples(state["random"]),
            "numpy": (
                numpy_state[0],
                numpy_state[1].numpy().astype(np.uint32),
                *numpy_state[2:],
            ),
        }
    )


def _as_tuples(value):
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def parameter_values(names: list[str]) -> dict[str, torch.Tensor]:
    """The unconstrained values of the named params in Pyro's param store (copies)."""
    store = pyro.get_param_store()
    return {name: store.get_param(name).unconstrained().detach().clone() for name in names}


def restore_parameters(values: dict[str, torch.Tensor]) -> None:
    """Copies saved unconstrained values into the params of the store *in place*, so that the
    guide's modules and the store keep sharing one tensor per parameter."""
    store = pyro.get_param_store()
    missing = [name for name in values if name not in store]
    if missing:
        raise CheckpointError(
            f"the checkpoint holds params {missing} that this guide and model do not create: "
            "it was written by a fit of another guide or model. Resume with the guide class, "
            "guide settings and model of the checkpointed run."
        )
    for name, value in values.items():
        target = store.get_param(name).unconstrained()
        if target.shape != value.shape:
            raise CheckpointError(
                f"param {name!r} has shape {tuple(target.shape)} here but "
                f"{tuple(value.shape)} in the checkpoint: another guide size or model. Resume "
                "with the guide settings and data of the checkpointed run."
            )
        with torch.no_grad():
            target.copy_(value.to(target))


def module_buffers(guide) -> dict[str, torch.Tensor]:
    """The buffers of a guide that is a torch module (a pyroflows guide's start, its
    orderings): part of its state that is not in Pyro's param store (copies)."""
    if not isinstance(guide, torch.nn.Module):
        return {}
    return {name: value.detach().clone() for name, value in guide.named_buffers()}


def restore_buffers(guide, values: dict[str, torch.Tensor]) -> None:
    """Copies saved buffers into the (set-up) guide in place; a buffer the guide lacks, or of
    another shape, is a checkpoint of another guide."""
    if not values:
        return
    mine = dict(guide.named_buffers())
    for name, value in values.items():
        if name not in mine or mine[name].shape != value.shape:
            raise CheckpointError(
                f"the checkpoint holds the buffer {name!r} {tuple(value.shape)} that this guide "
                "does not have (or not in that shape): resume with the guide class, settings "
                "and model of the checkpointed run."
            )
        with torch.no_grad():
            mine[name].copy_(value.to(mine[name]))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            torch.save({"format": FORMAT, "version": VERSION, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a pyroflows fit checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{str(path)!r} is a version {state.get('version')} checkpoint; this pyroflows "
            f"reads version {VERSION}"
        )
    return state
