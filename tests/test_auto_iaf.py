"""AutoIAF as a Pyro autoguide: accuracy on a conjugate model, initialization, the AutoContinuous
contract (constrained sites, plates, Predictive, median/quantiles, save/load, NeuTra, float64)."""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoContinuous, AutoIAFNormal, init_to_value
from pyro.infer.reparam import NeuTraReparam

from pyroflows import AutoIAF, available_guides, fit, free_energy_report, make_guide
from pyroflows.models import banana, linear_regression


def test_is_a_real_pyro_autocontinuous_and_registered():
    assert issubclass(AutoIAF, AutoContinuous)
    assert "iaf" in available_guides()
    assert isinstance(make_guide("iaf", banana().model, num_transforms=3), AutoIAF)
    with pytest.raises(KeyError, match="available"):
        make_guide("no-such-guide", banana().model)


@pytest.mark.slow
def test_kl_to_exact_posterior_of_conjugate_regression_is_small():
    """KL(q || p) = log Z - ELBO, with log Z in closed form, for a 10-dim correlated posterior.

    The ELBO is estimated from 20000 fresh draws: its standard error (~0.002 nats) is small
    next to the 0.05-nat tolerance.
    """
    problem = linear_regression(dim=10)
    guide = AutoIAF(problem.model)
    result = fit(
        problem.model,
        guide,
        *problem.args,
        steps=1500,
        lr=2e-2,
        lr_decay=0.01,
        num_particles=32,
        progress=False,
        report_samples=20000,
    )
    kl = problem.log_evidence + result.report.free_energy
    assert 3 * result.report.free_energy_se < 0.02
    assert kl < 0.05, f"KL = {kl:.4f}"
    assert kl > -3 * result.report.free_energy_se  # the ELBO is a lower bound
    # the posterior mean and standard deviations match the closed form
    draws = guide.sample_unconstrained(20000, *problem.args).double()
    assert torch.allclose(draws.mean(0), problem.posterior_mean, atol=0.05)
    exact_sd = problem.posterior_cov.diagonal().sqrt()
    assert torch.allclose(draws.std(0), exact_sd, rtol=0.1)


def far_away_model(data):
    mu = pyro.sample("mu", dist.Normal(100.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 0.05), obs=data)


def test_first_samples_start_at_init_loc_not_at_zero():
    data = 100.0 + 0.05 * torch.randn(25)  # posterior: mean ~100, sd 0.01
    guide = AutoIAF(far_away_model)
    first = torch.stack([guide(data)["mu"] for _ in range(200)])
    assert (first - 100.0).abs().max() < 1.5  # init_to_median of the prior, init_scale 0.1
    assert first.std() < 0.2
    # Pyro's AutoIAFNormal starts at 0 with scale 1, a hundred prior sds away
    pyro_guide = AutoIAFNormal(far_away_model)
    assert pyro_guide(data)["mu"].abs() < 10
    # with init="median", init_to_value puts the guide exactly where asked
    pyro.clear_param_store()  # a new guide of the same name would adopt the stored values
    guide = AutoIAF(
        far_away_model,
        init_loc_fn=init_to_value(values={"mu": torch.tensor(99.0)}),
        init_scale=1e-3,
        init="median",
    )
    assert abs(float(guide(data)["mu"].detach()) - 99.0) < 0.01
    # by default the guide starts at the Laplace approximation, from that point: the posterior
    pyro.clear_param_store()
    guide = AutoIAF(far_away_model, init_loc_fn=init_to_value(values={"mu": torch.tensor(99.0)}))
    first = torch.stack([guide(data)["mu"].detach() for _ in range(2000)])
    post_mean = float(data.sum() / 0.05**2 + 100.0) / (len(data) / 0.05**2 + 1.0)
    post_sd = (len(data) / 0.05**2 + 1.0) ** -0.5
    assert guide.start.method == "laplace"
    assert abs(float(first.mean()) - post_mean) < 5 * post_sd / 2000**0.5
    assert abs(float(first.std()) / post_sd - 1.0) < 0.1
    # a short fit reaches the 0.01-wide posterior
    pyro.clear_param_store()
    guide = AutoIAF(far_away_model)
    fit(far_away_model, guide, data, steps=300, progress=False, report_samples=None)
    post_mean = float(data.sum() / 0.05**2 + 100.0) / (len(data) / 0.05**2 + 1.0)
    median = guide.median(data)["mu"]
    assert abs(float(median) - post_mean) < 0.01


