"""Amortized posteriors, the MAF prior, the Bernoulli VAE, and the per-data-point importance
estimator of log p(x) against a linear Gaussian model whose marginal likelihood is exact."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyroflows.amortized import (
    POSTERIOR_FLOWS,
    AmortizedFlowPosterior,
    Autocast,
    BernoulliVAE,
    MAFPrior,
    mlp,
)
from pyroflows.infer import importance_log_likelihood

DATA_DIM, FEATURES, LATENT = 20, 16, 3


def _posterior(flow: str, **kwargs) -> AmortizedFlowPosterior:
    return AmortizedFlowPosterior(mlp([DATA_DIM, FEATURES]), FEATURES, LATENT, flow=flow, **kwargs)


def _perturb(module: nn.Module, scale: float = 0.3) -> None:
    """Moves every parameter off its start; matrices by ``scale / sqrt(fan_in)`` per entry, so
    the flow's raw parameters are of order ``scale`` whatever the width (0.3 per entry of a
    300-wide layer would give raw spline parameters of ±8: bins e^16 apart, a flow no training
    produces, and one whose inverse float rounding cannot follow)."""
    with torch.no_grad():
        for parameter in module.parameters():
            size = scale / parameter.shape[-1] ** 0.5 if parameter.dim() == 2 else scale
            parameter.add_(size * torch.randn_like(parameter))


@pytest.mark.parametrize("flow", sorted(POSTERIOR_FLOWS))
def test_posterior_scores_its_own_samples_as_it_scores_any_point(flow):
    """The cached log q of rsample equals log q by inverting the layers."""
    posterior = _posterior(flow).double()
    _perturb(posterior)
    x = torch.rand(6, DATA_DIM, dtype=torch.float64).bernoulli()
    q = posterior(x)
    assert q.batch_shape == (6,) and q.event_shape == (LATENT,)
    z = q.rsample((4,))
    assert z.shape == (4, 6, LATENT)
    cached = q.log_prob(z)
    recomputed = q.log_prob(z.clone())
    assert torch.allclose(cached, recomputed, atol=1e-6)


def test_posterior_accepts_pyro_conditional_transforms():
    from pyro.distributions.transforms import conditional_affine_autoregressive

    layers = [conditional_affine_autoregressive(LATENT, FEATURES, [12])]
    posterior = AmortizedFlowPosterior(mlp([DATA_DIM, FEATURES]), FEATURES, LATENT, flow=layers)
    q = posterior(torch.rand(5, DATA_DIM))
    z = q.rsample()
    assert torch.allclose(q.log_prob(z), q.log_prob(z.clone()), atol=1e-5)


def test_posterior_errors_name_the_problem():
    with pytest.raises(ValueError, match="flow 'maf' samples in D sequential passes"):
        AmortizedFlowPosterior(nn.Identity(), 4, 2, flow="maf")
    with pytest.raises(ValueError, match="unknown flow 'glow'"):
        _posterior("glow")
    with pytest.raises(ValueError, match="encoder returned features of size 16.*feature_dim=8"):
        AmortizedFlowPosterior(mlp([DATA_DIM, FEATURES]), 8, LATENT)(torch.rand(2, DATA_DIM))
    posterior = _posterior("iaf")
    with pytest.raises(ValueError, match="batch x is on meta but .* on cpu"):
        posterior(torch.empty(2, DATA_DIM, device="meta"))


def test_maf_prior_starts_standard_normal_and_scores_its_samples():
    torch.manual_seed(0)
    prior = MAFPrior(LATENT).double()
    z = torch.randn(10, LATENT, dtype=torch.float64)
    standard = dist.Normal(torch.zeros(LATENT, dtype=torch.float64), 1.0).to_event(1)
    assert torch.allclose(prior().log_prob(z), standard.log_prob(z))
    _perturb(prior)
    p = prior()
    draws = p.rsample((50,))  # sequential in the latent dimension
    assert torch.allclose(p.log_prob(draws), p.log_prob(draws.clone()), atol=1e-6)
    assert not torch.allclose(p.log_prob(z), standard.log_prob(z), atol=1e-3)


def test_maf_prior_density_integrates_to_one_in_one_dimension():
    """A 1-D MAF: its density on a fine grid integrates to 1 (the log-det is right)."""
    torch.manual_seed(1)
    prior = MAFPrior(1, num_transforms=2, hidden_dims=[8]).double()
    _perturb(prior, scale=0.8)
    grid = torch.linspace(-400, 400, 400001, dtype=torch.float64).unsqueeze(-1)
    density = prior().log_prob(grid).exp()
    assert abs(torch.trapezoid(density, grid.squeeze(-1)).item() - 1.0) < 1e-4


def _vae(flow: str, prior: str = "normal") -> BernoulliVAE:
    torch.manual_seed(0)
    decoder = mlp([LATENT, FEATURES, DATA_DIM], last_activation=False)
    return BernoulliVAE(_posterior(flow), decoder, MAFPrior(LATENT) if prior == "maf" else None)


@pytest.mark.parametrize("flow,prior", [(f, "normal") for f in POSTERIOR_FLOWS] + [("iaf", "maf")])
def test_vae_training_steps_on_random_binary_data(flow, prior):
    """SVI trains every parameter (encoder, flow, decoder, prior) and lowers the loss."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    # two fixed patterns with noise: learnable structure
    patterns = torch.rand(2, DATA_DIM).bernoulli()
    x = (patterns[torch.arange(64) % 2] + (torch.rand(64, DATA_DIM) < 0.05)).remainder(2)
    vae = _vae(flow, prior)
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, min(1.0, (step + 1) / 20)) for step in range(80)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    # every module that should learn has moved (zero-initialized flow outputs included)
    moved = {
        name.split(".")[0]
        for name, p in vae.named_parameters()
        if not torch.equal(p.detach(), before[name])
    }
    assert moved == ({"posterior", "decoder"} | ({"prior"} if prior == "maf" else set()))
    if flow != "diag":
        flow_params = [
            name
            for name, p in vae.posterior.transforms.named_parameters()
            if not torch.equal(p.detach(), before["posterior.transforms." + name])
        ]
        assert flow_params


