"""Where a guide starts: the Laplace start is exact on a Gaussian posterior, its fallbacks name
their reason, the candidate starts are chosen by ELBO, and the global random state is left
alone."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.guides import start as start_module
from pyroflows.models import banana, horseshoe_regression, linear_regression


def test_laplace_start_is_the_posterior_of_a_gaussian_model():
    """Conjugate regression: the posterior is N(m, S) in closed form, so the Laplace start is
    exact and the first draws, before any training, already have the posterior's mean and
    covariance (20000 draws: Monte Carlo error of a covariance entry ≈ 0.01 of the sd product,
    of the mean ≈ 0.007 sd)."""
    problem = linear_regression(dim=5, dtype=torch.float64)
    for name in ("iaf", "nsf", "realnvp"):
        pyro.clear_param_store()
        guide = pyroflows.make_guide(name, problem.model)
        draws = guide.sample_unconstrained(20000, *problem.args)
        assert guide.start.method == "laplace"
        sd = problem.posterior_cov.diagonal().sqrt()
        mean_error = (draws.mean(0) - problem.posterior_mean) / sd
        assert mean_error.abs().max() < 0.04, name
        correlation_error = (torch.cov(draws.T) - problem.posterior_cov) / torch.outer(sd, sd)
        assert correlation_error.abs().max() < 0.05, name
        report = pyroflows.free_energy_report(problem.model, guide, *problem.args)
        assert abs(problem.log_evidence + report.free_energy) < 0.01  # KL of the start


def test_the_report_says_which_start_was_used():
    problem = linear_regression(dim=3)
    guide = pyroflows.AutoIAF(problem.model)
    result = pyroflows.fit(problem.model, guide, *problem.args, steps=20, report_samples=100)
    assert "laplace" in result.settings["guide"]["start"]
    assert "start: laplace" in str(result)
    assert pyroflows.AutoIAF(problem.model, init="median").settings()["init"] == "median"
    with pytest.raises(ValueError, match="init must be 'laplace'"):
        pyroflows.AutoIAF(problem.model, init="map")


def test_a_poor_laplace_start_loses_to_a_narrower_one_by_elbo():
    """The banana's Laplace approximation is far too wide along its curve (KL ≈ 20 nats); a
    shrunk one or the init_loc_fn start has a higher ELBO, and the guide starts there."""
    problem = banana()
    guide = pyroflows.AutoIAF(problem.model)
    guide()
    assert guide.start.method != "laplace"
    elbos = {k: v for k, v in guide.start.details.items() if k.startswith("elbo_")}
    assert elbos["elbo_laplace"] < elbos[f"elbo_{guide.start.method}"] - 5
    assert "the best ELBO of the candidate starts" in guide.start.reason


def test_subsampled_plates_fall_back_to_init_loc_fn_with_the_reason():
    data = torch.randn(100)

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(data), subsample_size=10) as index:
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data[index])

    guide = pyroflows.AutoIAF(model)
    guide(data)
    assert guide.start.method == "init_loc_fn"
    assert "plate 'data' subsamples the data" in guide.start.reason


def test_a_singular_hessian_falls_back_with_the_reason():
    """log p(x) = -x⁴: the mode is at 0, where the curvature vanishes. L-BFGS stops near 0,
    where the curvature 12x² is zero or tiny: either the curvature is refused, or the Laplace
    candidate (a Gaussian wider than the posterior by orders of magnitude) loses by ELBO."""

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("quartic", 0.5 * x**2 - x**4)

    guide = pyroflows.AutoIAF(model)
    guide()
    assert guide.start.method == "init_loc_fn"
    elbos = guide.start.details
    assert "not positive" in guide.start.reason or (
        elbos["elbo_laplace"] < elbos["elbo_init_loc_fn"] - 100
    )


def test_a_hessian_singular_in_floating_point_gets_no_laplace_covariance():
    """A positive definite Hessian gives ``H⁻¹`` and its Cholesky factor; one that is singular
    up to rounding (a continuum of modes) gives none, whether or not its Cholesky factor
    happens to exist, so the start does not depend on the machine's rounding."""
    hessian = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    laplace = start_module._laplace_covariance(hessian)
    assert laplace is not None
    assert torch.allclose(laplace.scale_tril @ laplace.scale_tril.T, torch.linalg.inv(hessian))
    assert torch.allclose(laplace.sd, torch.linalg.inv(hessian).diagonal().sqrt())
    assert laplace.condition == pytest.approx(float(torch.linalg.cond(hessian)))
    normal = torch.tensor([0.6, 0.8], dtype=torch.float64)  # a ring's radial direction
    for tangential in (0.0, 1e-14, 1e-11):
        singular = 50.0 * torch.outer(normal, normal) + tangential * torch.eye(2).double()
        assert start_module._laplace_covariance(singular) is None, tangential
    assert start_module._laplace_covariance(torch.diag(torch.tensor([1e6, 1.0]).double()))


