"""Several modes: the multi-start MAP finds them with their Laplace masses, the guide starts at
the heaviest, and the report's mode-coverage check says when the guide misses one (a mode the
guide never visits leaves no trace in its own importance weights, so k-hat cannot)."""

import dataclasses
import importlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.diagnostics import modes as modes_module
from pyroflows.guides import start as start_module
from pyroflows.models import linear_regression

WEIGHTS = (0.4, 0.6)
CENTERS = ((-2.5, 1.0), (2.5, -1.0))
SCALES = ((0.5, 0.8), (0.7, 0.4))


def two_mode_model() -> None:
    """``0.4 N((-2.5, 1), diag(0.5², 0.8²)) + 0.6 N((2.5, -1), diag(0.7², 0.4²))``, log Z = 0.
    From the ``init_to_median`` point (0.1, 0.1) L-BFGS alone ends in the lighter mode; the
    modes are 7+ sds apart, so each one's Laplace mass is its weight to 1e-6."""
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor(WEIGHTS)),
        dist.Normal(torch.tensor(CENTERS), torch.tensor(SCALES)).to_event(1),
    )
    base = dist.Normal(torch.full((2,), 0.1), 5.0).to_event(1)
    z = pyro.sample("z", base)
    pyro.factor("mixture", mixture.log_prob(z) - base.log_prob(z))


def test_multistart_finds_both_modes_with_their_masses_and_starts_at_the_heavier():
    """The Laplace masses of two well-separated Gaussian components are their weights (the
    overlap is below 1e-6), so the shares are 0.6 and 0.4 to 1e-3; the start of the heavier
    one has the higher ELBO (log 0.6 vs log 0.4) and is chosen."""
    guide = pyroflows.AutoIAF(two_mode_model)
    guide()
    found = guide.start.details["modes"]
    assert len(found) == 2
    log_mass = torch.tensor([mode.log_mass for mode in found])
    shares = (log_mass - torch.logsumexp(log_mass, 0)).exp()
    assert shares.tolist() == pytest.approx([0.6, 0.4], abs=1e-3)
    assert found[0].loc.tolist() == pytest.approx(list(CENTERS[1]), abs=1e-3)
    assert found[1].loc.tolist() == pytest.approx(list(CENTERS[0]), abs=1e-3)
    assert guide.start.method == "laplace"
    assert guide.start.loc.tolist() == pytest.approx(list(CENTERS[1]), abs=1e-3)
    assert "mode 1 of 2" in guide.start.reason
    assert guide.start.details["elbo_laplace"] == pytest.approx(math.log(0.6), abs=0.05)
    assert guide.start.details["elbo_laplace-mode2"] == pytest.approx(math.log(0.4), abs=0.05)


def test_a_guide_on_one_mode_is_reported_as_missing_the_other():
    """At its start the guide is N(mode 1) almost exactly: its own weights are all alike
    (k-hat small, IW gap ≈ 0: 'good' by PSIS alone, as before the check), but it misses the
    lighter mode's 0.4 of the mass; the check says 0.4 (bootstrap error ≈ 0.01, tolerance
    0.05) and the verdict is 'unreliable'."""
    guide = pyroflows.AutoIAF(two_mode_model)
    report = pyroflows.free_energy_report(two_mode_model, guide, num_samples=1000)
    assert report.khat_verdict == "good"
    assert report.kl_lower_bound < 0.01
    coverage = report.mode_coverage
    assert coverage.num_modes == 2
    assert coverage.missed_mass == pytest.approx(0.4, abs=0.05)
    assert coverage.missed_mode
    # every draw of the guide is in the heavier mode; the weighted draws give 0.6/0.4
    assert coverage.guide_shares == pytest.approx((1.0, 0.0), abs=0.01)
    assert coverage.posterior_shares == pytest.approx((0.6, 0.4), abs=0.05)
    assert coverage.share_error == pytest.approx(0.4, abs=0.05)
    assert report.verdict == "unreliable"
    assert "MISSED" in str(report)
    diagnosis = pyroflows.diagnose(two_mode_model, guide, num_samples=1000)
    assert diagnosis.verdict == "unreliable" and not diagnosis.trustworthy
    assert "misses a mode" in str(diagnosis)
    attrs = pyroflows.to_inference_data(two_mode_model, guide, num_samples=1000)["posterior"].attrs
    assert attrs["verdict"] == "unreliable" and attrs["khat_verdict"] == "good"
    assert attrs["missed_mass"] == pytest.approx(0.4, abs=0.05)
    result = pyroflows.fit(two_mode_model, guide, steps=50, report_samples=1000)
    assert result.verdict == "unreliable"


