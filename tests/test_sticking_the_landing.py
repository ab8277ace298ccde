"""Sticking-the-landing gradients (Roeder, Wu & Duvenaud 2017; issue 10, item 3): the guide's
``sticking_the_landing`` switch and ``fit(gradients=...)``. The estimator's mathematics (the
value kept, the path gradient equal to that of log q at frozen parameters) is checked for every
flow family in ``test_transform_contract.py``."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import AutoNormal

import pyroflows
from pyroflows import fit
from pyroflows.distributions import FlowDistribution
from pyroflows.models import banana, linear_regression


def _elbo_gradients(problem, guide) -> tuple[float, float]:
    """The loss and the largest parameter gradient of one 16-particle ELBO step."""
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss_and_grads(problem.model, guide, *problem.args)
    largest = max(
        float(parameter.grad.abs().max())
        for parameter in guide.parameters()
        if parameter.grad is not None
    )
    return float(loss), largest


@pytest.mark.parametrize(
    "guide_class",
    [pyroflows.AutoIAF, pyroflows.AutoRealNVP, pyroflows.AutoNSF, pyroflows.AutoPlanar],
)
def test_the_gradient_vanishes_at_the_exact_posterior(guide_class):
    """A Gaussian posterior with its exact Laplace start: every draw's path gradient is
    ∇_x(log p − log q)·∂x/∂φ = 0, so the STL gradient is zero up to float32 rounding of the
    start (measured 7e-7), while the plain estimator's score term is of order 0.1-1."""
    problem = linear_regression(dim=5)
    largest = {}
    for stl in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = guide_class(problem.model)
        guide(*problem.args)
        guide.sticking_the_landing = stl
        loss, largest[stl] = _elbo_gradients(problem, guide)
        if stl:
            stl_loss = loss
    assert loss == pytest.approx(stl_loss, rel=1e-6), "the same draws, the same ELBO value"
    assert largest[True] < 1e-4, largest
    assert largest[False] > 0.05, largest


def _fit(problem, guide, **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    options = {"steps": 30, "report_samples": None, "progress": False, **options}
    return fit(problem.model, guide, *problem.args, **options)


def test_fit_records_the_estimator_and_restores_the_guide_switch():
    problem = banana()
    guide = pyroflows.AutoIAF(problem.model)
    result = _fit(problem, guide)
    assert result.settings["gradients"] == "stl"  # auto: a pyroflows guide of 2 dimensions
    assert guide.sticking_the_landing == "auto", "fit sets it for its own steps only"
    guide = pyroflows.AutoIAF(problem.model)
    assert _fit(problem, guide, gradients="reparameterized").settings["gradients"] == (
        "reparameterized"
    )
    pyro.clear_param_store()
    normal = AutoNormal(problem.model)
    assert _fit(problem, normal).settings["gradients"] == "reparameterized"
    # the multimodal (tempered) families keep the plain gradients unless asked
    naf = pyroflows.AutoNAF(problem.model)
    assert _fit(problem, naf).settings["gradients"] == "reparameterized"
    naf = pyroflows.AutoNAF(problem.model)
    assert _fit(problem, naf, gradients="stl").settings["gradients"] == "stl"


def test_auto_uses_the_plain_estimator_above_the_dimension_threshold(monkeypatch):
    monkeypatch.setattr(pyroflows.guides.path_gradients, "STL_MAX_DIM", 1)  # its one home
    problem = banana()
    result = _fit(problem, pyroflows.AutoIAF(problem.model))
    assert result.settings["gradients"] == "reparameterized"
    result = _fit(problem, pyroflows.AutoIAF(problem.model), gradients="stl")
    assert result.settings["gradients"] == "stl", "asked for by name: used at any dimension"


def test_bad_gradients_are_named():
    problem = banana()
    with pytest.raises(ValueError, match="gradients must be one of 'auto', 'stl'"):
        _fit(problem, pyroflows.AutoIAF(problem.model), gradients="path")
    pyro.clear_param_store()
    with pytest.raises(ValueError, match='gradients="stl" cannot.*AutoNormal is not a pyroflows'):
        _fit(problem, AutoNormal(problem.model), gradients="stl")


def test_objectives_that_need_the_score_term_or_jit_keep_the_plain_gradients():
    """JIT cannot trace the batched Jacobian, and an importance-weighted objective (Rényi)
    needs the score term STL drops (Tucker et al. 2019): "auto" then uses the plain
    gradients, "stl" is an error that says why, and in a plain loop the traced guide names the
    switch to turn off."""
    problem = banana()
    for elbo in (JitTrace_ELBO(), RenyiELBO(alpha=0.5, num_particles=2)):
        pyro.clear_param_store()
        result = _fit(problem, pyroflows.AutoIAF(problem.model), elbo=elbo, steps=5)
        assert result.settings["gradients"] == "reparameterized", type(elbo).__name__
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="torch.jit cannot trace"):
        _fit(problem, pyroflows.AutoIAF(problem.model), elbo=JitTrace_ELBO(), gradients="stl")
    with pytest.raises(ValueError, match="RenyiELBO is not the plain ELBO"):
        _fit(problem, pyroflows.AutoIAF(problem.model), elbo=RenyiELBO(), gradients="stl")
    pyro.clear_param_store()
    guide = pyroflows.AutoIAF(problem.model)
    guide.sticking_the_landing = True
    svi = SVI(problem.model, guide, pyro.optim.Adam({"lr": 1e-2}), JitTrace_ELBO())
    with pytest.raises(RuntimeError, match="sticking_the_landing cannot be traced"):
        svi.step(*problem.args)


