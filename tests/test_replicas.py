"""``fit(replicas=2)``: two independent fits from the same start, the one with the higher ELBO
kept, and their disagreement as convergence evidence for the verdict (issue 10, items 4 and
6); ``fit(max_seconds=...)``: a time budget, shared by the replicas."""

import math

import numpy as np
import pyro
import pytest
import torch

import pyroflows
from pyroflows import fit
from pyroflows.diagnostics.free_energy import FreeEnergyReport
from pyroflows.infer.fit import (
    REPLICA_TOLERANCE,
    FitResult,
    _common_log_weights,
    _compare_replicas,
)
from pyroflows.models import banana


def test_two_replicas_keep_the_better_fit():
    problem = banana()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyroflows.AutoIAF(problem.model)
    result = fit(problem.model, guide, replicas=2, progress=False, report_samples=500)
    assert result.settings["replicas"] == 2
    check = result.settings["replica_check"]
    assert len(check["elbos"]) == 2 and len(check["steps"]) == 2
    assert check["elbos"][check["kept"]] == max(check["elbos"])
    # the guide holds the kept replica: scored again on the same draws, the same ELBO
    elbo_now = float(_common_log_weights(problem.model, guide, (), {}).mean())
    assert elbo_now == pytest.approx(check["elbos"][check["kept"]], abs=1e-6)
    assert result.steps == check["steps"][check["kept"]]
    assert result.wall_time == pytest.approx(sum(check["wall_time"]))
    assert "2 replicas" in str(result) and "independent fits" in str(result)
    assert result.converged  # the kept replica's own convergence


def test_one_replica_by_default_and_none_with_resume():
    problem = banana()
    guide = pyroflows.AutoIAF(problem.model)
    result = fit(problem.model, guide, steps=50, progress=False, report_samples=None)
    assert "replica_check" not in result.settings
    with pytest.raises(ValueError, match="replicas=2 cannot be combined with resume"):
        fit(problem.model, guide, resume=result, replicas=2, progress=False)
    with pytest.raises(ValueError, match="replicas"):
        fit(problem.model, guide, steps=50, replicas=0, progress=False)


def test_replicas_disagree_only_beyond_their_error_and_the_tolerance():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(2000, generator=generator, dtype=torch.float64)
    noise = 0.01 * torch.randn(2000, generator=generator, dtype=torch.float64)
    close = _compare_replicas([base, base - 0.02 + noise], best=0)
    assert not close["disagree"]  # 0.02 nats apart: within the tolerance
    far = _compare_replicas([base, base - 3 * REPLICA_TOLERANCE + noise], best=0)
    assert far["disagree"] and "disagree" in far["summary"]
    noisy = torch.randn(2000, generator=generator, dtype=torch.float64)
    # 0.1 nats apart on average but with a paired error of ~0.07: not 3 errors
    unsure = _compare_replicas([base, base - 0.1 + 3.0 * noisy], best=0)
    assert unsure["ses"][0] > 0.05 and not unsure["disagree"]
    failed = _compare_replicas([base, None], best=0)
    assert failed["failed"] == [1] and not failed["disagree"]


def test_disagreeing_replicas_make_a_good_verdict_ok():
    report = FreeEnergyReport(1.0, 0.01, -1.0, 0.0, 0.3, 1000.0, 4000)
    settings = {"replica_check": {"disagree": True}}
    result = FitResult(None, np.zeros(3), 1.0, report, settings=settings, converged=True)
    assert result.replicas_disagree and result.verdict == "ok"
    settings = {"replica_check": {"disagree": False}}
    result = FitResult(None, np.zeros(3), 1.0, report, settings=settings, converged=True)
    assert result.verdict == "good"
    assert math.isfinite(result.ms_per_step)


def test_max_seconds_stops_a_fit_and_the_replicas_share_it():
    """A budget far below what the fit needs (it cannot even judge convergence before 1000
    steps): the fit stops at the first step past it, says so, and no second replica starts."""
    problem = banana()
    pyro.set_rng_seed(0)
    guide = pyroflows.AutoIAF(problem.model)
    result = fit(
        problem.model, guide, replicas=2, max_seconds=0.5, progress=False, report_samples=None
    )
    assert result.steps < 1000 and result.wall_time >= 0.5
    assert result.settings["stopped_by"] == "max_seconds"
    assert result.converged is not True
    check = result.settings["replica_check"]
    assert len(check["steps"]) == 1 and "1 of 2 not run" in check["summary"]
    with pytest.raises(ValueError, match="max_seconds"):
        fit(problem.model, guide, max_seconds=0, progress=False)
