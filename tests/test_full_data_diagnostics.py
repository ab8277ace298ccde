"""The report, diagnose, the export and importance weights score every data point under a
subsampled plate, name a guide built for another model, and evaluate a model that is not
vectorization-safe draw by draw (one warning) instead of crashing or answering wrong.

The models are conjugate, so the exact posterior and log evidence are known in closed form."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.diagnostics import (
    ModelGuideMismatchError,
    NotVectorizableWarning,
    SubsampledPlateError,
    draw_posterior,
    free_energy_report,
    importance_log_weights,
)
from pyroflows.models import linear_regression

PRIOR_SD = 10.0


def _normal_mean_problem(num_data: int, seed: int = 0):
    """y_i ~ N(mu, 1), mu ~ N(0, 10²): posterior N(m, s²) and log Z in closed form (float64)."""
    generator = torch.Generator().manual_seed(seed)
    y = 3.0 + torch.randn(num_data, generator=generator, dtype=torch.float64)
    precision = 1 / PRIOR_SD**2 + num_data
    mean, sd = float(y.sum() / precision), precision**-0.5
    evidence_cov = torch.eye(num_data, dtype=torch.float64) + PRIOR_SD**2
    log_z = float(dist.MultivariateNormal(torch.zeros_like(y), evidence_cov).log_prob(y))
    return y, mean, sd, log_z


def subsampled_model(y, batch=100):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), PRIOR_SD))
    with pyro.plate("data", len(y), subsample_size=batch) as index:
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[index])


def _gaussian_guide(mean, sd):
    def guide(y, batch=100):
        pyro.sample("mu", dist.Normal(torch.tensor(mean, dtype=y.dtype), sd))

    return guide


@pytest.mark.parametrize("num_data", [1000, 1050])  # 1050: the last chunk overlaps the one before
def test_report_of_a_subsampled_model_uses_every_data_point(num_data):
    """A guide 20% wider than the exact posterior: KL(q || p) = (1.44 - 1 - log 1.44) / 2 = 0.038
    exactly, finite-variance weights. Scored on one minibatch scaled by N/B (pyroflows <= 0.1),
    this gave k-hat 1.63 and a 68-nat gap."""
    y, mean, sd, log_z = _normal_mean_problem(num_data)
    guide = _gaussian_guide(mean, 1.2 * sd)
    exact_kl = 0.5 * (1.44 - 1 - math.log(1.44))
    report = free_energy_report(subsampled_model, guide, y, num_samples=2000, batch_size=1000)
    # F = -log Z + KL, to within 4 Monte Carlo standard errors
    assert abs(report.free_energy - (-log_z + exact_kl)) < 4 * report.free_energy_se
    assert 0 <= report.kl_lower_bound < exact_kl + 0.01
    assert abs(report.iw_bound - log_z) < 0.01
    assert report.khat < 0.5 and report.verdict == "good"

    # PSIS moments from 2000 draws: standard errors near sd / sqrt(ESS) ~ 0.025 sd
    diagnosis = pyroflows.diagnose(subsampled_model, guide, y, num_samples=2000, chunk_size=1000)
    assert diagnosis.khat < 0.5
    assert abs(diagnosis.psis_mean["mu"] - mean) < 0.1 * sd
    assert abs(diagnosis.psis_sd["mu"] - sd) < 0.1 * sd


def test_the_export_of_a_subsampled_model_holds_every_unscaled_data_point():
    y, mean, sd, _ = _normal_mean_problem(1050)
    guide = _gaussian_guide(mean, sd)
    draws = draw_posterior(subsampled_model, guide, y, num_samples=200, chunk_size=64)
    assert draws.log_likelihood["obs"].shape == (200, 1050)
    mu = draws.samples["mu"]
    expected = dist.Normal(mu.unsqueeze(-1), 1.0).log_prob(y)  # no N/B factor, every point
    assert torch.allclose(draws.log_likelihood["obs"], expected)
    assert torch.equal(draws.observed["obs"], y)
    assert torch.allclose(
        draws.log_joint, dist.Normal(0.0, PRIOR_SD).log_prob(mu) + expected.sum(-1)
    )
    idata = pyroflows.to_inference_data(subsampled_model, guide, y, num_samples=200, draws=draws)
    assert idata["log_likelihood"]["obs"].shape == (4, 50, 1050)


def test_local_latents_under_a_subsampled_plate_share_the_global_draw():
    """z_i ~ N(mu, 1), y_i ~ N(z_i, 1) with a subsampled plate; the exact posterior factorizes
    as p(mu | y) prod_i p(z_i | mu, y_i), and a guide equal to it has log w = log Z for every
    draw: only if each draw's mu is shared by all data chunks, and no point counts twice."""
    num_data, batch = 250, 40
    generator = torch.Generator().manual_seed(1)
    y = 1.0 + 2.0**0.5 * torch.randn(num_data, generator=generator, dtype=torch.float64)
    precision = 1 / PRIOR_SD**2 + num_data / 2  # y_i | mu ~ N(mu, 2)
    mean, sd = float(y.sum() / 2 / precision), precision**-0.5
    evidence_cov = 2 * torch.eye(num_data, dtype=torch.float64) + PRIOR_SD**2
    log_z = float(dist.MultivariateNormal(torch.zeros_like(y), evidence_cov).log_prob(y))

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), PRIOR_SD))
        with pyro.plate("data", num_data, subsample_size=batch) as index:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z, 1.0), obs=y[index])

    def exact_guide(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(mean, dtype=y.dtype), sd))
        with pyro.plate("data", num_data, subsample_size=batch) as index:
            pyro.sample("z", dist.Normal((mu + y[index]) / 2, 0.5**0.5))

    log_w = importance_log_weights(model, exact_guide, y, num_samples=300, batch_size=128)
    assert torch.allclose(log_w, torch.full_like(log_w, log_z), atol=1e-6)
    draws = draw_posterior(model, exact_guide, y, num_samples=10)
    assert draws.samples["z"].shape == (10, num_data)


