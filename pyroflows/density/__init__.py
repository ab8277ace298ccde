"""Flows fitted to data: density estimation, conditional densities, and distillation.

* :func:`fit_density` fits any registered family (in its density direction) or a list of
  layers to the rows of a data matrix by maximum likelihood, with early stopping on a
  validation split, and returns a Pyro distribution (:class:`FittedDensity`, or a
  :class:`ConditionalFittedDensity` with ``.condition(h)`` when a context is given) with
  ``log_prob``, ``sample`` and ``save`` (:func:`load_density` rebuilds it).
* :func:`distill` trains a one-pass sampler (IAF, or a spline flow in the IAF direction) by
  reverse KL against a teacher's ``log_prob`` (van den Oord et al. 2018) and reports the KL
  with its Monte Carlo error and the sampling speedup.

Example:
    >>> import pyroflows
    >>> density = pyroflows.fit_density("maf", data)            # doctest: +SKIP
    >>> density.log_prob(data[:5]), density.sample((10,))
    >>> student, report = pyroflows.distill(density, "iaf", steps=2000)
"""

from pyroflows.density.distill import DistillationReport, Distilled, distill, kl_estimate
from pyroflows.density.fit import DEFAULT_NUM_TRANSFORMS, NonFiniteDensityLossError, fit_density
from pyroflows.density.model import (
    ConditionalFittedDensity,
    DensityModel,
    FitHistory,
    FittedDensity,
    Standardization,
    load_density,
)

__all__ = [
    "DEFAULT_NUM_TRANSFORMS",
    "ConditionalFittedDensity",
    "DensityModel",
    "DistillationReport",
    "Distilled",
    "FitHistory",
    "FittedDensity",
    "NonFiniteDensityLossError",
    "Standardization",
    "distill",
    "fit_density",
    "kl_estimate",
    "load_density",
]
