"""Plots (the optional ``plot`` extra: ``pip install "pyroflows[plot]"``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pyroflows.diagnostics import _arviz_compat

__all__ = ["plot_free_energy", "plot_pair"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'plotting needs matplotlib: pip install "pyroflows[plot]" (or pip install matplotlib)'
        ) from error
    return plt


def plot_free_energy(results, ax=None, window: int = 50, log_x: bool = False):
    """The free-energy trace ``F = -ELBO`` per step of one or several :func:`pyroflows.fit`
    results (a ``FitResult``, a list of them, or a mapping ``label -> FitResult``), with a
    running mean over ``window`` steps; the report's importance-weighted bound, negated, is
    drawn as a dashed line (F lies above it by at least the KL gap). Returns the axes.

    Example:
        >>> ax = plot_free_energy({"IAF": result_iaf, "MF": result_mf})  # doctest: +SKIP
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    if isinstance(results, Mapping):
        items = list(results.items())
    elif isinstance(results, Sequence):
        items = [(r.name, r) for r in results]
    else:
        items = [(results.name, results)]
    for label, result in items:
        trace = np.asarray(result.free_energy, dtype=float)
        steps = np.arange(1, len(trace) + 1)
        (line,) = ax.plot(steps, trace, alpha=0.25, linewidth=0.8)
        if len(trace) >= window > 1:
            smooth = np.convolve(trace, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color=line.get_color(), label=label)
        else:
            line.set_label(label)
            line.set_alpha(1.0)
        if result.report is not None:
            ax.axhline(
                -result.report.iw_bound, color=line.get_color(), linestyle="--", linewidth=0.8
            )
    ax.set_xlabel("step")
    ax.set_ylabel("free energy F = -ELBO (nats)")
    if log_x:
        ax.set_xscale("log")
    ax.legend()
    return ax


def plot_pair(idata, var_names: Sequence[str] | None = None, **kwargs):
    """Pair plot of a guide's draws with ArviZ (scatter with marginals), from the export of
    :func:`pyroflows.to_inference_data`. Keyword arguments go to ArviZ's ``plot_pair``, whose
    API differs between ArviZ 0.2x (returns matplotlib axes) and 1.x (arviz-plots; returns its
    plot collection, drawn with matplotlib).

    Example:
        >>> plot_pair(to_inference_data(model, guide, data), ["mu", "tau"])  # doctest: +SKIP
    """
    _pyplot()
    return _arviz_compat.plot_pair(idata, var_names, **kwargs)