def test_the_report_after_fitting_a_subsampled_model_is_the_exact_kl():
    """``log Z + F`` is KL(q || p); here it is also computed without pyroflows' tracing, from
    the guide's own log q and the exact Gaussian posterior."""
    y, mean, sd, log_z = _normal_mean_problem(1000)
    y = y.float()
    guide = pyroflows.AutoIAF(subsampled_model)
    result = pyroflows.fit(
        subsampled_model, guide, y, steps=1500, progress=False, report_samples=4000
    )
    report = result.report
    with torch.no_grad():
        posterior = guide.get_posterior(y)
        z = posterior.rsample((20000,))
        log_ratio = posterior.log_prob(z).double() - dist.Normal(mean, sd).log_prob(
            z[:, 0].double()
        )
    exact_kl, kl_se = float(log_ratio.mean()), float(log_ratio.std() / 20000**0.5)
    assert abs((log_z + report.free_energy) - exact_kl) < 4 * (report.free_energy_se + kl_se)
    assert report.khat < 0.7  # minibatch-scaled scoring gave 1.63 on this model


def test_explicit_subsample_indices_are_refused_with_how_to_pass_full_data():
    y = torch.randn(100)

    def model(y, index):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample=index):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[index])

    guide = pyroflows.AutoIAF(model)
    with pytest.raises(SubsampledPlateError, match=r"explicit indices.*subsample_size=B"):
        pyroflows.diagnose(model, guide, y, torch.arange(10))
    # all the indices: the full data, fine
    assert pyroflows.diagnose(model, guide, y, torch.arange(100), num_samples=200).khat < 1


def test_two_subsampled_plates_are_refused_with_how_to_pass_full_data():
    data = torch.randn(30, 20)

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 30, subsample_size=10, dim=-2) as rows:
            with pyro.plate("columns", 20, subsample_size=5, dim=-1) as columns:
                pyro.sample("obs", dist.Normal(loc, 1.0), obs=data[rows][:, columns])

    guide = pyroflows.AutoIAF(model)
    with pytest.raises(SubsampledPlateError, match=r"2 plates \['columns', 'rows'\].*full plates"):
        free_energy_report(model, guide, data, num_samples=100)


# ---- a guide built for another model -------------------------------------------------------


def _model_a(y):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=y)


def _model_b(y):
    shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(shift, 1.0), obs=y)


