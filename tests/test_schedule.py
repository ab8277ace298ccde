"""fit's schedule: the learning rate of every step, the stopping rule, the pilot runs' choice,
and a verdict that never calls an unconverged fit good."""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.diagnostics.free_energy import FreeEnergyReport
from pyroflows.infer.fit import FitResult
from pyroflows.infer.schedule import (
    PILOT_LRS,
    STEP_DOWN_MIN_STEPS,
    STL_PILOT_LRS,
    Schedule,
    StoppingRule,
    pick_pilot,
    tempering_beta,
)


def test_fixed_schedule_decays_geometrically_over_its_span():
    schedule = Schedule(lr=1e-2, lr_decay=0.1, span=100)
    assert schedule.lr_at(1) == pytest.approx(1e-2)
    assert schedule.lr_at(101) == pytest.approx(1e-3)
    assert schedule.lr_at(201) == pytest.approx(1e-4)  # a resumed, longer run keeps the rate


def test_auto_schedule_is_constant_until_the_rule_fires_then_decays():
    schedule = Schedule(lr=1e-2, lr_decay=0.1, auto=True)
    assert schedule.total(5000) == 5000 and schedule.lr_at(3000) == 1e-2
    schedule.start_decay(1000, 5000)
    assert schedule.decay_steps == 200 and schedule.total(5000) == 1200
    assert schedule.lr_at(1000) == 1e-2
    assert schedule.lr_at(1200) == pytest.approx(1e-3)
    schedule = Schedule(lr=1e-2, lr_decay=0.1, auto=True)
    schedule.start_decay(4000, 4500)  # the decay never runs past max_steps
    assert schedule.total(4500) == 4500


def test_each_stall_divides_the_rate_until_the_floor_then_the_final_decay_starts():
    schedule = Schedule(lr=3e-2, lr_decay=0.1, auto=True, factor=3.0, floor=1e-3)
    schedule.stalled_at(1200, 20000)  # 3e-2 -> 1e-2
    schedule.stalled_at(1500, 20000)  # -> 3.3e-3
    schedule.stalled_at(1800, 20000)  # -> 1.1e-3 (still >= the floor)
    assert schedule.step_downs == [1200, 1500, 1800] and schedule.decay_start is None
    assert schedule.lr_at(1200) == pytest.approx(3e-2)
    assert schedule.lr_at(1201) == pytest.approx(1e-2)
    assert schedule.lr_at(1801) == pytest.approx(3e-2 / 27)
    schedule.stalled_at(2100, 20000)  # 1.1e-3 / 3 would be below the floor: the final decay
    assert schedule.step_downs == [1200, 1500, 1800] and schedule.decay_start == 2100
    assert schedule.total(20000) == 2100 + 420  # max(200, 20% of 2100)
    assert schedule.lr_at(2520) == pytest.approx(3e-2 / 27 * 0.1)
    # the state round-trips through the dict a checkpoint stores
    copy = Schedule(**schedule.as_dict())
    assert [copy.lr_at(step) for step in (1, 1300, 1900, 2300)] == [
        schedule.lr_at(step) for step in (1, 1300, 1900, 2300)
    ]
    at_floor = Schedule(lr=3e-3, lr_decay=0.1, auto=True, factor=3.0, floor=1e-3)
    at_floor.stalled_at(1000, 20000)  # 3e-3 -> 1e-3: exactly the floor is allowed
    at_floor.stalled_at(1300, 20000)
    assert at_floor.step_downs == [1000] and at_floor.decay_start == 1300


def test_tempering_holds_then_rises_linearly_to_one():
    """β is ``anneal_from`` through the hold (and the first step of the rise), then rises by
    equal steps to exactly 1 after ``anneal_steps`` steps; no hold is the plain linear rise, and
    no tempering is β = 1 throughout."""
    betas = [tempering_beta(t, 10, 0.05, hold_steps=4) for t in range(1, 14)]
    assert betas[:5] == [0.05] * 5
    rises = np.diff(betas[4:11])
    assert rises == pytest.approx(np.full(6, 0.95 / 6))
    assert betas[10:] == [1.0, 1.0, 1.0]
    linear = [tempering_beta(t, 10, 0.05) for t in range(1, 12)]
    assert linear == pytest.approx([0.05 + 0.095 * k for k in range(11)])
    assert tempering_beta(1, 0, 0.05) == 1.0
    with pytest.raises(ValueError, match="hold_steps must be at least 0 and below"):
        tempering_beta(1, 10, 0.05, hold_steps=10)


def test_stopping_rule_on_noise_and_on_a_descent():
    rng = np.random.default_rng(0)
    rule = StoppingRule()
    flat = list(10 + rng.normal(0, 1, 1000))
    assert rule.stalled(flat)
    # a descent of 0.5 nats per 100 steps under noise of sd 1: seen over 250-step windows
    falling = list(10 - 0.005 * np.arange(1000) + rng.normal(0, 1, 1000))
    assert not rule.stalled(falling)
    assert "fell by" in rule.describe(falling)
    assert not rule.stalled(flat[:150])  # too short to judge