def constrained_model():
    pyro.sample("positive", dist.LogNormal(0.0, 1.0))
    pyro.sample("unit", dist.Beta(2.0, 3.0))
    pyro.sample("simplex", dist.Dirichlet(torch.ones(4)))
    pyro.sample("corr", dist.LKJCholesky(3, concentration=2.0))
    pyro.sample("matrix", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))


def test_constrained_sites_stay_in_their_support():
    guide = AutoIAF(constrained_model)
    fit(constrained_model, guide, steps=50, progress=False, report_samples=None)
    model_trace = pyro.poutine.trace(constrained_model).get_trace()
    for _ in range(5):
        sample = guide()
        for name, value in sample.items():
            support = model_trace.nodes[name]["fn"].support
            assert value.shape == model_trace.nodes[name]["value"].shape
            assert bool(support.check(value).all()), name
    for name, value in guide.median().items():
        assert bool(model_trace.nodes[name]["fn"].support.check(value).all()), name
    quantiles = guide.quantiles([0.1, 0.9])
    assert bool((quantiles["positive"][0] < quantiles["positive"][1]).all())
    assert quantiles["matrix"].shape == (2, 2, 3)


def plate_model(data):
    """A global location and a local latent per group, inside a (full) plate."""
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("groups", data.shape[0], dim=-2):
        offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
        with pyro.plate("points", data.shape[1], dim=-1):
            pyro.sample("obs", dist.Normal(loc + offset, 0.5), obs=data)


def test_plates_vectorized_particles_predictive_and_quantiles():
    data = 2.0 + torch.randn(4, 1) + 0.5 * torch.randn(4, 6)
    guide = AutoIAF(plate_model)
    result = fit(
        plate_model, guide, data, steps=400, num_particles=8, progress=False, report_samples=500
    )
    assert result.free_energy.shape == (400,)
    assert result.report.num_samples == 500
    assert guide.latent_dim == 5
    assert guide(data)["offset"].shape == (4, 1)
    for parallel in (False, True):
        predictive = Predictive(plate_model, guide=guide, num_samples=30, parallel=parallel)
        draws = predictive(data)
        assert draws["loc"].squeeze().shape == (30,)
        assert draws["obs"].shape == (30, 4, 6)
    quantiles = guide.quantiles([0.05, 0.5, 0.95], data)
    assert quantiles["offset"].shape == (3, 4, 1)
    assert bool((quantiles["loc"][0] < quantiles["loc"][1]).all())
    assert bool((quantiles["loc"][1] < quantiles["loc"][2]).all())
    median = guide.median(data)
    assert torch.allclose(median["loc"], quantiles["loc"][1], atol=0.1)


@pytest.mark.slow
def test_median_and_quantiles_match_the_exact_gaussian_posterior():
    problem = linear_regression(dim=3, num_data=30, correlation=0.5)
    guide = AutoIAF(problem.model)
    fit(
        problem.model,
        guide,
        *problem.args,
        steps=1500,
        num_particles=16,
        lr_decay=0.01,
        progress=False,
        report_samples=None,
    )
    exact = dist.Normal(problem.posterior_mean, problem.posterior_cov.diagonal().sqrt())
    median = guide.median(*problem.args, num_samples=20000)["w"].double()
    assert torch.allclose(median, exact.mean, atol=0.03)
    quantiles = guide.quantiles([0.05, 0.95], *problem.args, num_samples=20000)["w"].double()
    expected = exact.icdf(torch.tensor([[0.05], [0.95]], dtype=torch.float64))
    assert torch.allclose(quantiles, expected, atol=0.05)