def test_a_guide_that_covers_both_modes_is_not_flagged():
    """The same guide moved to the mixture's moment-matched Gaussian N((0.5, -0.2),
    diag(2.6², 1.2²)), which covers both modes: the mixture adds nothing where q already is,
    so the missed mass is 0 within its error. With 500 draws of a q this much wider than the
    modes the estimate is noisy (bootstrap se 0.02-0.08), which the check accounts for: it
    does not fire on any of 6 seeds, and their mean (measured 0.05) is below 0.1."""
    guide = pyroflows.AutoIAF(two_mode_model)
    guide()
    guide.flow[-1].restart(torch.tensor([0.5, -0.2]), torch.tensor([2.6, 1.2]), whiten=False)
    checks = [modes_module.mode_coverage(guide, (), {}, seed=seed) for seed in range(6)]
    assert not any(check.missed_mode for check in checks)
    assert sum(check.missed_mass for check in checks) / len(checks) < 0.1
    # its mass splits between the modes as the posterior's does (measured share errors
    # 0.01-0.07, bootstrap se 0.02-0.03)
    assert not any(check.misweighted for check in checks)


def test_a_guide_holding_both_modes_with_the_wrong_weights_is_at_best_ok():
    """The same wide Gaussian moved to (2, -0.8): it still reaches both modes (no missed
    mode), but puts about 0.83 of its draws in the heavier one, whose posterior share is 0.6.
    The share error (measured 0.17-0.26 on 4 seeds, bootstrap se 0.02) flags it, and a report
    with a "good" k-hat is then "ok"."""
    guide = pyroflows.AutoIAF(two_mode_model)
    guide()
    guide.flow[-1].restart(torch.tensor([2.0, -0.8]), torch.tensor([2.6, 1.2]), whiten=False)
    checks = [modes_module.mode_coverage(guide, (), {}, seed=seed) for seed in range(4)]
    assert not any(check.missed_mode for check in checks)
    assert all(check.misweighted for check in checks)
    for check in checks:
        assert check.guide_shares[0] > 0.75
        assert check.posterior_shares == pytest.approx((0.6, 0.4), abs=0.06)
        assert "WEIGHTS OFF" in str(check)
    report = pyroflows.free_energy_report(two_mode_model, guide, num_samples=1000)
    assert report.mode_coverage.misweighted and report.suspects_missed_mode
    # the same evidence beside a k-hat that alone would say "good"
    good_khat = dataclasses.replace(report, khat=0.1, ess=float(report.num_samples))
    assert good_khat.khat_verdict == "good"
    assert pyroflows.diagnostics.free_energy.combined_verdict(good_khat) == "ok"
    assert "WEIGHTS OFF" in pyroflows.diagnostics.free_energy.format_reports({"q": report})


def test_the_check_is_deterministic_and_leaves_the_global_random_state_alone():
    guide = pyroflows.AutoIAF(two_mode_model)
    guide()
    state = torch.get_rng_state()
    first = modes_module.mode_coverage(guide, (), {})
    assert torch.equal(state, torch.get_rng_state())
    assert modes_module.mode_coverage(guide, (), {}) == first


def test_one_mode_means_no_check():
    """A Gaussian posterior: every start ends at the one mode, which is kept once."""
    problem = linear_regression(dim=3)
    guide = pyroflows.AutoIAF(problem.model)
    report = pyroflows.free_energy_report(problem.model, guide, *problem.args, num_samples=200)
    assert len(guide.start.details["modes"]) == 1
    assert "1 mode(s) kept" in guide.start.details["multistart"]
    assert report.mode_coverage is None
    assert "missed mass" not in str(report)


def far_modes_model() -> None:
    """``0.3 N((-3, -3), 0.5²) + 0.7 N((3, 3), 0.5²)`` under a broad base ``N(0, 5²)``: 17 sds
    apart, so from the lighter mode the box ``z0 ± 2`` of the extra starts stays in its basin
    (its far corner (-1, -1) is 2.8 from it and 5.7 from the other)."""
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.3, 0.7])),
        dist.Normal(torch.tensor([[-3.0, -3.0], [3.0, 3.0]]), 0.5).to_event(1),
    )
    base = dist.Normal(torch.zeros(2), 5.0).to_event(1)
    z = pyro.sample("z", base)
    pyro.factor("mixture", mixture.log_prob(z) - base.log_prob(z))