def test_a_larger_step_size_must_be_clearly_better():
    assert pick_pilot([(1e-3, 5.0, 0.1), (1e-2, 4.9, 0.1), (3e-2, 4.95, 0.1)]) == 0
    assert pick_pilot([(1e-3, 5.0, 0.1), (1e-2, 4.0, 0.1), (3e-2, 4.1, 0.1)]) == 1
    assert pick_pilot([(1e-3, math.inf, math.inf), (1e-2, 4.0, 0.1)]) == 1
    with pytest.raises(FloatingPointError):
        pick_pilot([(1e-3, math.inf, math.inf)])


def _report(khat: float, gap: float = 0.0) -> FreeEnergyReport:
    return FreeEnergyReport(1.0, 0.01, -1.0 + gap, gap, khat, 1000.0, 4000)


def test_the_verdict_combines_khat_convergence_and_the_gap():
    def result(khat, converged, gap=0.0):
        return FitResult(None, np.zeros(3), 1.0, _report(khat, gap), converged=converged)

    assert result(0.3, True).verdict == "good"
    assert result(0.3, False).verdict == "not converged"
    assert result(0.6, False).verdict == "not converged"
    assert result(0.9, False).verdict == "unreliable"
    assert result(0.6, True).verdict == "ok"
    assert result(0.3, True, gap=0.5).verdict == "ok"  # a suspected missed mode or tail
    assert result(0.3, None).verdict == "good"  # too short to judge: k-hat alone


def test_weights_collapsed_onto_a_few_draws_are_unreliable_whatever_khat_says():
    """An ESS below MIN_ESS_FRACTION (2.5%) of the draws: 100 of 4000 is the boundary."""
    from pyroflows.diagnostics.free_energy import MIN_ESS_FRACTION

    def report(khat, ess):
        return FreeEnergyReport(1.0, 0.01, -0.9, 0.1, khat, ess, 4000)

    assert MIN_ESS_FRACTION * 4000 == pytest.approx(100.0)
    for khat in (0.3, 0.6):
        assert report(khat, 99.0).collapsed_weights
        assert report(khat, 99.0).verdict == "unreliable"
        assert not report(khat, 101.0).collapsed_weights
        assert report(khat, 101.0).verdict == ("good" if khat < 0.5 else "ok")
    result = FitResult(None, np.zeros(3), 1.0, report(0.3, 50.0), converged=True)
    assert result.verdict == "unreliable"  # fit's verdict: the same rule


def gaussian_model():
    pyro.sample("z", dist.Normal(torch.tensor([3.0, -1.0]), torch.tensor([0.5, 2.0])).to_event(1))


def test_fit_stops_by_itself_and_says_why():
    guide = pyroflows.AutoIAF(gaussian_model, init="median")
    result = pyroflows.fit(gaussian_model, guide, progress=False)
    assert result.converged and result.settings["steps"] == "auto"
    assert result.settings["schedule"]["decay_start"] is not None
    assert result.steps < result.settings["max_steps"]
    assert result.settings["gradients"] == "stl"  # so the pilots try the lower grid
    assert result.settings["lr"] in STL_PILOT_LRS
    assert [pilot["lr"] for pilot in result.settings["pilot"]] == list(STL_PILOT_LRS)
    assert "stopped improving" in result.convergence
    schedule = result.settings["schedule"]
    stage_ends = [*schedule["step_downs"], schedule["decay_start"]]
    assert all(b - a >= STEP_DOWN_MIN_STEPS for a, b in itertools.pairwise(stage_ends))
    final_rate = result.settings["lr"] / schedule["factor"] ** len(schedule["step_downs"])
    assert schedule["floor"] <= final_rate * (1 + 1e-9) < schedule["floor"] * schedule["factor"]
    if schedule["step_downs"]:
        assert "divided by 3" in result.convergence
    assert result.verdict == "good"
    assert abs(result.report.free_energy) < 0.02  # log Z = 0: the exact family


@pytest.mark.parametrize(
    ("gradients", "grid"), [("reparameterized", PILOT_LRS), ("stl", STL_PILOT_LRS)]
)
def test_the_pilots_try_the_grid_of_the_gradient_estimator(gradients, grid):
    """Sticking-the-landing gradients are less noisy, so Adam steps further at the same rate:
    their pilots try a grid one step lower."""
    pyro.set_rng_seed(0)
    guide = pyroflows.AutoIAF(gaussian_model, init="median")
    result = pyroflows.fit(
        gaussian_model, guide, steps=300, gradients=gradients, progress=False, report_samples=0
    )
    assert [pilot["lr"] for pilot in result.settings["pilot"]] == list(grid)
    assert result.settings["lr"] in grid


