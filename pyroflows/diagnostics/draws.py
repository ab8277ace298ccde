"""Vectorized draws from a guide with everything the diagnostics need per draw.

One pass gives, for each draw ``z_s ~ q``: every latent site's constrained value, ``log q(z_s)``,
``log p(x, z_s)``, the pointwise log-likelihood of every observed site, and optionally a posterior
predictive draw, with each array's axes named after the model's plates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyroflows.diagnostics.free_energy import max_plate_nesting as _max_plate_nesting

__all__ = ["PosteriorDraws", "draw_posterior"]


@dataclass
class PosteriorDraws:
    """Draws from a guide, each array with the draw axis first.

    Attributes:
        samples: latent (and ``pyro.deterministic``) sites in their constrained space.
        log_q: ``log q(z_s)``, shape ``(S,)``.
        log_joint: ``log p(x, z_s)``, shape ``(S,)``.
        log_likelihood: per observed site, the log-likelihood of each data point.
        observed: the observed values (no draw axis).
        predictive: per observed site, draws from ``p(x | z_s)`` (when asked for).
        dims: axis names after the draw axis of samples, observed and predictive values
            (plates by name, event axes as ``<site>_dim_<k>``).
        log_likelihood_dims: the same for the log-likelihood arrays (plates only).
    """

    samples: dict[str, torch.Tensor]
    log_q: torch.Tensor
    log_joint: torch.Tensor
    log_likelihood: dict[str, torch.Tensor]
    observed: dict[str, torch.Tensor]
    predictive: dict[str, torch.Tensor] = field(default_factory=dict)
    dims: dict[str, list[str]] = field(default_factory=dict)
    log_likelihood_dims: dict[str, list[str]] = field(default_factory=dict)

    @property
    def log_weights(self) -> torch.Tensor:
        """``log p(x, z_s) - log q(z_s)``."""
        return self.log_joint - self.log_q

    @property
    def num_samples(self) -> int:
        return self.log_q.shape[0]


def _plate_names(site: dict, batch_ndim: int) -> list[str | None]:
    """Name of the plate at each of the last ``batch_ndim`` batch axes (None: no plate)."""
    by_dim = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
    return [by_dim.get(axis - batch_ndim) for axis in range(batch_ndim)]


def _named(site_name: str, value: torch.Tensor, site: dict, batch_ndim: int, has_draw_axis: bool):
    """Drops the size-1 padding axes that no plate owns; returns the value and its axis names
    (without the draw axis)."""
    names = _plate_names(site, batch_ndim)
    start = 1 if has_draw_axis else 0
    keep, dims = [], []
    for axis, name in enumerate(names):
        if has_draw_axis and axis == 0:
            continue
        if name is None and value.shape[axis] == 1:
            continue
        keep.append(axis)
        dims.append(name if name is not None else f"{site_name}_batch_{axis - start}")
    event = list(range(batch_ndim, value.dim()))
    dims += [f"{site_name}_dim_{k}" for k in range(len(event))]
    squeeze = [a for a in range(start, batch_ndim) if a not in keep]
    for axis in reversed(squeeze):
        value = value.squeeze(axis)
    return value, dims


def _per_draw(log_prob: torch.Tensor, width: int, size: int) -> torch.Tensor:
    """Sums a site's log-density over every axis but the draw axis; shape ``(size,)``."""
    log_prob = log_prob.reshape((1,) * max(0, width - log_prob.dim()) + log_prob.shape)
    if log_prob.dim() > 1:
        log_prob = log_prob.sum(tuple(range(1, log_prob.dim())))
    return log_prob.expand(size)


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _is_deterministic(site: dict) -> bool:
    return site["type"] == "sample" and site["infer"].get("_deterministic", False)


