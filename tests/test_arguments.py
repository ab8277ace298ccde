"""Every argument of fit, diagnose, the export and the report is checked before any work, with
an error that names the argument and its accepted range; NaN or infinite data are named as such;
Pyro's INFO lines stay quiet; the report, diagnose and the export share one default draw count."""

import inspect
import logging
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows import (
    DEFAULT_NUM_DRAWS,
    AutoIAF,
    NonFiniteDataError,
    diagnose,
    fit,
    free_energy_report,
    to_inference_data,
)
from pyroflows.infer import importance_log_likelihood

Y = torch.tensor([0.3, -0.5, 1.2, 0.8, 0.1])


def model(y):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=y)


BAD_FIT_ARGUMENTS = [
    ({"num_particles": 0}, ValueError, r"num_particles must be a whole number >= 1, got 0"),
    ({"num_particles": -1}, ValueError, r"num_particles must be a whole number >= 1, got -1"),
    ({"num_particles": 2.0}, TypeError, r"num_particles must be a whole number"),
    ({"lr": 0.0}, ValueError, r"lr must be a number in \(0, ∞\), got 0.0"),
    ({"lr": -1e-2}, ValueError, r"lr must be a number in \(0, ∞\), got -0.01"),
    ({"lr": math.nan}, ValueError, r"lr must be a number in \(0, ∞\)"),
    ({"lr": math.inf}, ValueError, r"lr must be a number in \(0, ∞\)"),
    ({"lr": "0.01"}, TypeError, r"lr must be a number"),
    ({"clip_norm": 0.0}, ValueError, r"clip_norm must be a number in \(0, ∞\]"),
    ({"clip_norm": -1.0}, ValueError, r"clip_norm must be a number in \(0, ∞\]"),
    ({"steps": 2.5}, TypeError, r"steps must be a whole number >= 1, got 2.5 \(float\)"),
    ({"steps": 0}, ValueError, r"steps must be a whole number >= 1, got 0"),
    ({"steps": True}, TypeError, r"steps must be a whole number"),
    ({"lr_decay": 0.0}, ValueError, r"lr_decay must be a number in \(0, 1\]"),
    ({"lr_decay": 1.5}, ValueError, r"lr_decay must be a number in \(0, 1\]"),
    ({"anneal_steps": -1}, ValueError, r"anneal_steps must be a whole number >= 0"),
    ({"anneal_steps": 30, "steps": 20}, ValueError, r"anneal_steps \(30\) must be at most"),
    ({"anneal_from": 0.0}, ValueError, r"anneal_from must be a number in \(0, 1\]"),
    ({"report_samples": 50}, ValueError, r"report_samples must be a whole number >= 100.*k-hat"),
    ({"checkpoint_every": 5}, ValueError, r"checkpoint_every needs checkpoint=path"),
    ({"checkpoint": "x.pt", "checkpoint_every": 0}, ValueError, r"checkpoint_every must be"),
    ({"elbo": "Trace_ELBO"}, TypeError, r"elbo must be a pyro.infer.ELBO"),
    ({"progress": "yes"}, TypeError, r"progress must be True or False"),
    ({"vectorize_particles": 1}, TypeError, r"vectorize_particles must be True or False"),
    ({"resume": 42}, TypeError, r"resume must be a FitResult or the path of a checkpoint"),
]


@pytest.mark.parametrize(
    "arguments, error, message", BAD_FIT_ARGUMENTS, ids=[str(a[0]) for a in BAD_FIT_ARGUMENTS]
)
def test_fit_names_a_bad_argument_before_doing_anything(arguments, error, message, tmp_path):
    guide = AutoIAF(model)
    with pytest.raises(error, match=message):
        fit(model, guide, Y, **{"steps": 20, **arguments})
    assert guide.prototype_trace is None  # not even set up: nothing was run
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda g: diagnose(model, g, Y, num_samples=1), r"num_samples must be .* >= 100"),
        (lambda g: diagnose(model, g, Y, num_samples=99), r"num_samples must be .* >= 100"),
        (lambda g: diagnose(model, g, Y, num_samples=2.5), r"num_samples must be a whole"),
        (lambda g: diagnose(model, g, Y, chunk_size=0), r"chunk_size must be .* >= 1"),
        (lambda g: free_energy_report(model, g, Y, num_samples=10), r"num_samples .* >= 100"),
        (lambda g: to_inference_data(model, g, Y, num_samples=40), r"num_samples .* >= 100"),
        (lambda g: to_inference_data(model, g, Y, num_chains=0), r"num_chains must be .* >= 1"),
        (
            lambda g: to_inference_data(model, g, Y, num_samples=402, num_chains=4),
            r"multiple of num_chains",
        ),
        (
            lambda g: to_inference_data(model, g, Y, posterior_predictive="yes"),
            r"posterior_predictive must be True or False",
        ),
        (
            lambda g: importance_log_likelihood(model, g, Y, num_samples=0),
            r"num_samples must be .* >= 1",
        ),
    ],
)
def test_diagnostics_name_a_bad_argument(call, message):
    guide = AutoIAF(model)
    guide(Y)
    with pytest.raises((ValueError, TypeError), match=message):
        call(guide)