def test_a_ring_of_modes_starts_from_the_hessian_diagonal_with_the_reason(ring_model):
    """A ring density is constant along its circle: at the MAP the Hessian is singular, the
    full Laplace start is refused and the reason says so (one machine's rounding once made it
    a "mode" and another's raised inside the Cholesky factorization)."""

    for seed in range(3):
        pyro.set_rng_seed(seed)
        guide = pyroflows.AutoIAF(ring_model)
        guide()
        candidates = [k for k in guide.start.details if k.startswith("elbo_")]
        assert "elbo_laplace" not in candidates, candidates
        assert any(k.startswith("elbo_laplace-diagonal") for k in candidates), candidates
        assert "singular" in guide.start.reason, guide.start.reason


def test_narrowed_laplace_starts_compete_at_an_isolated_mode():
    """The counterpart of the ring: at a mode with a positive-definite Hessian, the Laplace
    start and its copies narrowed by every ``LAPLACE_SHRINK_FACTORS`` factor compete."""
    problem = banana()
    guide = pyroflows.AutoIAF(problem.model)
    guide(*problem.args)
    candidates = [k for k in guide.start.details if k.startswith("elbo_")]
    for factor in pyroflows.guides.base.LAPLACE_SHRINK_FACTORS:
        assert f"elbo_laplace×{factor:g}" in candidates, candidates


def test_where_the_map_is_no_mode_the_init_loc_fn_candidate_says_why(ring_model):
    """On a ring the ``init_loc_fn`` candidate can win the start's ELBO comparison; its reason
    must then still say that the MAP was no isolated mode, not only name the values."""
    pyro.set_rng_seed(0)
    guide = pyroflows.AutoIAF(ring_model)
    guide()
    init_loc = guide._init_loc()
    candidates = start_module.laplace_start(guide, init_loc, torch.full_like(init_loc, 0.1), (), {})
    fallback = candidates[-1]
    assert fallback.method == "init_loc_fn"
    assert "no isolated mode" in fallback.reason and "singular" in fallback.reason
    assert all(c.details.get(start_module.NOT_AN_ISOLATED_MODE) for c in candidates)


def test_a_failed_map_search_falls_back_with_the_reason():
    """A log density that grows without bound: L-BFGS runs off to infinity."""

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("unbounded", torch.exp(2.0 * x))

    guide = pyroflows.AutoIAF(model)
    guide()
    assert guide.start.method == "init_loc_fn"
    assert "MAP search failed" in guide.start.reason or "not positive" in guide.start.reason


def test_above_the_threshold_the_hessian_diagonal_is_used(monkeypatch):
    monkeypatch.setattr(pyroflows.guides.base, "FULL_HESSIAN_MAX_DIM", 2)
    problem = linear_regression(dim=4, correlation=0.0)
    guide = pyroflows.AutoIAF(problem.model)
    guide(*problem.args)
    assert guide.start.method.startswith("laplace-diagonal")
    assert "full_hessian_max_dim = 2" in guide.start.reason
    # Hutchinson's estimate of the diagonal is close to the exact curvature here
    exact = torch.linalg.inv(problem.posterior_cov).diagonal().rsqrt().float()
    assert torch.allclose(guide.start.scale, exact, rtol=0.1)