def test_a_resumed_fit_keeps_its_estimator():
    problem = banana()
    guide = pyroflows.AutoIAF(problem.model)
    first = _fit(problem, guide, gradients="reparameterized", steps=40)
    with pytest.raises(ValueError, match="gradients='stl' differs from the resumed run's"):
        fit(problem.model, guide, *problem.args, resume=first, gradients="stl", steps=60)
    resumed = fit(problem.model, guide, *problem.args, resume=first, steps=60, progress=False)
    assert resumed.settings["gradients"] == "reparameterized"
    assert resumed.steps == 60


def test_a_step_with_the_switch_on_trains_like_one_without_on_average():
    """Both estimators are unbiased: from the same start on a banana, 150 steps of each reach
    free energies within 0.15 nats (their difference is the optimizer's noise; the start is
    ~2 nats worse than either)."""
    problem = banana()
    ends = {}
    for gradients in ("stl", "reparameterized"):
        guide = pyroflows.AutoIAF(problem.model, init="median")
        result = _fit(problem, guide, gradients=gradients, steps=150, report_samples=4000)
        ends[gradients] = float(result.report.free_energy)
    assert abs(ends["stl"] - ends["reparameterized"]) < 0.15, ends
    assert torch.isfinite(torch.tensor(list(ends.values()))).all()


class _Scale(torch.distributions.Transform):
    """``x = u · exp(log_scale)``, its log-determinant from ``log_scale`` (exact even where
    ``exp`` underflows, as in a saturated sigmoidal flow)."""

    bijective = True
    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, log_scale):
        super().__init__()
        self.log_scale = log_scale

    def _call(self, u):
        return u * torch.exp(self.log_scale)

    def _inverse(self, x):
        return x * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, u, x):
        return self.log_scale.sum(-1).expand(u.shape[:-1])


def test_a_jacobian_float64_cannot_solve_keeps_the_plain_gradient():
    """A coordinate contracted by e^-200 has a Jacobian entry of exactly 0 in float32 (its
    log-determinant is still -200): that draw's log q keeps its plain gradient instead of a
    NaN from the singular solve."""
    log_scale = torch.tensor([0.0, -200.0], requires_grad=True)
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    gradients = {}
    for stl in (True, False):
        torch.manual_seed(0)
        q = FlowDistribution(base, [_Scale(log_scale)], sticking_the_landing=stl)
        x = q.rsample((4,))
        (gradients[stl],) = torch.autograd.grad(q.log_prob(x).sum(), log_scale)
    assert torch.isfinite(gradients[True]).all()
    assert torch.equal(gradients[True], gradients[False])


def _what_the_draws_used(guide, run) -> list[bool]:
    """What ``guide._draws_stick_the_landing()`` answered for every draw made while ``run()``."""
    answers: list[bool] = []
    ask = guide._draws_stick_the_landing

    def spy() -> bool:
        answers.append(ask())
        return answers[-1]

    guide._draws_stick_the_landing = spy
    try:
        run()
    finally:
        del guide._draws_stick_the_landing
    return answers


@pytest.mark.parametrize(
    ("elbo", "expected"),
    [
        (Trace_ELBO(), True),
        (Trace_ELBO(num_particles=4, vectorize_particles=True), True),
        (TraceMeanField_ELBO(), True),
        (TraceGraph_ELBO(), True),
        (RenyiELBO(alpha=0.5, num_particles=2), False),
        (JitTrace_ELBO(), False),
    ],
    ids=["trace", "vectorized", "meanfield", "graph", "renyi", "jit"],
)
def test_auto_uses_path_gradients_exactly_under_a_plain_elbo(elbo, expected):
    """The default ``"auto"`` finds the ELBO that runs the guide: path gradients under the plain
    ELBO in a user's own loop (unbiased there), the plain ones under an importance-weighted or a
    JIT-compiled ELBO (biased, untraceable); a JIT ELBO with "auto" trains without an error."""
    problem = banana()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyroflows.AutoIAF(problem.model)
    guide(*problem.args)
    assert guide.sticking_the_landing == "auto"
    svi = SVI(problem.model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    answers = _what_the_draws_used(guide, lambda: svi.step(*problem.args))
    assert answers and set(answers) == {expected}


def test_auto_keeps_plain_gradients_outside_an_elbo_and_for_multimodal_guides():
    problem = banana()
    pyro.clear_param_store()
    guide = pyroflows.AutoIAF(problem.model)
    guide(*problem.args)
    assert _what_the_draws_used(guide, lambda: guide(*problem.args)) == [False]
    naf = pyroflows.AutoNAF(problem.model)
    naf(*problem.args)
    loss = Trace_ELBO().loss_and_grads
    assert set(_what_the_draws_used(naf, lambda: loss(problem.model, naf, *problem.args))) == {
        False
    }


@pytest.mark.parametrize("value", [1, 0.0, "yes", None])
def test_sticking_the_landing_accepts_true_false_or_auto(value):
    guide = pyroflows.AutoIAF(banana().model)
    with pytest.raises(ValueError, match='True, False or "auto"'):
        guide.sticking_the_landing = value
