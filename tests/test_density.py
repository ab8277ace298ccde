"""fit_density and distill: conditional fitting, early stopping, bad data, save/load, NaN
protection, and distillation on a case with a known answer."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.datasets import banana_log_prob, banana_sample
from pyroflows.density import (
    ConditionalFittedDensity,
    FittedDensity,
    NonFiniteDensityLossError,
    distill,
    fit_density,
    load_density,
)
from pyroflows.transforms import make_flow
from pyroflows.transforms.layer import FlowLayer


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gaussian_rows(n: int, seed: int, dim: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[1.0, 0.0], [0.8, 0.6]])[:dim, :dim]
    return torch.randn(n, dim, generator=generator) @ mix.T


# ---- what comes back ---------------------------------------------------------------------------


def test_a_fitted_density_is_a_pyro_distribution_of_the_original_data():
    data = _gaussian_rows(400, 0)
    density = fit_density("maf", data, num_transforms=2, max_epochs=5)
    assert isinstance(density, FittedDensity)
    assert isinstance(density, dist.TorchDistribution)
    assert density.spec["options"]["direction"] == "maf"  # the one-pass density direction
    assert not density.model.training
    x = data[:7]
    # the distribution's log_prob (through its transforms) is the training loss's
    torch.testing.assert_close(density.log_prob(x), density.model.log_prob(x))
    assert density.sample((5,)).shape == (5, 2)

    # as a likelihood in a Pyro model
    def model(obs):
        with pyro.plate("rows", obs.shape[0]):
            pyro.sample("x", density, obs=obs)

    trace = pyro.poutine.trace(model).get_trace(x)
    torch.testing.assert_close(trace.log_prob_sum(), density.log_prob(x).sum())


def test_log_prob_includes_the_standardization_jacobian():
    """Standardizing makes the fit invariant to units: the fit to ``c·x + m`` (same seed) is
    the fit to ``x`` moved, so its log density is lower by exactly ``D log c``."""
    data = _gaussian_rows(300, 1)
    scale, shift = 1000.0, torch.tensor([5.0, -3.0])
    first = fit_density("maf", data, num_transforms=2, max_epochs=4, seed=3)
    second = fit_density("maf", scale * data + shift, num_transforms=2, max_epochs=4, seed=3)
    x = data[:10]
    torch.testing.assert_close(
        second.log_prob(scale * x + shift),
        first.log_prob(x) - 2 * math.log(scale),
        rtol=1e-4,
        atol=1e-3,
    )


@pytest.mark.parametrize(
    ("family", "direction"),
    [("iaf", "maf"), ("nsf", "maf"), ("naf", "maf"), ("realnvp", None), ("planar", None)],
)
def test_every_family_is_fitted_in_its_density_direction(family, direction):
    density = fit_density(family, _gaussian_rows(60, 2), num_transforms=2, max_epochs=1)
    assert density.spec["options"].get("direction") == direction
    assert torch.isfinite(density.log_prob(_gaussian_rows(5, 3))).all()


def test_a_list_of_layers_and_the_data_dtype():
    data = _gaussian_rows(100, 4).double()
    layers = list(make_flow("maf", 2, num_transforms=2).double())
    density = fit_density(layers, data, max_epochs=2)
    assert density.spec["family"] is None
    assert density.log_prob(data[:3]).dtype == torch.float64
    assert density.sample((4,)).dtype == torch.float64
    with pytest.raises(TypeError, match="apply to a family name"):
        fit_density(layers, data, num_transforms=3)


# ---- conditional fitting -----------------------------------------------------------------------


def test_conditional_fit_recovers_a_gaussian_with_a_mean_linear_in_the_context():
    """x | y ~ N(μ(y), Σ) with μ(y) = (1 + 2y, −y), sds (0.5, 0.3) and correlation 0.6.

    4000 training rows give the maximum-likelihood mean to about 0.5 / √3600 ≈ 0.01 and the sd
    to about 0.5 / √7200 ≈ 0.006; 4000 draws per context add 0.008 and 0.006. The tolerances
    (0.06 for the means, 0.04 for the sds) are about 5 of those combined standard errors, and
    the log density is compared with the truth on fresh rows (its mean gap estimates KL(p‖q)).
    """
    generator = torch.Generator().manual_seed(0)
    n = 4000
    y = 4 * torch.rand(n, 1, generator=generator) - 2
    sd = torch.tensor([0.5, 0.3])
    correlation = 0.6
    scale_tril = torch.tensor(
        [[sd[0], 0.0], [correlation * sd[1], math.sqrt(1 - correlation**2) * sd[1]]]
    )

    def mean(y):
        return torch.cat([1 + 2 * y, -y], -1)

    x = mean(y) + torch.randn(n, 2, generator=generator) @ scale_tril.T
    density = fit_density(
        "maf", x, context=y, num_transforms=2, max_epochs=200, patience=10, hidden_dims=[32]
    )
    assert isinstance(density, ConditionalFittedDensity)
    y_test = torch.tensor([[-1.5], [0.0], [1.5]])
    draws = density.condition(y_test).sample((4000,))  # (4000, 3, 2)
    torch.testing.assert_close(draws.mean(0), mean(y_test), atol=0.06, rtol=0)
    torch.testing.assert_close(draws.std(0), sd.expand(3, 2), atol=0.04, rtol=0)
    # the log density of fresh rows is within 0.02 nats of the truth's on average
    y_new = 4 * torch.rand(2000, 1, generator=generator) - 2
    x_new = mean(y_new) + torch.randn(2000, 2, generator=generator) @ scale_tril.T
    truth = dist.MultivariateNormal(mean(y_new), scale_tril=scale_tril).log_prob(x_new)
    gap = (truth - density.log_prob(x_new, y_new).detach()).mean()
    assert abs(float(gap)) < 0.02


# ---- early stopping ----------------------------------------------------------------------------


def test_early_stopping_returns_the_parameters_of_the_best_validation_loss():
    """A wide 5-layer MAF on 40 training rows overfits: the validation loss falls, then rises;
    the density that comes back has the best epoch's parameters, not the last epoch's."""
    data = _gaussian_rows(40, 5)
    held_out = _gaussian_rows(400, 6)
    density = fit_density(
        "maf",
        data,
        validation=held_out,
        hidden_dims=[128, 128],
        lr=1e-2,
        max_epochs=300,
        patience=15,
        batch_size=40,
    )
    history = density.history
    assert history.stopped_by.startswith("early stopping")
    assert history.epochs == history.best_epoch + 15
    assert history.validation_loss[-1] > history.best_validation_loss + 0.05  # it rose
    assert history.train_loss[-1] < history.train_loss[history.best_epoch - 1]  # still fitting
    kept = -float(density.log_prob(held_out).mean().detach())
    assert kept == pytest.approx(history.best_validation_loss, abs=1e-4)
    assert kept == pytest.approx(min(history.validation_loss), abs=1e-4)


# ---- bad data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        (torch.randn(50), {}, ValueError, r"must be 2-D.*shape \(50,\).*data\[:, None\]"),
        (torch.randn(5, 4, 2), {}, ValueError, r"must be 2-D.*\(5, 4, 2\)"),
        ("not data", {}, TypeError, "must be a torch tensor or a NumPy array"),
        (
            torch.randn(50, 2),
            {"context": torch.randn(49, 1)},
            ValueError,
            "context has 49 rows but data has 50",
        ),
        (torch.randn(50, 2), {"context": torch.randn(50)}, ValueError, "context must be 2-D"),
        (torch.randn(5, 2), {}, ValueError, "too few rows for the validation split"),
        (torch.randn(2, 2), {"validation": 1}, ValueError, "leaves 1 for training"),
        (torch.randn(50, 2), {"validation": 1.5}, ValueError, r"fraction in \[0, 1\)"),
        (torch.randn(50, 2), {"max_epochs": 0}, ValueError, "max_epochs must be"),
        (torch.randn(50, 2), {"lr": -1.0}, ValueError, "lr must be"),
    ],
)
def test_bad_data_and_arguments_are_named(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_density("maf", data, **kwargs)


def test_non_finite_values_are_located():
    data = torch.randn(50, 3)
    data[4, 1] = math.nan
    data[17, 2] = math.inf
    with pytest.raises(
        ValueError,
        match=r"data holds 2 non-finite.*rows \[4, 17\].*columns "
        r"\[1, 2\]",
    ):
        fit_density("maf", data)
    context = torch.randn(50, 2)
    context[9, 0] = -math.inf
    with pytest.raises(ValueError, match=r"context holds 1 non-finite.*rows \[9\]"):
        fit_density("maf", torch.randn(50, 3), context=context)


def test_a_constant_column_is_named():
    data = torch.randn(50, 3)
    data[:, 1] = 2.0
    with pytest.raises(ValueError, match=r"columns \[1\] are constant.*dequantize"):
        fit_density("maf", data)


def test_unknown_family_and_option():
    with pytest.raises(KeyError, match="no flow family 'mafia'"):
        fit_density("mafia", torch.randn(20, 2))
    with pytest.raises(TypeError, match="num_binz"):
        fit_density("nsf", torch.randn(20, 2), num_binz=4)


# ---- save and load -----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    data = _gaussian_rows(200, 7)
    density = fit_density("nsf", data, num_transforms=2, max_epochs=3, num_bins=5)
    density.save(tmp_path / "nsf.pt")
    again = load_density(tmp_path / "nsf.pt")
    assert isinstance(again, FittedDensity)
    assert again.spec == density.spec
    assert again.history.best_epoch == density.history.best_epoch
    torch.testing.assert_close(again.log_prob(data), density.log_prob(data), rtol=0, atol=0)


def test_save_load_round_trip_conditional_with_batch_norm(tmp_path):
    """BatchNorm's running statistics (buffers) are saved; the loaded density is in
    evaluation mode, so its log density is the saved one's exactly."""
    x, y = _gaussian_rows(200, 8), torch.randn(200, 1)
    density = fit_density("maf", x, context=y, num_transforms=3, max_epochs=3, batch_norm=True)
    assert density.model.flow[1].running_mean.abs().sum() > 0  # BatchNorm updated its stats
    density.save(tmp_path / "conditional.pt")
    again = pyroflows.FittedDensity.load(tmp_path / "conditional.pt")
    assert isinstance(again, ConditionalFittedDensity)
    torch.testing.assert_close(again.log_prob(x, y), density.log_prob(x, y), rtol=0, atol=0)