def test_prior_draws_find_a_mode_the_box_around_the_start_cannot_reach(monkeypatch):
    """Started (init_loc_fn) in the lighter mode: the box starts alone find that mode only and
    the guide would start there (KL log(1/0.3) = 1.2 instead of log(1/0.7) = 0.36, with no
    second mode for the coverage check to test); the prior draws find the heavier one."""
    init = pyro.infer.autoguide.initialization.init_to_value(
        values={"z": torch.tensor([-3.0, -3.0])}
    )
    monkeypatch.setattr(start_module, "MULTISTART_PRIOR_COUNT", 0)
    boxed = pyroflows.AutoIAF(far_modes_model, init_loc_fn=init)
    boxed()
    assert len(boxed.start.details["modes"]) == 1
    assert boxed.start.loc.tolist() == pytest.approx([-3.0, -3.0], abs=1e-3)
    monkeypatch.undo()
    starts = []
    for seed in (0, 1):  # the prior draws come from a seeded generator of their own
        pyro.set_rng_seed(seed)
        guide = pyroflows.AutoIAF(far_modes_model, init_loc_fn=init)
        guide()
        assert len(guide.start.details["modes"]) == 2
        assert guide.start.loc.tolist() == pytest.approx([3.0, 3.0], abs=1e-3)
        starts.append(guide.start.details["modes"][1].loc)
    assert torch.equal(starts[0], starts[1])


def test_no_extra_starts_above_the_dimension_threshold(monkeypatch):
    monkeypatch.setattr(start_module, "MULTISTART_MAX_DIM", 1)
    guide = pyroflows.AutoIAF(two_mode_model)
    guide()
    assert "modes" not in guide.start.details
    assert "multistart" not in guide.start.details


def test_pyro_guides_get_no_check():
    guide = pyro.infer.autoguide.AutoNormal(two_mode_model)
    report = pyroflows.free_energy_report(two_mode_model, guide, num_samples=200)
    assert report.mode_coverage is None


def test_two_stops_in_one_needle_basin_are_one_mode():
    """A needle N(0, 1e-4² I): a point 5 needle-sds from the mode is not within the
    Mahalanobis distance, but the log joint half-way is higher than at either end (no
    barrier), so it is the same mode; the other mixture mode, with a barrier of ~20 nats
    between, is not."""
    needle = start_module.Mode(torch.zeros(2), 1e-4 * torch.eye(2), 0.0, 0.0)

    def negative(z):
        return 0.5 * (z / 1e-4).pow(2).sum()

    point = torch.tensor([5e-4, 0.0])
    assert start_module._mahalanobis(point, needle) > start_module.SAME_MODE_DISTANCE
    assert start_module._same_mode(negative, point, -float(negative(point)), needle)
    guide = pyroflows.AutoIAF(two_mode_model)
    guide()
    heavy, light = guide.start.details["modes"]

    def negative_mixture(z):
        return -start_module.unconstrained_log_joint(guide, z, (), {})

    assert not start_module._same_mode(negative_mixture, light.loc, light.log_joint, heavy)


def test_auto_tempering_is_longer_where_the_start_found_several_modes():
    """``anneal_steps="auto"``: a multimodal guide (NAF) whose multi-start found both modes
    tempers AUTO_ANNEAL_STEPS_SEVERAL_MODES steps, one on a one-mode posterior the usual
    AUTO_ANNEAL_STEPS, a unimodal guide (IAF) none, and never more than a quarter of the run."""
    from pyroflows.infer.fit import (
        AUTO_ANNEAL_STEPS,
        AUTO_ANNEAL_STEPS_SEVERAL_MODES,
        _auto_anneal_steps,
    )

    two_modes = pyroflows.AutoNAF(two_mode_model)
    two_modes()
    pyro.clear_param_store()  # the guides share a name
    problem = linear_regression(dim=3)
    one_mode = pyroflows.AutoNAF(problem.model)
    one_mode(*problem.args)
    pyro.clear_param_store()
    unimodal = pyroflows.AutoIAF(two_mode_model)
    unimodal()
    assert len(two_modes.start.details["modes"]) == 2
    assert len(one_mode.start.details["modes"]) == 1
    assert AUTO_ANNEAL_STEPS_SEVERAL_MODES > AUTO_ANNEAL_STEPS > 0
    assert _auto_anneal_steps(two_modes, 20000) == AUTO_ANNEAL_STEPS_SEVERAL_MODES
    assert _auto_anneal_steps(one_mode, 20000) == AUTO_ANNEAL_STEPS
    assert _auto_anneal_steps(unimodal, 20000) == 0
    assert _auto_anneal_steps(two_modes, 400) == 100