def test_a_coords_key_that_is_no_plate_names_the_plates():
    guide = AutoIAF(model)
    guide(Y)
    no_plate = r"coords has key\(s\) \['points'\].*plates are \['data'\]"
    with pytest.raises(ValueError, match=no_plate):
        to_inference_data(model, guide, Y, num_samples=200, coords={"points": list("abcde")})
    with pytest.raises(ValueError, match=r"coords\['data'\] has 3 values.*size 5"):
        to_inference_data(model, guide, Y, num_samples=200, coords={"data": list("abc")})
    with pytest.raises(ValueError, match=r"dims names \['scale'\].*variables are"):
        to_inference_data(model, guide, Y, num_samples=200, dims={"scale": ["x"]})
    idata = to_inference_data(model, guide, Y, num_samples=200, coords={"data": list("abcde")})
    assert list(idata["log_likelihood"]["data"].values) == list("abcde")


@pytest.mark.parametrize("validation", [True, False])
def test_nan_in_the_data_is_named_not_blamed_on_the_optimizer(validation):
    pyro.enable_validation(validation)
    try:
        data = Y.clone()
        data[2] = math.nan
        guide = AutoIAF(model)
        with pytest.raises(NonFiniteDataError, match=r"argument 0 \(Tensor\(5,\)\): 1 NaN"):
            fit(model, guide, data, steps=20, progress=False)
        pyro.clear_param_store()
        trained = AutoIAF(model)
        fit(model, trained, Y, steps=5, progress=False, report_samples=None)
        data[2] = math.inf
        with pytest.raises(NonFiniteDataError, match=r"argument 0 \(Tensor\(5,\)\): 1 \+inf"):
            diagnose(model, trained, data, num_samples=200)
        with pytest.raises(NonFiniteDataError, match=r"argument y= \(Tensor\(5,\)\): 1 \+inf"):
            free_energy_report(model, trained, y=data, num_samples=200)
    finally:
        pyro.enable_validation(True)


def test_masked_nan_observations_are_not_refused():
    """NaN at masked positions (obs_mask) is legitimate: only a failing model blames the data."""
    data = Y.clone()
    data[1] = math.nan
    mask = ~torch.isnan(data)

    def masked_model(y):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(loc, 1.0).mask(mask), obs=torch.nan_to_num(y))

    guide = AutoIAF(masked_model)
    result = fit(masked_model, guide, data, steps=10, progress=False, report_samples=200)
    assert math.isfinite(result.report.free_energy)


def test_no_guessed_max_plate_nesting_line_and_the_logger_is_restored(caplog):
    logger = logging.getLogger("pyro")
    before = logger.level
    guide = AutoIAF(model)
    with caplog.at_level(logging.INFO):
        caplog.clear()
        logger.setLevel(logging.INFO)
        fit(model, guide, Y, steps=5, progress=False, report_samples=200)
        diagnose(model, guide, Y, num_samples=200)
        to_inference_data(model, guide, Y, num_samples=200)
        assert logger.level == logging.INFO  # the user's setting, restored
    assert not [r for r in caplog.records if "max_plate_nesting" in r.getMessage()]
    logger.setLevel(before)


def test_report_diagnose_and_export_share_one_default_draw_count():
    defaults = {
        "fit.report_samples": inspect.signature(fit).parameters["report_samples"].default,
        "diagnose": inspect.signature(diagnose).parameters["num_samples"].default,
        "to_inference_data": inspect.signature(to_inference_data).parameters["num_samples"].default,
        "free_energy_report": inspect.signature(free_energy_report)
        .parameters["num_samples"]
        .default,
    }
    assert set(defaults.values()) == {DEFAULT_NUM_DRAWS}, defaults
    assert DEFAULT_NUM_DRAWS >= 2000  # k-hat near 0.7 needs about 10^(1/0.3) = 2154 draws
    assert pyroflows.diagnostics.MIN_KHAT_DRAWS == 100
