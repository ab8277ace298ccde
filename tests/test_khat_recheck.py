"""k-hat rechecked on four times the draws where it reads "good" within its noise of 0.5.

The guides here are exact Gaussians ``q = N(0, s²)`` (AutoIAF at its start: the flow layers are
the identity) for the model ``x ~ N(0, 1)``: the weights ``w ∝ exp(x² (1/s² - 1) / 2)`` have
a Pareto tail of index ``1 - s²`` (``P(w > t)`` falls as ``t^(-1/(1 - s²))`` up to a slowly
varying factor), so ``s² = 0.4`` gives a guide whose verdict should not be "good" and
``s² = 0.7`` one whose should.
"""

import math
from dataclasses import replace

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.diagnostics import khat_recheck
from pyroflows.diagnostics.free_energy import (
    FreeEnergyReport,
    free_energy_report,
    importance_log_weights,
)

SETS = 20


def standard_normal_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))


def gaussian_guide(variance: float):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyroflows.AutoIAF(standard_normal_model, init="median", init_scale=math.sqrt(variance))
    guide()
    return guide


def first_and_reported(guide, seed: int) -> tuple[float, FreeEnergyReport]:
    """k-hat of the report's own 4000 draws, and the report (the same draws, rechecked)."""
    pyro.set_rng_seed(seed)
    first = FreeEnergyReport.from_log_weights(
        importance_log_weights(standard_normal_model, guide)
    ).khat
    pyro.set_rng_seed(seed)
    return first, free_energy_report(standard_normal_model, guide)


def test_the_standard_error_and_the_band():
    # M = min(800, 3 √4000 = 189.7) tail weights; (1 + 0.5) / √M
    assert khat_recheck.khat_standard_error(0.5, 4000) == pytest.approx(
        1.5 / math.sqrt(189.74), 1e-3
    )
    low_edge = 0.5 - 2 * khat_recheck.khat_standard_error(0.5, 4000)  # 0.282
    assert khat_recheck.needs_recheck(0.49, 4000, equal_weights=False)
    assert khat_recheck.needs_recheck(low_edge + 0.001, 4000, equal_weights=False)
    assert not khat_recheck.needs_recheck(low_edge - 0.001, 4000, equal_weights=False)
    assert not khat_recheck.needs_recheck(0.5, 4000, equal_weights=False)  # already "ok"
    assert not khat_recheck.needs_recheck(0.45, 4000, equal_weights=True)
    assert not khat_recheck.needs_recheck(-math.inf, 4000, equal_weights=False)
    # more draws, a narrower band
    assert not khat_recheck.needs_recheck(0.35, 64000, equal_weights=False)


def test_a_heavy_tail_read_good_by_chance_is_not_good_after_the_recheck():
    guide = gaussian_guide(0.4)  # tail index 0.6
    results = [first_and_reported(guide, seed) for seed in range(SETS)]
    lucky = [(first, report) for first, report in results if first < 0.5]
    assert lucky, "no set of 4000 draws read below 0.5: the test would check nothing"
    for first, report in lucky:
        assert report.khat_draws == 4 * 4000
        assert report.khat >= 0.5 and report.verdict != "good", (first, report.khat)
    assert all(report.verdict != "good" for _, report in results)


def test_a_light_tail_stays_good_after_the_recheck():
    guide = gaussian_guide(0.7)  # tail index 0.3
    results = [first_and_reported(guide, seed) for seed in range(SETS)]
    rechecked = [report for _, report in results if report.khat_draws is not None]
    assert len(rechecked) >= SETS // 2
    assert all(report.khat < 0.5 and report.verdict == "good" for report in rechecked)
    # the recheck only looks again at "good" readings: the others keep their own draws
    for first, report in results:
        if first >= 0.5:
            assert report.khat_draws is None and report.khat == first


def test_a_rechecked_k_hat_is_good_or_ok_never_unreliable():
    """Two readings on either side of 0.5 are not evidence for "unreliable"."""
    report = FreeEnergyReport(-1.0, 0.01, -0.9, 0.1, 0.8, 3000.0, 4000, khat_draws=16000)
    assert report.khat_verdict == "ok" and report.verdict == "ok"
    assert replace(report, khat=0.45).verdict == "good"
    assert replace(report, khat_draws=None).verdict == "unreliable"


def test_the_recheck_is_deterministic_and_leaves_the_global_random_state_alone():
    guide = gaussian_guide(0.4)
    pyro.set_rng_seed(3)
    log_weights = importance_log_weights(standard_normal_model, guide)
    state = torch.get_rng_state()
    first = khat_recheck.rechecked_khat(guide, log_weights, (), {})
    assert torch.equal(state, torch.get_rng_state())
    assert khat_recheck.rechecked_khat(guide, log_weights, (), {}) == first
    assert first[1] == 16000


def test_no_recheck_for_other_guides():
    pyro.clear_param_store()
    normal = pyro.infer.autoguide.AutoNormal(standard_normal_model)
    normal()
    assert khat_recheck.rechecked_khat(normal, torch.zeros(100), (), {}) is None
    report = free_energy_report(standard_normal_model, normal, num_samples=200)
    assert report.khat_draws is None


def test_diagnose_the_export_and_the_printout_say_when_k_hat_was_rechecked():
    guide = gaussian_guide(0.7)
    seed = next(
        seed for seed in range(SETS) if first_and_reported(guide, seed)[1].khat_draws is not None
    )
    pyro.set_rng_seed(seed)
    report = free_energy_report(standard_normal_model, guide)
    assert "16000 draws" in str(report)
    pyro.set_rng_seed(seed)
    diagnosis = pyroflows.diagnose(standard_normal_model, guide)
    assert diagnosis.khat_draws == 16000 and diagnosis.num_samples == 4000
    assert diagnosis.khat == pytest.approx(report.khat)
    assert "rechecked" in str(diagnosis)
    pyro.set_rng_seed(seed)
    idata = pyroflows.to_inference_data(standard_normal_model, guide)
    assert idata["posterior"].attrs["khat_draws"] == 16000