@pytest.mark.parametrize("entry", ["report", "diagnose", "export", "fit"])
def test_a_guide_built_for_another_model_is_named(entry):
    y = torch.randn(20)
    guide = pyroflows.AutoIAF(_model_a)
    guide(y)
    calls = {
        "report": lambda: free_energy_report(_model_b, guide, y),
        "diagnose": lambda: pyroflows.diagnose(_model_b, guide, y),
        "export": lambda: pyroflows.to_inference_data(_model_b, guide, y),
        "fit": lambda: pyroflows.fit(_model_b, guide, y, steps=5, progress=False),
    }
    message = r"latent site\(s\) \['shift'\] are not in the guide.*the guide samples \['loc'\]"
    with pytest.raises(ModelGuideMismatchError, match=message):
        calls[entry]()


def test_the_old_guide_model_order_is_named():
    y = torch.randn(20)
    guide = pyroflows.AutoIAF(_model_a)
    guide(y)
    with pytest.raises(TypeError, match=r"\(model, guide, \*args\)"):
        pyroflows.diagnose(guide, _model_a, y)


# ---- models that are not vectorization-safe ---------------------------------------------------


def _exact_regression():
    problem = linear_regression(dim=3, num_data=30, dtype=torch.float64)
    mean, cov = problem.posterior_mean, problem.posterior_cov

    def exact_guide(x, y):
        pyro.sample("w", dist.MultivariateNormal(mean, cov))

    return problem, exact_guide


def matmul_model(x, y):
    """``x @ w`` fails when w carries a batch of draws."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def flattening_model(x, y):
    """Shapes fit when vectorized, but every draw is scored with the first draw's w."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((x * w.reshape(-1)[:3]).sum(-1), 0.5), obs=y)


@pytest.mark.parametrize("model", [matmul_model, flattening_model])
def test_a_model_that_is_not_vectorizable_is_evaluated_draw_by_draw(model):
    problem, exact_guide = _exact_regression()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = free_energy_report(model, exact_guide, *problem.args, num_samples=300)
    slow = [w for w in caught if issubclass(w.category, NotVectorizableWarning)]
    assert len(slow) == 1 and "slower" in str(slow[0].message)
    # q is the exact posterior: log w = log Z for every draw
    assert report.free_energy == pytest.approx(-problem.log_evidence, abs=1e-6)
    assert report.kl_lower_bound == pytest.approx(0.0, abs=1e-6)


def test_fit_trains_a_non_vectorizable_model_with_one_warning():
    """Vectorized ELBO particles fail on ``x @ w``; fit detects it before the first step and
    computes the particles one by one (and the report's draws), warning once."""
    problem, _ = _exact_regression()
    guide = pyroflows.AutoIAF(matmul_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pyroflows.fit(
            matmul_model, guide, *problem.args, steps=300, progress=False, report_samples=200
        )
    slow = [w for w in caught if issubclass(w.category, NotVectorizableWarning)]
    assert len(slow) == 1 and "ELBO particles" in str(slow[0].message)
    assert result.steps == 300 and result.report is not None
    # log Z + F = KL >= 0, and a few hundred steps get within a nat of the evidence
    assert -0.05 < problem.log_evidence + result.report.free_energy < 1.0


def test_diagnose_and_export_of_a_non_vectorizable_model():
    problem, exact_guide = _exact_regression()
    with pytest.warns(NotVectorizableWarning):
        diagnosis = pyroflows.diagnose(matmul_model, exact_guide, *problem.args, num_samples=200)
    assert diagnosis.elbo == pytest.approx(problem.log_evidence, abs=1e-6)
    with pytest.warns(NotVectorizableWarning):
        idata = pyroflows.to_inference_data(
            matmul_model, exact_guide, *problem.args, num_samples=200
        )
    assert idata["posterior"]["w"].shape == (4, 50, 3)
    assert idata["log_likelihood"]["y"].shape == (4, 50, 30)


def test_a_vectorizable_model_gives_no_warning():
    problem, exact_guide = _exact_regression()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotVectorizableWarning)
        report = free_energy_report(problem.model, exact_guide, *problem.args, num_samples=200)
    assert report.free_energy == pytest.approx(-problem.log_evidence, abs=1e-6)


def test_a_model_that_fails_on_every_draw_raises_its_own_error():
    def broken(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if not torch.jit.is_tracing() and mu.dim() >= 0:
            raise RuntimeError("broken model")
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    def guide(y):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(RuntimeError, match="broken model"):
        free_energy_report(broken, guide, torch.tensor(0.5), num_samples=100)
