"""Each use of the ArviZ compat module, on whichever ArviZ is installed (CI runs this module under
ArviZ 0.2x and under ArviZ 1.x)."""

import math
import warnings

import numpy as np
import pytest
import torch

import pyroflows
from pyroflows.diagnostics import _arviz_compat, pareto_khat, psis_log_weights


def test_the_installed_arviz_is_one_of_the_supported_series():
    assert _arviz_compat.ARVIZ_MAJOR in (0, 1)
    print(f"ArviZ {_arviz_compat.arviz().__version__}")


@pytest.mark.parametrize("tail_index", [0.3, 0.8])
def test_psislw_finds_a_known_tail_index(tail_index):
    """``w`` Pareto with shape ``1/k`` (``log w`` exponential with mean ``k``) has tail index k.

    With S = 20000 draws both ArviZ versions fit about 3·sqrt(S) = 424 tail draws, so k-hat has
    a standard error near (1 + k)/sqrt(424) <= 0.09; 0.2 is more than two of those. The sign
    convention of arviz-stats 1.x (it smooths the negation of its input) is what this guards:
    the left tail of these weights is bounded, and k-hat of the wrong tail is far below 0.
    """
    rng = np.random.default_rng(0)
    log_weights = rng.exponential(tail_index, size=20_000)
    smoothed, khat = _arviz_compat.psislw(log_weights)
    assert abs(khat - tail_index) < 0.2
    assert math.isclose(np.logaddexp.reduce(smoothed), 0.0, abs_tol=1e-9)
    assert smoothed.shape == log_weights.shape
    # the smoothing keeps the order of the weights
    assert np.all(np.diff(smoothed[np.argsort(log_weights)]) >= -1e-12)


def test_psislw_leaves_light_tailed_weights_nearly_as_they_are():
    rng = np.random.default_rng(1)
    log_weights = 0.1 * rng.standard_normal(4000)
    smoothed, khat = _arviz_compat.psislw(log_weights)
    normalized = log_weights - np.logaddexp.reduce(log_weights)
    assert khat < 0.5
    # only the ~190 largest weights are replaced by fitted Pareto quantiles: each moves by a few
    # percent at most, and a self-normalized estimate barely moves
    assert np.max(np.abs(smoothed - normalized)) < 0.05
    test_function = np.arange(4000) / 4000
    raw = np.sum(np.exp(normalized) * test_function)
    assert abs(np.sum(np.exp(smoothed) * test_function) - raw) < 1e-3
    # the torch-facing helpers agree with the compat module
    assert pareto_khat(torch.as_tensor(log_weights)) == pytest.approx(khat)
    assert torch.allclose(psis_log_weights(torch.as_tensor(log_weights)), torch.as_tensor(smoothed))


def test_inference_data_keeps_per_group_dims_coords_and_attrs():
    draws = np.random.default_rng(2).standard_normal((2, 5, 3))
    data = _arviz_compat.inference_data(
        groups={
            "posterior": {"theta": draws, "mu": draws[..., 0]},
            "log_likelihood": {"y": draws},
            "observed_data": {"y": np.zeros((3, 2))},
        },
        dims={
            "posterior": {"theta": ["school"]},
            "log_likelihood": {"y": ["school"]},
            "observed_data": {"y": ["school", "y_dim_0"]},
        },
        coords={"school": ["a", "b", "c"], "unused": [1, 2]},
        attrs={"guide": "AutoIAF", "khat": 0.25},
    )
    assert set(_arviz_compat.group_names(data)) == {"posterior", "log_likelihood", "observed_data"}
    assert data["posterior"]["theta"].dims == ("chain", "draw", "school")
    assert list(data["posterior"]["school"].values) == ["a", "b", "c"]
    assert data["log_likelihood"]["y"].dims == ("chain", "draw", "school")
    assert data["observed_data"]["y"].dims == ("school", "y_dim_0")
    for group in _arviz_compat.group_names(data):
        assert data[group].attrs["guide"] == "AutoIAF"
        assert data[group].attrs["khat"] == 0.25


def test_inference_data_refuses_an_empty_export():
    with pytest.raises(ValueError, match="no group"):
        _arviz_compat.inference_data({"posterior": {}}, {}, {}, {})


def test_plot_pair_draws_marginals_and_a_scatter():
    matplotlib = pytest.importorskip("matplotlib", reason="plots need matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(3)
    data = _arviz_compat.inference_data(
        {"posterior": {"a": rng.standard_normal((2, 50)), "b": rng.standard_normal((2, 50))}},
        {},
        {},
        {},
    )
    plt.close("all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyroflows.diagnostics.plot_pair(data, ["a", "b"])
    assert len(plt.gcf().axes) >= 3
    plt.close("all")
