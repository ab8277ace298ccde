"""Per-data-point importance-sampling estimates of log p(x) (the test NLL of a VAE)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyroflows.diagnostics.draws import _vectorize
from pyroflows.diagnostics.free_energy import max_plate_nesting as _max_plate_nesting

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


def _per_datapoint(trace, data_plate: str, particle_dim: int, observed: bool) -> torch.Tensor:
    """Sum of the trace's log-densities, shape ``(particles, data)`` (either may be 1)."""
    width = -particle_dim
    total = torch.zeros(())
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"] and not observed:
            continue
        frames = [f for f in site["cond_indep_stack"] if f.name == data_plate]
        if not frames:
            raise ValueError(
                f"sample site {name!r} is outside the plate {data_plate!r}: a per-data-point "
                "estimate needs every latent and observed site inside that plate"
            )
        if not (isinstance(site["scale"], float | int) and site["scale"] == 1.0):
            raise ValueError(
                f"site {name!r} has a scale (subsampling or poutine.scale, e.g. a KL warm-up "
                "factor): evaluate with the full data plate and scale 1"
            )
        log_prob = site["log_prob"]
        log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
        data_axis = width + frames[0].dim
        keep = {0, data_axis}
        others = [axis for axis in range(width) if axis not in keep]
        if others:
            log_prob = log_prob.sum(others, keepdim=True)
        total = total + log_prob.reshape(log_prob.shape[0], log_prob.shape[data_axis])
    return total


@torch.no_grad()
def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 5000,
    chunk_size: int = 500,
    data_plate: str = "data",
    max_plate_nesting: int | None = None,
    **kwargs,
) -> ImportanceEstimate:
    """Estimates ``log p(x_i)`` for every data point in the plate ``data_plate``.

    Draws ``num_samples`` from the guide, ``chunk_size`` at a time (vectorized over an extra
    particle plate, so memory is ``chunk_size`` times one pass), and combines the chunks with a
    running log-sum-exp. Every latent site must sit inside ``data_plate`` (no global latents).

    Example:
        >>> estimate = importance_log_likelihood(vae.model, vae.guide, x_test)  # doctest: +SKIP
        >>> print(estimate.nll, estimate.negative_elbo, estimate.num_samples)  # doctest: +SKIP
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError("num_samples and chunk_size must be at least 1")
    if max_plate_nesting is None:
        max_plate_nesting = _max_plate_nesting(model, guide, *args, **kwargs)
    particle_dim = -max_plate_nesting - 1
    log_sum = None
    elbo_sum = None
    for start in range(0, num_samples, chunk_size):
        size = min(chunk_size, num_samples - start)
        guide_trace = poutine.trace(_vectorize(guide, size, -particle_dim)).get_trace(
            *args, **kwargs
        )
        model_trace = poutine.trace(
            poutine.replay(_vectorize(model, size, -particle_dim), trace=guide_trace)
        ).get_trace(*args, **kwargs)
        for name, site in model_trace.nodes.items():
            if (
                site["type"] == "sample"
                and not site["is_observed"]
                and not site_is_subsample(site)
                and name not in guide_trace
            ):
                raise ValueError(f"latent site {name!r} of the model is missing from the guide")
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        log_w = _per_datapoint(model_trace, data_plate, particle_dim, True) - _per_datapoint(
            guide_trace, data_plate, particle_dim, False
        )
        log_w = log_w.expand(size, log_w.shape[1])
        chunk_lse = torch.logsumexp(log_w, dim=0)
        log_sum = chunk_lse if log_sum is None else torch.logaddexp(log_sum, chunk_lse)
        chunk_sum = log_w.sum(0)
        elbo_sum = chunk_sum if elbo_sum is None else elbo_sum + chunk_sum
    return ImportanceEstimate(
        log_likelihood=log_sum - math.log(num_samples),
        elbo=elbo_sum / num_samples,
        num_samples=num_samples,
    )