def test_auto_tempering_is_longer_where_the_map_is_no_isolated_mode(ring_model):
    """A MAP search that ends where the Hessian is singular (a ring's circle of maxima) found
    no isolated mode: every candidate start says so, and a multimodal guide tempers longer
    than where several modes were found (the same rise after a hold); a unimodal one still
    does not temper."""
    from pyroflows.diagnostics.modes import start_found_no_isolated_mode
    from pyroflows.infer.fit import (
        ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE,
        AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE,
        AUTO_ANNEAL_STEPS_SEVERAL_MODES,
        _auto_anneal_steps,
    )

    pyro.set_rng_seed(0)
    ring = pyroflows.AutoNAF(ring_model)
    ring()
    assert start_found_no_isolated_mode(ring), ring.start.reason
    assert _auto_anneal_steps(ring, 20000) == AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE
    rise = AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE * (1 - ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE)
    assert rise == AUTO_ANNEAL_STEPS_SEVERAL_MODES
    pyro.clear_param_store()
    unimodal = pyroflows.AutoIAF(ring_model)
    unimodal()
    assert start_found_no_isolated_mode(unimodal)
    assert _auto_anneal_steps(unimodal, 20000) == 0
    pyro.clear_param_store()
    problem = linear_regression(dim=3)
    one_mode = pyroflows.AutoNAF(problem.model)
    one_mode(*problem.args)
    assert not start_found_no_isolated_mode(one_mode)


def test_tempering_holds_at_the_flattest_beta_only_where_the_map_is_no_isolated_mode(
    ring_model, monkeypatch
):
    """From a start at no isolated mode (a ring) fit holds β at ``anneal_from`` for a quarter
    of the tempering steps before it rises, and records the hold; where the multi-start found
    separate modes β rises from the first step. (The β of each step is recorded from the
    schedule fit calls; :func:`tempering_beta`'s own values are tested in test_schedule.)"""
    from pyroflows.infer.fit import ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE

    fit_module = importlib.import_module("pyroflows.infer.fit")  # the name fit is the function
    monkeypatch.setattr(fit_module, "AUTO_ANNEAL_STEPS_SEVERAL_MODES", 12)
    monkeypatch.setattr(fit_module, "AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE", 16)
    real_beta = fit_module.tempering_beta

    def fitted_betas(model):
        betas = []

        def recorded(step, anneal_steps, anneal_from, hold_steps=0):
            betas.append(real_beta(step, anneal_steps, anneal_from, hold_steps))
            return betas[-1]

        monkeypatch.setattr(fit_module, "tempering_beta", recorded)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = pyroflows.AutoNAF(model)
        result = pyroflows.fit(model, guide, steps=80, progress=False, report_samples=0)
        return result.settings["anneal_steps"], result.settings["anneal_hold"], betas

    ring_steps, ring_hold, ring_betas = fitted_betas(ring_model)
    two_modes_steps, two_modes_hold, two_modes_betas = fitted_betas(two_mode_model)
    assert (ring_steps, two_modes_steps) == (16, 12)
    assert ring_hold == int(16 * ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE) == 4
    assert ring_betas[: ring_hold + 1] == [0.05] * (ring_hold + 1)
    assert 0.05 < ring_betas[ring_hold + 1] < 1.0 and ring_betas[16:] == [1.0] * 64
    # the same rise of 12 steps, 4 steps later
    assert ring_betas[ring_hold:16] == pytest.approx(two_modes_betas[:12])
    assert two_modes_hold == 0
    assert two_modes_betas[0] == 0.05 < two_modes_betas[1]
    assert two_modes_betas[12:] == [1.0] * 68


