"""Export a fitted guide to ``arviz.InferenceData``."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from pyroflows.diagnostics.draws import PosteriorDraws, draw_posterior
from pyroflows.diagnostics.free_energy import FreeEnergyReport, psis_log_weights

__all__ = ["to_inference_data"]


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


def _chains(value: torch.Tensor, num_chains: int) -> np.ndarray:
    """``(S, ...)`` to ``(num_chains, S // num_chains, ...)``."""
    array = _numpy(value)
    return array.reshape((num_chains, array.shape[0] // num_chains) + array.shape[1:])


def _guide_settings(guide) -> str:
    settings = getattr(guide, "settings", None)
    if callable(settings):
        return json.dumps(settings(), default=str)
    return "{}"


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz
    return arviz


def to_inference_data(
    guide: Callable,
    model: Callable,
    *args,
    num_samples: int = 2000,
    num_chains: int = 4,
    coords: Mapping[str, Sequence] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    posterior_predictive: bool = False,
    observed_data: bool = True,
    chunk_size: int = 500,
    draws: PosteriorDraws | None = None,
    **kwargs,
):
    """Draws from a fitted guide and returns them as an ``arviz.InferenceData``.

    Groups:

    * ``posterior``: every latent site (and ``pyro.deterministic`` site) in its constrained
      space, with dims named after the model's plates (``coords`` give them values, keyed by
      plate name) and event axes named ``<site>_dim_<k>``;
    * ``sample_stats``: ``log_q`` (log q(z)), ``lp`` (log p(x, z)), ``log_weight``
      (their difference) and ``psis_weight`` (the PSIS-smoothed, normalized weight of each draw);
    * ``log_likelihood``: per observed site and data point, so ``arviz.loo`` and ``arviz.waic``
      work (their estimates assume draws from the exact posterior; ``k-hat`` says how far the
      guide is from that);
    * ``posterior_predictive`` (if ``posterior_predictive=True``) and ``observed_data``.

    The guide's draws are independent, so they are split into ``num_chains`` chains only so that
    ArviZ's multi-chain summaries (R-hat, ESS) run; R-hat near 1 is expected, not evidence.
    ``attrs`` record the guide class, its settings, the free energy, the importance-weighted
    bound and k-hat from the same draws.

    Args:
        guide, model: a fitted guide and its model; ``*args, **kwargs`` are the model's.
        num_samples: total draws, a multiple of ``num_chains``.
        dims: per-variable dim names, overriding the plate-derived ones.
        draws: reuse draws already made with :func:`draw_posterior`.

    Example:
        >>> idata = pyroflows.to_inference_data(guide, model, data)  # doctest: +SKIP
        >>> arviz.summary(idata)  # doctest: +SKIP
        >>> arviz.loo(idata)  # doctest: +SKIP
    """
    if num_chains < 1 or num_samples % num_chains:
        raise ValueError(
            f"num_samples ({num_samples}) must be a positive multiple of num_chains ({num_chains})"
        )
    if draws is None:
        draws = draw_posterior(
            model, guide, *args, num_samples=num_samples, chunk_size=chunk_size,
            predictive=posterior_predictive, **kwargs,
        )
    elif draws.num_samples != num_samples:
        raise ValueError(f"draws hold {draws.num_samples} samples, num_samples={num_samples}")
    az = _arviz()
    log_w = draws.log_weights.double()
    report = FreeEnergyReport.from_log_weights(log_w)
    smoothed = psis_log_weights(log_w)
    all_dims = {name: list(d) for name, d in draws.dims.items()}
    user_dims = {name: list(d) for name, d in (dims or {}).items()}
    groups: dict = {
        "posterior": {n: _chains(v, num_chains) for n, v in draws.samples.items()},
        "sample_stats": {
            "log_q": _chains(draws.log_q, num_chains),
            "lp": _chains(draws.log_joint, num_chains),
            "log_weight": _chains(log_w, num_chains),
            "psis_weight": _chains(torch.exp(smoothed), num_chains),
        },
        "log_likelihood": {n: _chains(v, num_chains) for n, v in draws.log_likelihood.items()},
    }
    if posterior_predictive:
        groups["posterior_predictive"] = {
            n: _chains(v, num_chains) for n, v in draws.predictive.items()
        }
    if observed_data:
        groups["observed_data"] = {n: _numpy(v) for n, v in draws.observed.items()}
    dims_for = {**all_dims, **user_dims}
    # the log-likelihood of an observed site has its plates but not its event axes
    ll_dims = {n: list(d) for n, d in draws.log_likelihood_dims.items()}
    attrs = {
        "inference_library": "pyro",
        "created_by": "pyroflows",
        "guide": type(guide).__name__,
        "guide_settings": _guide_settings(guide),
        "free_energy": report.free_energy,
        "free_energy_se": report.free_energy_se,
        "iw_bound": report.iw_bound,
        "khat": report.khat,
        "khat_verdict": report.verdict,
        "num_samples": num_samples,
        "num_chains": num_chains,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        main = az.from_dict(
            posterior=groups["posterior"],
            sample_stats=groups["sample_stats"],
            posterior_predictive=groups.get("posterior_predictive"),
            observed_data=groups.get("observed_data"),
            coords=dict(coords or {}),
            dims=dims_for,
            attrs=attrs,
        )
        if groups["log_likelihood"]:
            likelihood = az.from_dict(
                log_likelihood=groups["log_likelihood"],
                coords=dict(coords or {}),
                dims=ll_dims,
                attrs=attrs,
            )
            main.extend(likelihood)
    for group in main.groups():
        main[group].attrs.update({k: v for k, v in attrs.items() if _is_attr(v)})
    return main


def _is_attr(value) -> bool:
    return isinstance(value, str | int) or (isinstance(value, float) and not math.isnan(value))