def test_state_dict_save_and_load_reproduces_samples():
    problem = linear_regression(dim=4)
    guide = AutoIAF(problem.model, num_transforms=3, permutation="random")
    fit(problem.model, guide, *problem.args, steps=30, progress=False, report_samples=None)
    buffer = io.BytesIO()
    torch.save(guide.state_dict(), buffer)

    pyro.clear_param_store()
    restored = AutoIAF(problem.model, num_transforms=3, permutation="random")
    restored(*problem.args)  # set up, as for any Pyro autoguide, then load
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    torch.manual_seed(5)
    expected = guide.sample_unconstrained(10, *problem.args)
    torch.manual_seed(5)
    assert torch.equal(restored.sample_unconstrained(10, *problem.args), expected)
    ordering_keys = [k for k in guide.state_dict() if k.endswith("ordering")]
    assert len(ordering_keys) == 3, "each layer's autoregressive ordering is a saved buffer"


def test_whole_guide_pickles_with_torch_save():
    problem = banana()
    guide = AutoIAF(problem.model)
    fit(problem.model, guide, steps=10, progress=False, report_samples=None)
    buffer = io.BytesIO()
    torch.save(guide, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    torch.manual_seed(1)
    a = guide.sample_unconstrained(5)
    torch.manual_seed(1)
    assert torch.equal(restored.sample_unconstrained(5), a)


def test_neutra_reparam_with_a_short_nuts_run():
    problem = banana(curvature=0.5, scale=1.0)
    guide = AutoIAF(problem.model)
    fit(problem.model, guide, steps=500, progress=False, report_samples=None)
    neutra = NeuTraReparam(guide.requires_grad_(False))
    reparam_model = neutra.reparam(problem.model)
    mcmc = MCMC(NUTS(reparam_model), num_samples=60, warmup_steps=40, disable_progbar=True)
    mcmc.run()
    latent = mcmc.get_samples()["a_shared_latent"]
    assert latent.shape == (60, 2)
    samples = neutra.transform_sample(latent)
    assert samples["a"].shape == (60,) and bool(torch.isfinite(samples["b"]).all())
    # the warped chain explores the banana: both arms of `a` are visited
    assert samples["a"].min() < -0.3 and samples["a"].max() > 0.3


def test_float64_models_get_float64_guides():
    problem = linear_regression(dim=5, dtype=torch.float64)
    guide = AutoIAF(problem.model)
    result = fit(problem.model, guide, *problem.args, steps=50, progress=False, report_samples=200)
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    assert guide(*problem.args)["w"].dtype == torch.float64
    assert guide.median(*problem.args)["w"].dtype == torch.float64
    assert result.report.free_energy == pytest.approx(result.report.free_energy)  # finite


def test_plain_svi_loop_works_like_any_autoguide():
    problem = linear_regression(dim=4)
    for init in ("median", "laplace"):
        pyro.clear_param_store()
        guide = AutoIAF(problem.model, update="gated", init=init)
        svi = SVI(problem.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        losses = [svi.step(*problem.args) for _ in range(300)]
        report = free_energy_report(problem.model, guide, *problem.args, num_samples=4000)
        kl = problem.log_evidence + report.free_energy
        if init == "median":  # from init_loc_fn: it learns
            assert sum(losses[-30:]) < sum(losses[:30])
        else:  # from the exact (Gaussian) posterior: it stays close (0.1 nats of noise floor)
            assert kl < 0.1, f"KL = {kl:.3f}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_guide_follows_the_model_to_cuda():
    problem = linear_regression(dim=4)
    args = tuple(a.cuda() for a in problem.args)
    guide = AutoIAF(problem.model)
    result = fit(problem.model, guide, *args, steps=20, progress=False, report_samples=100)
    assert all(p.is_cuda for p in guide.parameters())
    assert all(b.is_cuda for b in guide.buffers())
    assert guide.median(*args)["w"].is_cuda
    assert result.report.num_samples == 100
