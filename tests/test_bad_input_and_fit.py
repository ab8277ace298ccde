"""Bad input gets a clear error; fit stops on a non-finite loss without losing state; the
free-energy report agrees with closed forms."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows import AutoIAF, AutoNAF, GuideSetupError, NonFiniteLossError, fit, free_energy_report
from pyroflows.models import linear_regression


def test_discrete_latent_site_is_named():
    def model():
        pyro.sample("weight", dist.Normal(0.0, 1.0))
        pyro.sample("cluster", dist.Categorical(torch.ones(3) / 3))

    with pytest.raises(ValueError, match=r"discrete latent site\(s\) \['cluster'\]"):
        AutoIAF(model)()


def test_model_without_latent_sites():
    def model(data):
        pyro.sample("obs", dist.Normal(0.0, 1.0), obs=data)

    # Pyro's autoguides raise RuntimeError here; pyroflows before 0.2 raised ValueError: both match
    with pytest.raises(RuntimeError, match="found no latent variables.*Every pyro.sample"):
        AutoIAF(model)(torch.tensor(0.5))
    with pytest.raises(ValueError, match="found no latent variables"):
        AutoIAF(model)(torch.tensor(0.5))


def test_guide_used_before_it_has_seen_the_model():
    problem = linear_regression(dim=3)
    guide = AutoIAF(problem.model)
    with pytest.raises(GuideSetupError, match="median was called before the guide has seen"):
        guide.median()
    with pytest.raises(GuideSetupError, match="get_transform was called before"):
        guide.get_transform()
    # with the model's arguments, the same call sets the guide up
    assert guide.median(*problem.args)["w"].shape == (3,)


def test_guide_called_with_the_wrong_arguments():
    problem = linear_regression(dim=3)
    guide = AutoIAF(problem.model)
    with pytest.raises(GuideSetupError, match=r"arguments \(str\), failed"):
        guide("not the data")


def test_local_latent_in_subsampled_plate_is_refused_by_name():
    def model(data):
        with pyro.plate("data", 100, subsample_size=10) as index:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(z, 1.0), obs=data[index])

    with pytest.raises(ValueError, match=r"local latent site 'z' inside the subsampled plate"):
        AutoIAF(model)(torch.randn(100))


def test_global_latents_with_a_subsampled_data_plate_are_fine():
    data = 3.0 + torch.randn(200)

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(data), subsample_size=20) as index:
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data[index])

    guide = AutoIAF(model)
    fit(model, guide, data, steps=800, progress=False, report_samples=None)
    assert abs(float(guide.median(data)["loc"]) - float(data.mean())) < 0.3


def test_bad_guide_arguments():
    with pytest.raises(ValueError, match="init_scale"):
        AutoIAF(lambda: None, init_scale=0.0)
    with pytest.raises(ValueError, match="update"):
        AutoIAF(lambda: None, update="sigmoid")
    with pytest.raises(ValueError, match="num_transforms"):
        AutoIAF(lambda: None, num_transforms=0)
    for guide_class in (AutoIAF, AutoNAF):  # refused at construction, not at the first call
        with pytest.raises(ValueError, match="permutation must be"):
            guide_class(lambda: None, permutation="reversed")


def _switchable_model(state):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        state["calls"] += 1
        if state["calls"] > state["poison_after"]:
            pyro.factor("poison", x * float("nan"))

    return model


@pytest.mark.parametrize("validation", [False, True])
def test_nan_loss_names_the_step_and_keeps_the_last_finite_parameters(validation):
    pyro.enable_validation(validation)
    state = {"calls": 0, "poison_after": math.inf}
    model = _switchable_model(state)
    # not the exact Laplace start: there the default (sticking-the-landing) gradients vanish
    guide = AutoIAF(model, init="median")
    fit(model, guide, steps=20, progress=False, report_samples=None)
    before = {k: v.detach().clone() for k, v in guide.state_dict().items()}

    # fit runs the model a few times before its first step (plate nesting, vectorization
    # check), then once per step (vectorized particles): count the first, poison step 5
    # (the start check, off here, runs it again after the last step)
    calls = state["calls"]
    fit(model, guide, steps=1, progress=False, report_samples=None, compare_start=False)
    before_first_step = state["calls"] - calls - 1
    before = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    state["poison_after"] = state["calls"] + before_first_step + 4
    message = "a NaN reached a distribution" if validation else "the loss became nan"
    with pytest.raises(NonFiniteLossError, match=rf"{message}.* at step 5 ") as caught:
        fit(model, guide, steps=20, progress=False, report_samples=None)
    pyro.enable_validation(True)
    error = caught.value
    assert error.step == 5
    assert len(error.result.free_energy) == 4
    assert error.result.settings["guide"]["num_transforms"] == 2
    assert all(math.isfinite(f) for f in error.result.free_energy)
    after = guide.state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in after.values())
    # four good updates moved the parameters, the poisoned one did not add NaN to them
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_report_of_the_exact_posterior_is_exact():
    """With q equal to the posterior, log w = log Z for every draw: F = -log Z and gap = 0."""
    problem = linear_regression(dim=4, dtype=torch.float64)
    mean, cov = problem.posterior_mean, problem.posterior_cov

    def exact_guide(x, y):
        pyro.sample("w", dist.MultivariateNormal(mean, cov))

    report = free_energy_report(problem.model, exact_guide, *problem.args, num_samples=500)
    assert report.free_energy == pytest.approx(-problem.log_evidence, abs=1e-8)
    assert report.kl_lower_bound == pytest.approx(0.0, abs=1e-8)
    assert report.ess == pytest.approx(500, rel=1e-6)

    def wide_guide(x, y):  # too wide by 50%: a poorer but still usable guide
        pyro.sample("w", dist.MultivariateNormal(mean, 2.25 * cov))

    report = free_energy_report(problem.model, wide_guide, *problem.args, num_samples=4000)
    exact_kl = 0.5 * 4 * (2.25 - 1 - math.log(2.25))  # KL(N(m, 2.25 S) || N(m, S))
    assert problem.log_evidence + report.free_energy == pytest.approx(exact_kl, abs=0.1)
    assert 0 < report.kl_lower_bound < exact_kl + 0.05
    assert abs(report.iw_bound - problem.log_evidence) < 0.05


def test_report_flags_a_poor_guide_with_a_high_khat():
    problem = linear_regression(dim=4, dtype=torch.float64)
    mean, cov = problem.posterior_mean, problem.posterior_cov

    def narrow_guide(x, y):  # too narrow by a factor 3: heavy-tailed weights
        pyro.sample("w", dist.MultivariateNormal(mean, cov / 9))

    report = free_energy_report(problem.model, narrow_guide, *problem.args, num_samples=4000)
    assert report.khat > 0.7 and report.verdict == "unreliable"
    text = str(report)
    assert "PSIS k-hat" in text and "unreliable" in text


def test_an_exact_guide_is_good_not_unreliable():
    """Log weights equal up to float32 rounding have no tail: ArviZ's Pareto fit says k-hat = inf
    for them; the report says -inf, and "good"."""
    log_w = torch.full((4000,), -40.7) + 1e-6 * torch.randn(4000)
    report = pyroflows.diagnostics.FreeEnergyReport.from_log_weights(log_w)
    assert report.khat == -math.inf and report.verdict == "good"
    assert abs(report.ess - 4000) < 1


def test_a_guide_too_large_for_its_dimension_warns_with_its_size(monkeypatch):
    """AutoNAF's conditioners grow with D (about 100M parameters at D = 2000); the guide says so
    when it is built, with the options that shrink it. A small threshold stands in for D."""
    from pyroflows.guides import LargeGuideWarning, base

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(6), 1.0).to_event(1))

    monkeypatch.setattr(base, "LARGE_GUIDE_PARAMETERS", 1000)
    with pytest.warns(LargeGuideWarning, match=r"AutoNAF has \d+M parameters for 6 latent"):
        AutoNAF(model, init="median")()
    monkeypatch.setattr(base, "LARGE_GUIDE_PARAMETERS", 10**9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeGuideWarning)
        AutoNAF(model, init="median")()


def test_a_non_finite_step_while_tempering_ends_the_tempering_and_restarts_from_the_start():
    """Under tempering (β < 1) a non-finite loss is read as the flattened target having let
    the guide spread to where the model overflows: the tempering ends, the guide goes back to
    its start (the step is redone from there) with a fresh optimizer, no learning-rate backoff
    is spent, and the settings say when."""
    state = {"calls": 0, "poisoned": -1, "seen": None}

    def model():
        x = pyro.sample("x", dist.Normal(3.0, 1.0))
        state["calls"] += 1
        if state["calls"] == state["poisoned"]:
            pyro.factor("poison", x * float("nan"))
        if state["calls"] == state["poisoned"] + 1:  # the redone step: what the guide holds
            state["seen"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    guide = AutoIAF(model)
    settings = {"lr": 0.05, "progress": False, "report_samples": None, "compare_start": False}
    fit(model, guide, steps=1, **settings)  # the guide's set-up runs happen once, here
    start = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    state["calls"], state["poisoned"] = 0, 40
    result = fit(model, guide, steps=60, anneal_steps=50, **settings)
    ended = result.settings["tempering_ended"]
    assert 0.05 < ended["beta"] < 1.0 and "nan" in ended["problem"].lower()
    assert "lr_backoffs" not in result.settings
    assert len(result.free_energy) == 60 and all(math.isfinite(f) for f in result.free_energy)
    assert state["seen"] is not None and set(state["seen"]) == set(start)
    for name, value in start.items():
        assert torch.equal(state["seen"][name], value), name
    # Adam's moments restarted there too: every parameter's optimizer has counted only the
    # steps after the tempering ended (steps are numbered from 1)
    applied_after = len(result.free_energy) - (ended["step"] - 1)
    assert 0 < applied_after < len(result.free_energy)
    for name, optimizer_state in result.optimizer_state.items():
        assert [s["step"] for s in optimizer_state["state"].values()] == [applied_after], name
    # and the fit moved on from there
    assert any(not torch.equal(pyro.param(name).detach(), value) for name, value in start.items())


def test_a_transient_non_finite_step_is_retried_at_a_smaller_learning_rate():
    """One poisoned model run (an overshooting draw) costs a retry at lr / 3, not the fit; the
    history holds only finite steps and the settings say what happened."""
    from pyroflows.infer.fit import NONFINITE_BACKOFF_FACTOR

    state = {"calls": 0, "poisoned": -1}

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        state["calls"] += 1
        if state["calls"] == state["poisoned"]:
            pyro.factor("poison", x * float("nan"))

    guide = AutoIAF(model)
    # counting model runs: without the start check, which runs the model after the last step
    settings = {"lr": 0.01, "progress": False, "report_samples": None, "compare_start": False}
    fit(model, guide, steps=1, **settings)  # the guide's own set-up runs happen once, here
    counts = []
    for steps in (2, 3):  # the model runs of a fit's set-up, and of one step
        state["calls"] = 0
        assert "lr_backoffs" not in fit(model, guide, steps=steps, **settings).settings
        counts.append(state["calls"])
    per_step = counts[1] - counts[0]
    state["calls"], state["poisoned"] = 0, counts[0] + 1  # the first run of step 3
    result = fit(model, guide, steps=6, **settings)
    backoffs = result.settings["lr_backoffs"]
    assert len(backoffs) == 1 and backoffs[0]["step"] == 3, (per_step, backoffs)
    assert "nan" in backoffs[0]["problem"].lower()
    assert backoffs[0]["lr"] == pytest.approx(0.01 / NONFINITE_BACKOFF_FACTOR)
    assert len(result.free_energy) == 6
    assert all(math.isfinite(f) for f in result.free_energy)