def test_vae_model_names_a_batch_on_the_wrong_device():
    vae = _vae("iaf")
    with pytest.raises(ValueError, match="batch x is on meta"):
        vae.model(torch.empty(3, DATA_DIM, device="meta"))


def test_autocast_networks_train_in_bfloat16_on_cpu():
    pyro.clear_param_store()
    torch.manual_seed(0)
    posterior = AmortizedFlowPosterior(Autocast(mlp([DATA_DIM, FEATURES])), FEATURES, LATENT)
    vae = BernoulliVAE(posterior, Autocast(mlp([LATENT, DATA_DIM], last_activation=False)))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    x = torch.rand(16, DATA_DIM).bernoulli()
    assert math.isfinite(svi.step(x))
    assert vae.guide(x).dtype == torch.float32


# ---- the importance-sampling estimator against a closed form --------------------------------


def _linear_gaussian(inner_plate: bool):
    """z_i ~ N(0, I_2), x_i ~ N(W z_i + b, 0.5² I_3): log p(x_i) = log N(x_i; b, W Wᵀ + σ² I)."""
    torch.manual_seed(0)
    W = torch.randn(3, 2, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    sigma = 0.5
    n = 12
    x = (
        torch.randn(n, 2, dtype=torch.float64) @ W.T
        + b
        + sigma * torch.randn(n, 3, dtype=torch.float64)
    )
    data_dim = -2 if inner_plate else -1

    def model(x, inflate=1.0):
        with pyro.plate("data", n, dim=data_dim):
            zero = torch.zeros(2, dtype=torch.float64)
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            mean = z @ W.T + b
            if inner_plate:  # z has batch shape (n, 1): its features sit at dim -1 of x
                mean = mean.squeeze(-2)
                with pyro.plate("features", 3, dim=-1):
                    pyro.sample("x", dist.Normal(mean, sigma), obs=x)
            else:
                pyro.sample("x", dist.Normal(mean, sigma).to_event(1), obs=x)

    precision = torch.eye(2, dtype=torch.float64) + W.T @ W / sigma**2
    covariance = torch.linalg.inv(precision)
    posterior_mean = (x - b) @ W @ covariance / sigma**2

    def guide(x, inflate=1.0):
        tril = inflate * torch.linalg.cholesky(covariance)
        with pyro.plate("data", n, dim=data_dim):
            loc = posterior_mean.unsqueeze(-2) if inner_plate else posterior_mean  # batch at dim
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))

    evidence = dist.MultivariateNormal(
        b, covariance_matrix=W @ W.T + sigma**2 * torch.eye(3, dtype=torch.float64)
    ).log_prob(x)
    return model, guide, x, evidence