def test_save_load_of_a_list_of_layers_needs_the_layers(tmp_path):
    data = _gaussian_rows(100, 9)
    density = fit_density(list(make_flow("realnvp", 2, num_transforms=2)), data, max_epochs=2)
    density.save(tmp_path / "layers.pt")
    with pytest.raises(ValueError, match="pass the same layers"):
        load_density(tmp_path / "layers.pt")
    again = load_density(
        tmp_path / "layers.pt", flow=list(make_flow("realnvp", 2, num_transforms=2))
    )
    torch.testing.assert_close(again.log_prob(data), density.log_prob(data), rtol=0, atol=0)


def test_loading_something_else_is_named(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a density saved by pyroflows"):
        load_density(tmp_path / "other.pt")


# ---- NaN protection ----------------------------------------------------------------------------


class _Breaks(FlowLayer):
    """``x = u + b``; its log-determinant turns NaN on the ``fail_at``-th training call."""

    def __init__(self, fail_at: int):
        super().__init__(2, 0)
        self.shift = torch.nn.Parameter(torch.zeros(2))
        self.fail_at = fail_at
        self.calls = 0
        self.before_failure: torch.Tensor | None = None

    def forward_with_log_det(self, u, context=None, need_log_det=True):
        return u + self.shift, u.new_zeros(u.shape[:-1])

    def inverse_with_log_det(self, x, context=None):
        log_det = x.new_zeros(x.shape[:-1])
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at:
                self.before_failure = self.shift.detach().clone()
                log_det = log_det + math.nan
        return x - self.shift, log_det


def test_a_non_finite_loss_names_the_step_and_keeps_the_last_finite_parameters():
    layer = _Breaks(fail_at=7)
    data = _gaussian_rows(100, 10) + 3.0
    with pytest.raises(
        NonFiniteDensityLossError, match=r"loss became nan at step 7 \(epoch 2\)"
    ) as caught:
        fit_density([layer], data, validation=0, batch_size=20, standardize=False, lr=0.1)
    error = caught.value
    assert isinstance(error, pyroflows.NonFiniteLossError)
    assert error.step == 7 and error.result.history.steps == 6
    # the failed step's update was not applied: the parameters are those it started from
    torch.testing.assert_close(layer.shift.detach(), layer.before_failure, rtol=0, atol=0)
    assert layer.shift.abs().sum() > 0  # the six finite steps did move it
    assert torch.isfinite(error.result.log_prob(data)).all()


def test_a_non_finite_loss_with_validation_keeps_the_best_epoch():
    layer = _Breaks(fail_at=9)
    data = _gaussian_rows(100, 11) + 3.0
    with pytest.raises(NonFiniteDensityLossError, match="step 9") as caught:
        fit_density([layer], data, validation=20, batch_size=20, standardize=False, lr=0.1)
    history = caught.value.result.history
    assert history.best_epoch == 2 and history.stopped_by == "kept epoch 2's parameters"
    kept = -float(caught.value.result.log_prob(data).mean().detach())
    assert math.isfinite(kept)


# ---- distillation ------------------------------------------------------------------------------


def test_distilling_a_gaussian_into_an_iaf_reaches_kl_zero():
    """A correlated Gaussian teacher is exactly an affine autoregressive map of N(0, I), which a
    one-layer IAF with its direct (linear) path represents: the best student's KL is 0. After
    600 steps the estimate (8000 draws) is below 0.01 nats and not below −3 standard errors;
    the student's moments match the teacher's."""
    covariance = torch.tensor([[1.0, 0.9, 0.2], [0.9, 2.0, -0.3], [0.2, -0.3, 0.5]])
    loc = torch.tensor([1.0, -2.0, 0.5])
    teacher = dist.MultivariateNormal(loc, covariance)
    student, report = distill(
        teacher, "iaf", steps=600, num_transforms=1, lr=1e-2, kl_draws=8000, timing_draws=200
    )
    assert report.kl < 0.01
    assert report.kl > -3 * report.kl_se
    draws = student.sample((20000,))
    torch.testing.assert_close(draws.mean(0), loc, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), covariance, atol=0.08, rtol=0)
    assert report.speedup > 0 and "faster" in str(report)
    assert student.history.steps == 600


