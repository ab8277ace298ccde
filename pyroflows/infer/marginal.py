"""Per-data-point importance-sampling estimates of log p(x) (the test NLL of a VAE)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyroflows._validation import check_count
from pyroflows.diagnostics.tracing import SiteDraws, trace_draws

__all__ = ["ImportanceEstimate", "importance_log_likelihood"]


@dataclass
class ImportanceEstimate:
    """Per-data-point estimates from ``num_samples`` draws of the guide.

    ``log_likelihood[i] = log (1/K) sum_k p(x_i, z_k) / q(z_k | x_i)`` (the importance-weighted
    bound with ``K = num_samples``, which tends to ``log p(x_i)`` from below as ``K`` grows) and
    ``elbo[i] = (1/K) sum_k log p(x_i, z_k) / q(z_k | x_i)``.
    """

    log_likelihood: torch.Tensor
    elbo: torch.Tensor
    num_samples: int

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood over the data points, in nats."""
        return float(-self.log_likelihood.mean())

    @property
    def negative_elbo(self) -> float:
        """Mean negative ELBO over the data points, in nats."""
        return float(-self.elbo.mean())


def _per_datapoint(site: SiteDraws, data_plate: str) -> torch.Tensor:
    """A site's log density summed over every axis but the draw axis and ``data_plate``'s,
    shape ``(draws, data)``."""
    if data_plate not in site.plates:
        raise ValueError(
            f"sample site {site.name!r} is outside the plate {data_plate!r}: a per-data-point "
            "estimate needs every latent and observed site inside that plate"
        )
    scale = site.scale
    if not (isinstance(scale, float | int) and scale == 1.0):
        raise ValueError(
            f"site {site.name!r} has a scale (poutine.scale, e.g. a KL warm-up factor): "
            "evaluate with scale 1"
        )
    log_prob = site.log_prob
    axis = 1 + site.plates.index(data_plate)
    others = [a for a in range(1, log_prob.dim()) if a != axis]
    if others:
        log_prob = log_prob.sum(others, keepdim=True)
    return log_prob.reshape(log_prob.shape[0], log_prob.shape[axis])


@torch.no_grad()
def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 5000,
    chunk_size: int = 500,
    data_plate: str = "data",
    **kwargs,
) -> ImportanceEstimate:
    """Estimates ``log p(x_i)`` for every data point in the plate ``data_plate``.

    Draws ``num_samples`` from the guide, ``chunk_size`` at a time (vectorized over an extra
    particle plate, so memory is ``chunk_size`` times one pass), and combines the chunks with a
    running log-sum-exp. Every latent site must sit inside ``data_plate`` (no global latents).
    The draws and densities come from :func:`pyroflows.diagnostics.tracing.trace_draws`, the
    code path of every diagnostic.

    Example:
        >>> estimate = importance_log_likelihood(vae.model, vae.guide, x_test)  # doctest: +SKIP
        >>> print(estimate.nll, estimate.negative_elbo, estimate.num_samples)  # doctest: +SKIP
    """
    check_count("num_samples", num_samples, minimum=1)
    check_count("chunk_size", chunk_size, minimum=1)
    log_sum = None
    elbo_sum = None
    for chunk in trace_draws(
        model,
        guide,
        args,
        kwargs,
        num_samples=num_samples,
        chunk_size=chunk_size,
        keep_sites=True,
    ):
        log_w = 0.0
        for site in chunk.model_sites.values():
            if site.log_prob is not None:
                log_w = log_w + _per_datapoint(site, data_plate)
        for site in chunk.guide_sites.values():
            if site.log_prob is not None and not site.is_observed:
                log_w = log_w - _per_datapoint(site, data_plate)
        chunk_lse = torch.logsumexp(log_w, dim=0)
        log_sum = chunk_lse if log_sum is None else torch.logaddexp(log_sum, chunk_lse)
        chunk_sum = log_w.sum(0)
        elbo_sum = chunk_sum if elbo_sum is None else elbo_sum + chunk_sum
    return ImportanceEstimate(
        log_likelihood=log_sum - math.log(num_samples),
        elbo=elbo_sum / num_samples,
        num_samples=num_samples,
    )