def _vectorize(fn: Callable, size: int, width: int) -> Callable:
    """``fn`` run inside a plate of ``size`` draws at dim ``-width`` (inside replay, so that
    every site's distribution is broadcast to the draws)."""

    def vectorized(*args, **kwargs):
        with pyro.plate("_vectorized_draws", size, dim=-width):
            return fn(*args, **kwargs)

    return vectorized


@torch.no_grad()
def draw_posterior(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    chunk_size: int = 500,
    predictive: bool = False,
    **kwargs,
) -> PosteriorDraws:
    """Draws ``num_samples`` from ``guide`` (vectorized, ``chunk_size`` at a time) and scores
    them under ``model``.

    Example:
        >>> draws = draw_posterior(model, guide, data, num_samples=2000)  # doctest: +SKIP
        >>> draws.samples["theta"].shape, draws.log_weights.shape  # doctest: +SKIP
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError("num_samples and chunk_size must be at least 1")
    nesting = _max_plate_nesting(model, guide, *args, **kwargs)
    width = nesting + 1
    chunks: list[dict] = []
    observed: dict[str, torch.Tensor] = {}
    dims: dict[str, list[str]] = {}
    log_likelihood_dims: dict[str, list[str]] = {}
    for start in range(0, num_samples, chunk_size):
        size = min(chunk_size, num_samples - start)
        vectorized_guide = _vectorize(guide, size, width)
        vectorized_model = _vectorize(model, size, width)
        guide_trace = poutine.trace(vectorized_guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(vectorized_model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        predictive_trace = None
        if predictive:
            predictive_trace = poutine.trace(
                poutine.uncondition(poutine.replay(vectorized_model, trace=guide_trace))
            ).get_trace(*args, **kwargs)
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        chunk: dict = {"samples": {}, "log_likelihood": {}, "predictive": {}}
        log_q = torch.zeros(size)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                log_q = log_q.to(site["log_prob"]) + _per_draw(site["log_prob"], width, size)
        log_joint = torch.zeros(size)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            batch_ndim = len(site["fn"].batch_shape)
            if _is_deterministic(site):
                # a computed value: (draws, plate axes..., event axes), its Delta's shapes
                # are not reliable (pyro.deterministic makes every axis an event axis)
                value = site["value"]
                value = value.reshape((1,) * max(0, 1 - value.dim()) + value.shape)
                value = value.expand((size,) + value.shape[1:])
                chunk["samples"][name], dims[name] = _named(
                    name, value, site, min(value.dim(), width), True
                )
                continue
            if _is_latent(site):
                value = site["value"].expand(site["fn"].batch_shape + site["fn"].event_shape)
                chunk["samples"][name], dims[name] = _named(name, value, site, batch_ndim, True)
            log_joint = log_joint.to(site["log_prob"]) + _per_draw(site["log_prob"], width, size)
            if site["is_observed"]:
                log_lik = site["log_prob"].expand(site["fn"].batch_shape)
                chunk["log_likelihood"][name], log_likelihood_dims[name] = _named(
                    name, log_lik, site, batch_ndim, True
                )
                value = site["value"]
                obs_batch = value.dim() - len(site["fn"].event_shape)
                observed[name], dims[name] = _named(name, value, site, obs_batch, False)
                if predictive_trace is not None:
                    draw = predictive_trace.nodes[name]["value"]
                    chunk["predictive"][name], _ = _named(name, draw, site, batch_ndim, True)
        chunk["log_q"], chunk["log_joint"] = log_q, log_joint
        chunks.append(chunk)

    def cat(key: str) -> dict[str, torch.Tensor]:
        return {n: torch.cat([c[key][n] for c in chunks]) for n in chunks[0][key]}

    return PosteriorDraws(
        samples=cat("samples"),
        log_q=torch.cat([c["log_q"] for c in chunks]),
        log_joint=torch.cat([c["log_joint"] for c in chunks]),
        log_likelihood=cat("log_likelihood"),
        observed=observed,
        predictive=cat("predictive"),
        dims=dims,
        log_likelihood_dims=log_likelihood_dims,
    )