@pytest.mark.slow
def test_distilling_the_banana_maf_teacher():
    """The seed's 2-D example: a 5-layer MAF teacher, a 5-layer IAF student within 0.05 nats.
    (KL(student ‖ teacher) estimates are consistent with the exact banana: both densities are
    compared with it on the student's draws.)"""
    data = banana_sample(3000, torch.Generator().manual_seed(0))
    teacher = fit_density("maf", data, max_epochs=150, patience=15)
    student, report = distill(teacher, "iaf", steps=800, kl_draws=8000, timing_draws=0)
    assert report.kl < 0.05
    draws = student.sample((4000,))
    assert float((banana_log_prob(draws) - student.log_prob(draws)).mean().detach()) > -0.15


def test_distill_rejects_students_that_do_not_sample_in_one_pass():
    teacher = dist.MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="must sample in one pass.*'maf'"):
        distill(teacher, "maf", steps=1)
    with pytest.raises(ValueError, match="with direction=maf"):
        distill(teacher, "nsf", steps=1, direction="maf")
    with pytest.raises(ValueError, match="batch_shape"):
        distill(dist.MultivariateNormal(torch.zeros(3, 2), torch.eye(2)), "iaf", steps=1)
    with pytest.raises(ValueError, match="steps must be"):
        distill(teacher, "iaf", steps=0)


