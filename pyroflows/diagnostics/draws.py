"""Vectorized draws from a guide with everything the diagnostics need per draw.

One pass of :func:`pyroflows.diagnostics.tracing.trace_draws` gives, for each draw ``z_s ~ q``:
every latent site's constrained value, ``log q(z_s)``, ``log p(x, z_s)``, the pointwise
log-likelihood of every observed site, and optionally a posterior predictive draw, with each
array's axes named after the model's plates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pyroflows._validation import check_count
from pyroflows.diagnostics.free_energy import FreeEnergyReport, check_log_weights, psis_log_weights
from pyroflows.diagnostics.tracing import SiteDraws, trace_draws

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

    def weigh(self, args: tuple, kwargs: dict) -> tuple[FreeEnergyReport, torch.Tensor]:
        """The free-energy report of the draws' importance weights and their Pareto-smoothed,
        normalized log weights (in float64): the one path from draws to weights of
        :func:`~pyroflows.diagnose` and :func:`~pyroflows.to_inference_data`.

        Raises (:func:`~pyroflows.diagnostics.free_energy.check_log_weights`) where a weight is
        not finite, naming the model argument in ``args``, ``kwargs`` that holds NaN or inf.
        """
        log_w = self.log_weights.double()
        check_log_weights(log_w, args, kwargs)
        return FreeEnergyReport.from_log_weights(log_w), psis_log_weights(log_w)


def _named(site: SiteDraws, tensor: torch.Tensor, with_event: bool) -> tuple[torch.Tensor, list]:
    """Drops the size-1 batch axes that no plate owns; returns the tensor (draw axis first) and
    the names of its other axes (plates by name, event axes as ``<site>_dim_<k>``)."""
    keep, dims = [], []
    for axis, plate in enumerate(site.plates, start=1):
        if plate is None and tensor.shape[axis] == 1:
            continue
        keep.append(axis)
        dims.append(plate if plate is not None else f"{site.name}_batch_{axis - 1}")
    if with_event:
        dims += [f"{site.name}_dim_{k}" for k in range(site.event_ndim)]
    for axis in reversed(range(1, 1 + len(site.plates))):
        if axis not in keep:
            tensor = tensor.squeeze(axis)
    return tensor, dims


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
    """Draws ``num_samples`` times from ``guide`` (``chunk_size`` draws vectorized at a time) and
    records, per draw, every latent and deterministic site, ``log q``, ``log p(x, z)`` and the
    pointwise log-likelihood, on the full data also under a subsampled plate (see
    :mod:`pyroflows.diagnostics.tracing`, the one code path all diagnostics use).

    Example:
        >>> draws = draw_posterior(model, guide, data, num_samples=2000)  # doctest: +SKIP
        >>> draws.samples["theta"].shape, draws.log_weights.shape  # doctest: +SKIP
    """
    check_count("num_samples", num_samples, minimum=1)
    check_count("chunk_size", chunk_size, minimum=1)
    chunks = []
    observed: dict[str, torch.Tensor] = {}
    dims: dict[str, list[str]] = {}
    log_likelihood_dims: dict[str, list[str]] = {}
    for traced in trace_draws(
        model,
        guide,
        args,
        kwargs,
        num_samples=num_samples,
        chunk_size=chunk_size,
        keep_sites=True,
        predictive=predictive,
    ):
        chunk: dict = {"samples": {}, "log_likelihood": {}, "predictive": {}}
        for name, site in traced.model_sites.items():
            if site.is_deterministic or not site.is_observed:
                chunk["samples"][name], dims[name] = _named(site, site.value, True)
                continue
            chunk["log_likelihood"][name], log_likelihood_dims[name] = _named(
                site, site.log_prob, False
            )
            value, dims[name] = _named(site, site.value[:1], True)
            observed[name] = value[0]
            if name in traced.predictive:
                chunk["predictive"][name], _ = _named(site, traced.predictive[name], True)
        chunk["log_q"], chunk["log_joint"] = traced.log_q, traced.log_joint
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