def test_the_laplace_start_leaves_the_global_random_state_alone():
    problem = linear_regression(dim=3)
    guide = pyroflows.AutoIAF(problem.model)
    guide._setup_prototype(*problem.args)  # includes the init_loc_fn's own draws
    before = torch.get_rng_state()
    init_loc = guide._init_loc()
    start_module.laplace_start(guide, init_loc, torch.full_like(init_loc, 0.1), problem.args, {})
    assert torch.equal(torch.get_rng_state(), before)


def test_batched_log_joint_matches_the_one_point_version():
    """The start's ELBO scores its draws in one vectorized model run; it must agree with one
    run per draw, with plates nested and a constrained site."""
    from test_arviz_export import SIGMA, Y, eight_schools

    guide = pyroflows.AutoIAF(eight_schools, init="median")
    guide(Y, SIGMA)
    z = guide.sample_unconstrained(7, Y, SIGMA)
    batched = start_module.batched_log_joint(guide, z, (Y, SIGMA), {})
    one_by_one = torch.stack(
        [start_module.unconstrained_log_joint(guide, point, (Y, SIGMA), {}) for point in z]
    )
    assert torch.allclose(batched, one_by_one, rtol=1e-5, atol=1e-4)


def _summing_model(x, y):
    """Runs without error inside a plate of points, but ``w.sum()`` adds up every point's w."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
    pyro.sample("total", dist.Normal(w.sum(), 1.0), obs=y.sum())


@pytest.mark.parametrize("model_name", ["summing", "flattening", "matmul"])
def test_points_log_joint_of_a_model_that_is_not_vectorization_safe(model_name):
    """The defensive bound, the mode check, the k-hat recheck and the start's ELBO score their
    points with ``points_log_joint``. A model that mixes points inside a plate (``w.sum()``, or
    a flattened ``w`` that scores every point with the first point's value) must fall back to
    plain runs, not return a density that is wrong for every point (before, the summing model
    got -18.1 where a plain run gives -11.7)."""
    from test_full_data_diagnostics import flattening_model, matmul_model

    model = {"summing": _summing_model, "flattening": flattening_model}.get(
        model_name, matmul_model
    )
    problem = linear_regression(dim=3, num_data=30, dtype=torch.float64)
    guide = pyroflows.AutoIAF(model, init="median")
    guide(*problem.args)
    z = guide.sample_unconstrained(6, *problem.args)
    scored = start_module.points_log_joint(guide, z, problem.args, {})
    one_by_one = torch.stack(
        [start_module.unconstrained_log_joint(guide, point, problem.args, {}) for point in z]
    )
    assert scored is not None and torch.allclose(scored, one_by_one, rtol=1e-10, atol=1e-10)


def test_the_agreement_check_leaves_the_random_state_alone():
    """Each model run draws (Pyro's init_loc_fn wrapper draws before the conditioned values
    reach it). The agreement check's plain runs must not change the global random state, so a
    fit's draws after the start are those of before the check existed: the global state after
    ``points_log_joint`` is the one after the batched run alone."""
    problem = linear_regression(dim=3, num_data=30)
    guide = pyroflows.AutoIAF(problem.model, init="median")
    guide(*problem.args)
    z = guide.sample_unconstrained(6, *problem.args)
    before = torch.get_rng_state()
    start_module.batched_log_joint(guide, z, problem.args, {})
    after_batched_run = torch.get_rng_state()
    torch.set_rng_state(before)
    start_module.points_log_joint(guide, z, problem.args, {})
    assert torch.equal(torch.get_rng_state(), after_batched_run)


def test_a_degenerate_map_falls_back_with_the_reason():
    """Before, the start was that degenerate point (its ×0.25 version won by ELBO) and AutoNAF
    in the README's plain loop (Adam 1e-2, Trace_ELBO) reached draws |z| ≈ 6000 and an
    infinite loss at step 111 (seed 0); now the start says why it fell back, and a Gaussian
    on the search's way down the funnel (a path start) or the init_loc_fn start is used."""
    # 100 rows, 20 coefficients, 3 of them non-zero: L-BFGS from the median ends deep in the
    # funnel (log tau ≈ -20, Laplace sds down to 1e-14) instead of failing
    model, args = horseshoe_regression()
    pyro.set_rng_seed(0)
    for guide_class in (pyroflows.AutoNAF, pyroflows.AutoIAF):
        guide = guide_class(model)
        guide(*args)
        assert guide.start.method.startswith(("path", "init_loc_fn"))
        reason = guide.start.reason
        assert reason.startswith("no Laplace start: ")
        # from the other guide's median start, the search fails on a non-finite log joint
        assert ("degenerate point" in reason and "funnel" in reason) or (
            "MAP search failed" in reason
        )


def test_a_search_down_a_funnel_starts_from_a_gaussian_on_its_path():
    """The horseshoe regression's MAP search ends degenerate; the Gaussians at points of its
    path compete by ELBO with the init_loc_fn start and win by far (measured: about -190
    against -2700 nats), the chosen one is whitened (its scale estimates the posterior's),
    and no point of the degenerate end is used."""
    model, args = horseshoe_regression()
    guide = pyroflows.AutoIAF(model)
    guide(*args)
    start = guide.start
    assert start.method.startswith("path"), start.reason
    assert start.whiten
    assert "a Gaussian at point" in start.reason and "Hessian" in start.reason
    elbos = {k: v for k, v in start.details.items() if k.startswith("elbo_")}
    assert elbos[f"elbo_{start.method}"] > elbos["elbo_init_loc_fn"] + 100
    assert start.details["path_index"] < start.details["path_points"] - 1
    sd = start.scale.diagonal() if start.scale.dim() == 2 else start.scale
    assert start_module._degenerate(start.loc.double(), sd.double(), torch.float32) is None


def test_path_points_are_the_first_the_powers_of_two_and_the_last():
    assert start_module._path_indices(0) == []
    assert start_module._path_indices(1) == [0]
    assert start_module._path_indices(6) == [0, 1, 2, 4, 5]
    many = start_module._path_indices(5000)
    assert len(many) == start_module.PATH_MAX_STARTS
    assert many[:4] == [0, 1, 2, 4] and many[-1] == 4999


def test_path_starts_skip_points_without_a_positive_curvature():
    """log p(x) = -x⁴/4 + x²/2 (per coordinate) has curvature 3x² - 1 for the negative: not
    positive at |x| < 0.58, positive beyond, where the start is N(x, 1/(3x² - 1))."""

    def negative(z):
        return (z**4 / 4 - z**2 / 2).sum()

    path = [torch.full((2,), value, dtype=torch.float64) for value in (0.0, 0.3, 2.0, 1.0)]
    starts = start_module._path_starts(negative, path, "why", torch.float32)
    assert [start.method for start in starts] == ["path2", "path3"]
    expected = torch.tensor([1 / 11.0, 1 / 2.0]).sqrt()
    for start, sd in zip(starts, expected, strict=True):
        assert torch.allclose(start.scale.diagonal(), sd.expand(2), rtol=1e-5)
        assert torch.all(start.scale.tril(-1) == 0)
        assert start.reason.startswith("why; instead a Gaussian at point")


def test_a_failed_search_keeps_its_path():
    """A search that turns non-finite still hands back the points it had evaluated."""

    def negative(z):
        value = (z - 3.0).pow(2).sum()
        return value if float(z.detach().max()) < 2.0 else value * float("nan")

    path: list[torch.Tensor] = []
    with pytest.raises(FloatingPointError):
        start_module._map_by_lbfgs(negative, torch.zeros(2, dtype=torch.float64), 50, path)
    assert len(path) >= 1 and torch.equal(path[0], torch.zeros(2, dtype=torch.float64))


def test_a_well_resolved_narrow_start_is_not_degenerate():
    """The spacing test is relative to float32 at the coordinate: a sd of 1e-3 at 1000 (the
    ill-conditioned benchmark Gaussian) is 8 spacings wide and kept; 1e-14 at 20 is not."""
    z = torch.tensor([1000.0, 20.0], dtype=torch.float64)
    assert start_module._degenerate(z[:1], torch.tensor([1e-3]), torch.float32) is None
    reason = start_module._degenerate(z, torch.tensor([1e-3, 1e-14]), torch.float32)
    assert "coordinate 1" in reason