def test_a_fit_stopped_while_improving_is_not_called_good():
    """From init_loc_fn far away (and without a pilot), 300 steps of 1e-3 are not enough."""

    def far():
        pyro.sample("z", dist.Normal(torch.full((3,), 50.0), 1.0).to_event(1))

    guide = pyroflows.AutoIAF(far, init="median")
    result = pyroflows.fit(far, guide, steps=300, lr=1e-3, lr_decay=1.0, progress=False)
    assert result.converged is False
    assert result.verdict in ("not converged", "unreliable")  # never "good" or "ok"
    assert "still improving" in result.convergence and "convergence:" in str(result)
    capped = pyroflows.fit(
        far, pyroflows.AutoIAF(far, init="median"), lr=1e-3, max_steps=600, progress=False
    )
    assert capped.converged is False and "max_steps reached" in capped.convergence


def test_diagnose_with_the_fit_result_gives_the_fit_s_verdict():
    """``diagnose(..., result=)`` adds the fit's convergence evidence to k-hat (issue 10,
    item 6): the fit stopped while improving is "not converged" there too, whatever k-hat says;
    without ``result`` the printout says convergence is not known."""

    def far():
        pyro.sample("z", dist.Normal(torch.full((3,), 50.0), 1.0).to_event(1))

    pyro.clear_param_store()
    guide = pyroflows.AutoIAF(far, init="median")
    result = pyroflows.fit(far, guide, steps=300, lr=1e-3, lr_decay=1.0, progress=False)
    assert result.converged is False
    diagnosis = pyroflows.diagnose(far, guide, result=result)
    assert diagnosis.verdict == "not converged" or diagnosis.khat_verdict == "unreliable"
    assert diagnosis.verdict == result.verdict
    assert "still improving" in str(diagnosis)
    alone = pyroflows.diagnose(far, guide)
    assert alone.convergence is None and "not known: pass result=" in str(alone)
    assert alone.verdict == alone.khat_verdict or alone.verdict == "ok"

    pyro.clear_param_store()
    converged_guide = pyroflows.AutoIAF(gaussian_model)
    converged = pyroflows.fit(gaussian_model, converged_guide, progress=False)
    diagnosis = pyroflows.diagnose(gaussian_model, converged_guide, result=converged)
    assert converged.converged and diagnosis.verdict == "good"
    assert "stopped improving" in diagnosis.convergence


def test_diagnose_names_a_result_that_is_not_the_guide_s():
    pyro.clear_param_store()
    guide = pyroflows.AutoIAF(gaussian_model)
    other = pyroflows.AutoIAF(gaussian_model)
    result = pyroflows.fit(gaussian_model, other, steps=20, report_samples=None, progress=False)
    with pytest.raises(ValueError, match="another guide object"):
        pyroflows.diagnose(gaussian_model, guide, result=result)
    with pytest.raises(TypeError, match="result must be the FitResult"):
        pyroflows.diagnose(gaussian_model, other, result={"converged": True})


def test_a_thinly_covered_mode_caps_diagnose_at_ok():
    """The IW bound more than half of log 2 above the ELBO caps k-hat's "good" at "ok", in
    ``diagnose`` as in ``fit`` (one rule: ``combined_verdict``)."""
    from pyroflows.diagnostics.free_energy import combined_verdict

    assert combined_verdict(_report(0.3, 0.0)) == "good"
    assert combined_verdict(_report(0.3, 0.5)) == "ok"
    assert combined_verdict(_report(0.3, 0.0), converged=False) == "not converged"
    assert combined_verdict(_report(0.3, 0.0), replicas_disagree=True) == "ok"
    assert combined_verdict(_report(0.8, 0.0), converged=False) == "unreliable"


def test_khat_on_as_good_as_equal_weights_does_not_demote_good():
    """k-hat is the shape of the weights' tail, whatever their scale: on log weights with sd
    0.002 (an exact guide) it is noise, and 0.5-0.7 stays "good" there, 0.7 or more is "ok";
    with sd 0.5 they are "ok" and "unreliable"."""

    def report(log_weight_sd: float, khat: float) -> FreeEnergyReport:
        return FreeEnergyReport(1.0, log_weight_sd / math.sqrt(4000), -1.0, 0.0, khat, 3e3, 4000)

    assert report(0.002, 0.6).log_weight_sd == pytest.approx(0.002)
    assert report(0.002, 0.6).khat_verdict == "good"
    assert report(0.002, 0.75).khat_verdict == "ok"
    assert report(0.049, 0.9).khat_verdict == "ok"
    assert report(0.002, math.inf).khat_verdict == "unreliable"
    assert report(0.5, 0.6).khat_verdict == "ok"
    assert report(0.5, 0.75).khat_verdict == "unreliable"
