"""AutoPlanar: registered, starts at init_loc, trains, and gives log q of external points."""

import pyro
import torch

from pyroflows import AutoPlanar, available_guides, fit, make_guide
from pyroflows.models import linear_regression


def test_registered_and_built_by_name():
    assert "planar" in available_guides()
    guide = make_guide("planar", linear_regression(dim=3).model, num_transforms=4)
    assert isinstance(guide, AutoPlanar) and guide.num_transforms == 4


def test_starts_at_init_loc_and_fits_a_correlated_posterior():
    problem = linear_regression(dim=4, correlation=0.8)
    guide = AutoPlanar(problem.model, num_transforms=8, init="median")
    first = guide.sample_unconstrained(4000, *problem.args)
    assert first.std(0).max() < 0.12  # init_scale 0.1, and every layer starts as the identity
    result = fit(
        problem.model,
        guide,
        *problem.args,
        steps=600,
        num_particles=8,
        progress=False,
        report_samples=4000,
    )
    kl = problem.log_evidence + result.report.free_energy
    # the best diagonal Gaussian has KL = (sum log diag(S^-1) + log det S) / 2 (~1.64 nats here)
    precision = torch.linalg.inv(problem.posterior_cov)
    best_diagonal_kl = 0.5 * float(
        torch.log(precision.diagonal()).sum() + torch.logdet(problem.posterior_cov)
    )
    assert kl < 0.5 * best_diagonal_kl, f"KL = {kl:.3f}, best diagonal {best_diagonal_kl:.3f}"


def test_log_prob_of_external_points_matches_the_cached_value():
    problem = linear_regression(dim=3, dtype=torch.float64)
    guide = AutoPlanar(problem.model, num_transforms=6)
    fit(problem.model, guide, *problem.args, steps=100, progress=False, report_samples=None)
    posterior = guide.get_posterior(*problem.args)
    with torch.no_grad():
        x = posterior.rsample((50,))
        cached = posterior.log_prob(x)
        external = posterior.log_prob(x.clone())  # inverts all 6 layers by root solves
    assert torch.allclose(cached, external, atol=1e-8)
    pyro.clear_param_store()