@pytest.mark.parametrize("inner_plate", [False, True])
def test_importance_estimate_is_exact_with_the_exact_posterior(inner_plate):
    model, guide, x, evidence = _linear_gaussian(inner_plate)
    estimate = importance_log_likelihood(model, guide, x, num_samples=7, chunk_size=3)
    assert estimate.log_likelihood.shape == (12,)
    assert torch.allclose(estimate.log_likelihood, evidence, atol=1e-8)
    assert torch.allclose(estimate.elbo, evidence, atol=1e-8)  # log w is constant


def test_importance_estimate_converges_with_a_wider_guide():
    """q = N(m, 1.5² Σ): weights have relative variance 1.5⁴/3.5 - 1 = 0.45, so with K = 5000
    the estimate's standard error is about sqrt(0.45/5000) = 0.01 nats; the ELBO sits
    KL = (1.5² - 1 - 2 log 1.5) = 0.439 nats below the evidence."""
    pyro.set_rng_seed(0)
    model, guide, x, evidence = _linear_gaussian(False)
    estimate = importance_log_likelihood(
        model, guide, x, inflate=1.5, num_samples=5000, chunk_size=1000
    )
    assert estimate.num_samples == 5000
    assert (estimate.log_likelihood - evidence).abs().max() < 0.05
    kl = 1.5**2 - 1 - 2 * math.log(1.5)
    assert (estimate.elbo - (evidence - kl)).abs().max() < 0.05
    # with K = 1 the estimate is the ELBO, below the evidence by KL on average
    single = importance_log_likelihood(model, guide, x, inflate=1.5, num_samples=1)
    assert torch.equal(single.log_likelihood, single.elbo)
    assert estimate.nll < -float(evidence.mean()) + 0.05 < estimate.negative_elbo


def test_importance_estimate_names_a_site_outside_the_data_plate():
    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, scale), obs=x)

    def guide(x):
        pyro.sample("scale", dist.LogNormal(0.0, 0.1))

    with pytest.raises(ValueError, match="site 'scale' is outside the plate 'data'"):
        importance_log_likelihood(model, guide, torch.randn(4), num_samples=2)


def test_importance_estimate_refuses_a_scaled_site():
    vae = _vae("diag")
    with pytest.raises(ValueError, match="'z' has a scale"):
        importance_log_likelihood(
            vae.model, vae.guide, torch.rand(4, DATA_DIM).bernoulli(), 0.5, num_samples=2
        )


def test_vae_importance_estimate_is_above_its_elbo():
    vae = _vae("iaf", "maf")
    pyro.set_rng_seed(0)
    x = torch.rand(8, DATA_DIM).bernoulli()
    estimate = importance_log_likelihood(vae.model, vae.guide, x, num_samples=400, chunk_size=150)
    assert estimate.log_likelihood.shape == (8,)
    assert torch.all(estimate.log_likelihood > estimate.elbo)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vae_step_and_estimate_on_cuda():
    pyro.clear_param_store()
    vae = _vae("naf", "maf").cuda()
    x = torch.rand(16, DATA_DIM, device="cuda").bernoulli()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(x))
    estimate = importance_log_likelihood(vae.model, vae.guide, x, num_samples=50)
    assert estimate.log_likelihood.device.type == "cuda"
    with pytest.raises(ValueError, match="batch x is on cpu"):
        vae.guide(x.cpu())


def test_readme_vae_snippet_runs_one_svi_step():
    """The README's VAE code, executed as written, trains with Trace_ELBO."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Flows in a VAE")[1]
    code = section.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(code, namespace)
    pyro.clear_param_store()
    svi = SVI(namespace["model"], namespace["guide"], pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    x = torch.rand(8, 784).bernoulli()
    first = svi.step(x)
    assert math.isfinite(first)
    assert len(pyro.get_param_store()) > 0
