"""Checks that a model and guide can be trained on mini-batches, with errors that name the problem.

Data-parallel SVI calls ``model(*batch)`` with a different batch on every step and every process.
For the gradient of each process to estimate the gradient of the full-data ELBO, the model must
use its batch and weigh its log likelihood by ``N / B`` (``N`` data points in all, ``B`` in the
batch), which ``pyro.plate("data", N, subsample_size=B)`` or ``subsample=indices`` does:

    ELBO ≈ E_q[ log p(z) + (N / B) Σ_{i in batch} log p(x_i | z) - log q(z) ].

Three mistakes are detectable from one batch, and each raises a ``ValueError`` that says what to
do:

* a joint guide (any ``AutoContinuous``: AutoIAF, AutoNAF, AutoDiagonalNormal, ...) with a local
  latent site inside a subsampled plate: the guide would hold one value per batch row, not per
  data point;
* a model that ignores its batch: the same observations and log likelihood for two different
  batches (it closes over its full data set), so every step and every process fits the same data;
* a model with global latents that scores a batch of ``B < N`` rows with weight 1, as if the
  batch were the whole data set: the prior then counts ``N / B`` times too much.

Not detectable, and documented instead: a weight of the wrong size (e.g. ``N`` of one process's
shard instead of the whole data set), a model whose log likelihood depends on the batch only
through statistics that do not change when its rows are reordered, and models whose observed
sites sit in no plate of the batch's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous
from pyro.poutine.trace_struct import Trace
from pyro.util import get_rng_state, set_rng_state

from pyroflows._pyro_internals import is_subsample_site as site_is_subsample

__all__ = [
    "batch_arguments",
    "batch_size_of",
    "check_batch_is_scaled",
    "check_joint_guide_latents",
    "check_model_uses_batch",
    "trace_model_and_guide",
]


def batch_arguments(batch: object) -> tuple:
    """The model's positional arguments for ``batch``: a tuple or list is unpacked, a tensor is
    the only argument."""
    if isinstance(batch, tuple | list):
        return tuple(batch)
    if isinstance(batch, torch.Tensor):
        return (batch,)
    raise TypeError(
        f"SVIModule calls model(*batch), so a batch must be a tuple, a list or a tensor; got a "
        f"{type(batch).__name__}. Use a TensorDataset, or a collate_fn that returns a tuple."
    )


def batch_size_of(args: Sequence) -> int | None:
    """The leading size of the first tensor argument with at least one dimension."""
    for value in args:
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None


@torch.no_grad()
def trace_model_and_guide(
    model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[Trace, Trace]:
    """A guide trace and the model's trace replayed against it, with log densities computed."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    model_trace.compute_log_prob()
    return guide_trace, model_trace


def _latent_sites(trace: Trace) -> list[dict]:
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def _observed_sites(trace: Trace) -> list[dict]:
    return [
        site for site in trace.nodes.values() if site["type"] == "sample" and site["is_observed"]
    ]


def check_joint_guide_latents(guide: Callable, model_trace: Trace) -> None:
    """A joint guide cannot follow a local latent site through a subsampled plate."""
    if not isinstance(guide, AutoContinuous):
        return
    for site in _latent_sites(model_trace):
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.full_size is not None and frame.full_size != frame.size:
                raise ValueError(
                    f"{type(guide).__name__} is a joint guide over all latents, but the local "
                    f"latent site '{site['name']}' sits inside the subsampled plate "
                    f"'{frame.name}' ({frame.size} of {frame.full_size}): its values would "
                    "belong to batch rows, not to data points. Use AutoNormal (which indexes "
                    "local latents by the subsample), an amortized guide (pyroflows.amortized), "
                    "or move the latent out of the subsampled plate."
                )


def _rolled(args: tuple, batch_size: int) -> tuple[tuple, bool]:
    """Every batch tensor with its rows shifted by one, and whether anything changed."""
    rolled, changed = [], False
    for value in args:
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch_size:
            shifted = torch.roll(value, 1, 0)
            changed = changed or not torch.equal(shifted, value)
            value = shifted
        rolled.append(value)
    return tuple(rolled), changed


@torch.no_grad()
def check_model_uses_batch(model: Callable, guide_trace: Trace, args: tuple, kwargs: dict) -> None:
    """Runs the model on the batch and on the batch with its rows reordered, with the same latent
    values and random state; if neither the observed values nor their log density change, the
    model ignores its batch."""
    batch_size = batch_size_of(args)
    if batch_size is None or batch_size < 2:
        return
    rolled_args, changed = _rolled(args, batch_size)
    if not changed:  # every row is the same: reordering cannot tell
        return
    state = get_rng_state()
    traces = []
    try:
        for call_args in (args, rolled_args):
            set_rng_state(state)
            with poutine.block():
                trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                    *call_args, **kwargs
                )
            trace.compute_log_prob()
            traces.append(trace)
    finally:
        set_rng_state(state)
    first, second = (_observed_sites(trace) for trace in traces)
    if not first:
        return
    for site, other in zip(first, second, strict=False):
        if site["value"].shape != other["value"].shape or not torch.equal(
            site["value"], other["value"]
        ):
            return
        if not torch.equal(site["log_prob_sum"], other["log_prob_sum"]):
            return
    names = [site["name"] for site in first]
    raise ValueError(
        f"the model ignores its batch: with the batch's rows reordered, its observed sites "
        f"{names} have the same values and log density, so every step (and every process) would "
        "fit the same data. SVIModule calls model(*batch) with each batch from the DataLoader: "
        "observe the batch (obs=batch tensor), or index your data with it "
        "(pyro.plate('data', N, subsample=indices)). If the model uses the batch only through "
        "statistics that reordering cannot change, pass check_batch=False."
    )


def check_batch_is_scaled(model_trace: Trace, batch_size: int | None, dataset_size: int | None):
    """A model with global latents must weigh a batch of ``B < N`` rows by ``N / B``."""
    if batch_size is None or dataset_size is None or dataset_size <= batch_size:
        return
    batch_sites = [
        site
        for site in _observed_sites(model_trace)
        if any(f.vectorized and f.size == batch_size for f in site["cond_indep_stack"])
    ]
    if not batch_sites:
        return
    batch_plates = {
        f.name for site in batch_sites for f in site["cond_indep_stack"] if f.size == batch_size
    }
    global_latents = [
        site["name"]
        for site in _latent_sites(model_trace)
        if not any(f.name in batch_plates for f in site["cond_indep_stack"])
    ]
    if not global_latents:  # only local latents (a VAE): the batch ELBO is the right objective
        return
    if any(not _is_one(site["scale"]) for site in batch_sites):
        return
    site = batch_sites[0]
    plate = next(f.name for f in site["cond_indep_stack"] if f.size == batch_size)
    raise ValueError(
        f"the model scores each batch of {batch_size} rows as if it were the whole data set of "
        f"{dataset_size}: the observed site '{site['name']}' in plate '{plate}' has weight 1, "
        f"so the prior of the global latent site(s) {global_latents} would count "
        f"{dataset_size / batch_size:.3g} times too much and the posterior would be too wide. "
        f"Declare the full size in the plate: pyro.plate('{plate}', {dataset_size}, "
        "subsample_size=len(batch)) or subsample=indices (the full size of the data set, not "
        "of one process's share)."
    )


def _is_one(scale: float | torch.Tensor) -> bool:
    if isinstance(scale, torch.Tensor):
        return bool((scale == 1).all())
    return scale == 1