def test_a_resumed_fit_keeps_its_hold_and_one_saved_before_the_hold_rises_at_once(
    ring_model, monkeypatch
):
    """A ring fit interrupted during its hold (Ctrl-C in step 3 of 16 tempering steps, 4
    held) resumes still held until step 5; a result saved before the hold existed (no
    ``anneal_hold`` in its settings) resumes on the plain linear rise it was started with."""
    fit_module = importlib.import_module("pyroflows.infer.fit")
    real_beta = fit_module.tempering_beta
    betas: list[tuple[int, float]] = []

    def recorded(step, anneal_steps, anneal_from, hold_steps=0):
        betas.append((step, real_beta(step, anneal_steps, anneal_from, hold_steps)))
        return betas[-1][1]

    monkeypatch.setattr(fit_module, "tempering_beta", recorded)
    armed = {"interrupt": True}

    def model():
        if armed["interrupt"] and len(betas) == 3:  # in step 3's loss
            armed["interrupt"] = False
            raise KeyboardInterrupt
        ring_model()

    def interrupted_fit():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        betas.clear()
        armed["interrupt"] = True
        guide = pyroflows.AutoNAF(model)
        result = pyroflows.fit(
            model, guide, steps=40, anneal_steps=16, progress=False, report_samples=0
        )
        assert result.interrupted and result.steps == 2
        return result

    def resumed_betas(partial):
        betas.clear()
        pyroflows.fit(model, partial.guide, resume=partial, progress=False, report_samples=0)
        return betas[:4]

    partial = interrupted_fit()
    assert partial.settings["anneal_hold"] == 4
    assert resumed_betas(partial) == [
        (3, 0.05),
        (4, 0.05),
        (5, 0.05),
        (6, real_beta(6, 16, 0.05, 4)),
    ]
    assert real_beta(6, 16, 0.05, 4) > 0.05
    partial = interrupted_fit()
    del partial.settings["anneal_hold"]
    assert resumed_betas(partial) == [(step, real_beta(step, 16, 0.05)) for step in range(3, 7)]
    assert real_beta(3, 16, 0.05) > 0.05


def test_fit_resolves_auto_tempering_from_the_guide_it_sets_up(monkeypatch):
    """fit decides on the tempering after it has set the guide up (a fresh guide has no
    start before): a fresh AutoNAF on the two-mode model gets the several-modes length (made
    8 and 4 steps here, so a 40-step run shows it) and the settings record it."""
    fit_module = importlib.import_module("pyroflows.infer.fit")  # the name fit is the function
    monkeypatch.setattr(fit_module, "AUTO_ANNEAL_STEPS", 4)
    monkeypatch.setattr(fit_module, "AUTO_ANNEAL_STEPS_SEVERAL_MODES", 8)
    guide = pyroflows.AutoNAF(two_mode_model)
    result = pyroflows.fit(two_mode_model, guide, steps=40, progress=False, report_samples=0)
    assert len(guide.start.details["modes"]) == 2
    assert result.settings["anneal_steps"] == 8


@pytest.mark.parametrize("which", ["one mode", "two modes"])
def test_extra_searches_end_once_in_a_known_modes_bowl_and_find_the_same_modes(monkeypatch, which):
    """An extra L-BFGS search that comes within one Laplace sd of a known mode (and within a
    nat of its peak) ends there: on a Gaussian posterior every one of them does, and with or
    without the early end the start finds the same modes with the same masses."""
    if which == "one mode":
        problem = linear_regression(dim=3)
        model, args = problem.model, problem.args
    else:
        model, args = two_mode_model, ()
    searches = []
    full_search = start_module._map_by_lbfgs

    def counted(objective, z0, max_iterations, path=None, stop=None):
        try:
            result = full_search(objective, z0, max_iterations, path, stop)
        except start_module._ReachedKnownMode:
            searches.append("reached")
            raise
        searches.append("ended")
        return result

    def without_early_end(objective, z0, max_iterations, path=None, stop=None):
        return full_search(objective, z0, max_iterations, path)

    found = {}
    for variant, search in (("early", counted), ("full", without_early_end)):
        monkeypatch.setattr(start_module, "_map_by_lbfgs", search)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)  # init_to_median's point, where the MAP search starts, is drawn
        guide = pyroflows.AutoIAF(model)
        guide(*args)
        found[variant] = [(mode.loc, mode.log_mass) for mode in guide.start.details["modes"]]
    extra = start_module.MULTISTART_COUNT + start_module.MULTISTART_PRIOR_COUNT
    assert len(searches) == extra + 1  # the MAP's own search never ends early
    if which == "one mode":
        assert searches.count("reached") == extra
    else:
        assert searches.count("reached") >= extra - 1  # the first to reach the other mode ends
    assert len(found["early"]) == len(found["full"]) == (1 if which == "one mode" else 2)
    for early, full in zip(found["early"], found["full"], strict=True):
        assert torch.equal(early[0], full[0])
        assert early[1] == full[1]
