"""Every difference between ArviZ 0.2x and ArviZ 1.x that pyroflows relies on, in one place.

ArviZ 1.0 split into ``arviz-base`` (data), ``arviz-stats`` (statistics) and ``arviz-plots``:

* PSIS: 0.x has ``arviz.psislw(log_ratios)``; 1.x has ``arviz_stats.base.array_stats.psislw(ary)``,
  whose ``ary`` is a *log-likelihood* (it smooths the ratios ``-ary``, the PSIS-LOO convention),
  so it is called with the negated log weights;
* ``from_dict``: 0.x takes one keyword per group and returns an ``InferenceData``; 1.x takes a
  ``{group: {variable: array}}`` mapping and returns an xarray ``DataTree``;
* the group listing: ``InferenceData.groups()`` versus ``DataTree.children``;
* the pair plot: 0.x ``plot_pair(kind=..., marginals=...)`` versus arviz-plots'
  ``plot_pair(marginal=...)``.

Both versions compute the same k-hat up to their generalized-Pareto fit details (they agree to
about 0.02 on heavy tails; ``tests/test_arviz_compat.py`` checks both against a known tail index).

Example:
    >>> import numpy as np
    >>> smoothed, khat = psislw(np.zeros(100))
    >>> round(float(np.exp(smoothed).sum()), 6)
    1.0
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

__all__ = [
    "ARVIZ_MAJOR",
    "arviz",
    "group_names",
    "inference_data",
    "plot_pair",
    "psislw",
]


@cache
def arviz():
    """The ``arviz`` module, imported without 0.2x's refactoring ``FutureWarning``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    return az


def _major() -> int:
    return int(str(arviz().__version__).split(".")[0])


#: ArviZ's major version (0 for the 0.2x series, 1 for the split packages)
ARVIZ_MAJOR: int = _major()


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance sampling of a vector of log importance ratios.

    Returns the smoothed log weights normalized to ``logsumexp = 0`` and the Pareto k-hat of
    the ratios' right tail (Vehtari et al. 2024).
    """
    log_weights = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ARVIZ_MAJOR == 0:
            smoothed, khat = arviz().psislw(log_weights.copy())
        else:
            from arviz_stats.base import array_stats

            # arviz-stats 1.x takes a log-likelihood and smooths its negation
            smoothed, khat = array_stats.psislw(-log_weights, r_eff=1.0, axis=-1)
    smoothed = np.asarray(smoothed, dtype=np.float64)
    smoothed = smoothed - np.logaddexp.reduce(smoothed)
    return smoothed, float(np.asarray(khat))


def inference_data(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    dims: Mapping[str, Mapping[str, Sequence[str]]],
    coords: Mapping[str, Sequence[Any]],
    attrs: Mapping[str, Any],
):
    """An ``InferenceData`` (0.x) or ``DataTree`` (1.x) holding ``groups``.

    ``dims[group]`` names the axes after ``(chain, draw)`` of each variable of that group (the
    observed-data group has no chain and draw axes). Each group is converted on its own, so a
    variable may have different dims in different groups (a log-likelihood lacks the event axes
    of its observation). ``attrs`` are stored on every group.
    """
    az = arviz()
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for group, variables in groups.items():
            if not variables:
                continue
            group_dims = {name: list(d) for name, d in dims.get(group, {}).items()}
            used = {d for name in variables for d in group_dims.get(name, [])}
            group_coords = {k: list(v) for k, v in coords.items() if k in used}
            if ARVIZ_MAJOR == 0:
                part = az.from_dict(
                    **{group: dict(variables)}, coords=group_coords, dims=group_dims
                )
            else:
                part = az.from_dict({group: dict(variables)}, coords=group_coords, dims=group_dims)
            parts.append((group, part))
    if not parts:
        raise ValueError("no group has any variable to export")
    main = parts[0][1]
    for group, part in parts[1:]:
        if ARVIZ_MAJOR == 0:
            main.extend(part)
        else:
            main[group] = part[group]
    for group in group_names(main):
        main[group].attrs.update(attrs)
    return main


def group_names(data) -> list[str]:
    """The group names of an ``InferenceData`` (0.x) or ``DataTree`` (1.x)."""
    if hasattr(data, "children"):
        return list(data.children)
    return list(data.groups())


def plot_pair(data, var_names: Sequence[str] | None = None, **kwargs):
    """ArviZ's pair plot of the posterior with marginals, on either version's API.

    0.x: ``arviz.plot_pair`` (scatter, marginals), returning matplotlib axes; 1.x: arviz-plots'
    ``plot_pair`` with the matplotlib backend, returning its plot collection.
    """
    az = arviz()
    names = list(var_names) if var_names else None
    if ARVIZ_MAJOR == 0:
        options = {"kind": "scatter", "marginals": True, "scatter_kwargs": {"alpha": 0.3}}
        options.update(kwargs)
        return az.plot_pair(data, var_names=names, **options)
    options = {"marginal": True, "backend": "matplotlib"}
    options.update(kwargs)
    return az.plot_pair(data, var_names=names, **options)