# ---- the data sets -----------------------------------------------------------------------------


def test_banana_sample_and_log_prob_agree():
    """The sample's mean log density is the exact density's negative entropy, −H = −(log(2πe)
    + log 2) ≈ −3.531 nats; 20000 draws give it to about 0.01 (sd ≈ 1.2 / √20000)."""
    x = banana_sample(20000, torch.Generator().manual_seed(0))
    entropy = math.log(2 * math.pi * math.e) + math.log(2.0)
    assert float(banana_log_prob(x).mean()) == pytest.approx(-entropy, abs=0.04)
    assert float(x[:, 1].std()) == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(
    ("name", "rows", "columns"), [("digits", 1797, 64), ("breast_cancer", 556, 26)]
)
def test_density_data_sets(name, rows, columns):
    pytest.importorskip("sklearn", reason="the density data sets need scikit-learn")
    from pyroflows.datasets import load_density_data

    splits = load_density_data(name, seed=0)
    total = splits.train.shape[0] + splits.validation.shape[0] + splits.test.shape[0]
    assert (total, splits.dim) == (rows, columns)
    torch.testing.assert_close(splits.train.mean(0), torch.zeros(columns), atol=1e-5, rtol=0)
    torch.testing.assert_close(splits.train.std(0), torch.ones(columns), atol=1e-5, rtol=0)
    assert splits.test.shape[0] == round(0.2 * rows)
    again = load_density_data(name, seed=0)
    assert torch.equal(again.test, splits.test)  # the split and the noise are seeded
    with pytest.raises(ValueError, match="no density data set"):
        load_density_data("iris")


# ---- the public names and the benchmark scripts ------------------------------------------------


def test_the_public_names_import_from_the_top_level():
    for name in (
        "ConditionalFittedDensity",
        "DistillationReport",
        "FittedDensity",
        "NonFiniteDensityLossError",
        "distill",
        "fit_density",
        "load_density",
    ):
        assert name in pyroflows.__all__
        assert getattr(pyroflows, name) is getattr(pyroflows.density, name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "arguments"),
    [
        ("bench_density.py", ["--data-sets", "breast_cancer", "--models", "maf", "pyro-spline"]),
        ("bench_distill.py", ["--data-sets", "banana", "--students", "iaf"]),
    ],
)
def test_the_benchmark_scripts_run(script, arguments, tmp_path):
    """A smoke run (``--quick``) of each benchmark writes its JSON and its table."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("sklearn", reason="the density data sets need scikit-learn")
    root = Path(__file__).resolve().parents[1]
    output = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), "--quick", "--output", str(output)]
        + arguments,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(output.read_text())["table"]
    assert output.with_suffix(".txt").read_text().strip()
