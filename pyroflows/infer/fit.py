"""``fit``: SVI with a progress bar, a free-energy history, interrupt/resume, checkpoints, and a
report at the end."""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import (
    ELBO,
    Trace_ELBO,
)
from pyro.infer.util import zero_grads
from tqdm.auto import tqdm

from pyroflows._pyro_internals import ScaledClippedAdam, forked_devices, torch_optimizers
from pyroflows._validation import (
    NonFiniteDataError,
    check_count,
    check_flag,
    check_positive,
    check_unit_interval,
    describe_nonfinite_arguments,
)
from pyroflows.diagnostics.free_energy import (
    _KHAT_WHY,
    DEFAULT_NUM_DRAWS,
    MIN_KHAT_DRAWS,
    VERDICT_RULE,  # noqa: F401 (fit.VERDICT_RULE, where the fit docstring points)
    FreeEnergyReport,
    combined_verdict,
    format_reports,
    free_energy_report,
    importance_log_weights,
)
from pyroflows.diagnostics.modes import guide_modes, start_found_no_isolated_mode
from pyroflows.diagnostics.tracing import (
    _VECTORIZE_ADVICE,
    NotVectorizableWarning,
    max_plate_nesting,
    quiet_pyro_logging,
    vectorization_problem,
)
from pyroflows.guides.path_gradients import (
    STL_MAX_DIM,  # noqa: F401 (fit.STL_MAX_DIM, where the fit docstring points)
    path_gradient_problem,
    suits_path_gradients,
)
from pyroflows.infer import checkpoint as _checkpoint
from pyroflows.infer.schedule import (
    PILOT_LRS,
    PILOT_STEPS,
    STEP_DOWN_MIN_STEPS,
    STL_PILOT_LRS,
    Schedule,
    StoppingRule,
    pick_pilot,
    tempering_beta,
)

__all__ = ["FitResult", "NonFiniteLossError", "fit"]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        guide: the fitted guide (trained in place).
        free_energy: ``F = -ELBO`` estimate at each step done (numpy array).
        wall_time: seconds spent in the optimization loop (over all resumed parts).
        report: the :class:`FreeEnergyReport` from fresh draws after fitting (None if skipped
            or interrupted).
        settings: the optimization settings used (``steps`` is the run's total).
        interrupted: True if Ctrl-C stopped the fit before ``settings["steps"]`` steps; pass the
            result to ``fit(..., resume=result)`` to continue.
        optimizer_state: the optimizer's state after the last step (``PyroOptim.get_state()``),
            which ``resume`` continues from.
        start_params: the parameter values (and guide buffers) the fit started from: the start
            check compares the end with them, and ``resume`` carries them on.
    """

    guide: Callable
    free_energy: np.ndarray
    wall_time: float
    report: FreeEnergyReport | None = None
    settings: dict = field(default_factory=dict)
    interrupted: bool = False
    optimizer_state: dict | None = field(default=None, repr=False)
    converged: bool | None = None
    convergence: str = ""
    start_params: dict | None = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        """The report's PSIS verdict, never better than the optimization allows: a fit whose
        free energy was still falling when it stopped is ``"not converged"`` (k-hat, computed
        from a guide that is still moving, says nothing about the posterior it is moving to);
        one whose report suspects a missed mode is at best ``"ok"``, and one that misses a
        mode the multi-start MAP found, or whose weights collapse onto a few draws (ESS below
        2.5% of them), is ``"unreliable"``. See :data:`VERDICT_RULE`.
        """
        if self.report is None:
            return "no report"
        return combined_verdict(self.report, self.converged, self.replicas_disagree)

    @property
    def replicas_disagree(self) -> bool:
        """Whether independent replicas of the fit (``fit(replicas=2)``) ended with ELBOs
        further apart than their Monte Carlo error and :data:`REPLICA_TOLERANCE`: at least one
        of them stopped short of the optimum, so the kept one may have too."""
        check = self.settings.get("replica_check")
        return bool(isinstance(check, dict) and check.get("disagree"))

    @property
    def steps(self) -> int:
        """The number of optimization steps done."""
        return len(self.free_energy)

    @property
    def ms_per_step(self) -> float:
        replica_check = self.settings.get("replica_check")
        if isinstance(replica_check, dict) and "steps" in replica_check:
            return 1000.0 * self.wall_time / max(sum(replica_check["steps"]), 1)
        return 1000.0 * self.wall_time / max(self.steps, 1)

    @property
    def name(self) -> str:
        return type(self.guide).__name__

    def __str__(self) -> str:
        replica_check = self.settings.get("replica_check")
        if isinstance(replica_check, dict) and "steps" in replica_check:
            runs = " + ".join(str(steps) for steps in replica_check["steps"])
            head = (
                f"{self.name}: {runs} steps ({len(replica_check['steps'])} replicas) in "
                f"{self.wall_time:.1f} s ({self.ms_per_step:.2f} ms/step)"
            )
        else:
            head = (
                f"{self.name}: {self.steps} steps in {self.wall_time:.1f} s "
                f"({self.ms_per_step:.2f} ms/step)"
            )
        if self.interrupted:
            head += (
                f"\ninterrupted after step {self.steps} of {self.settings.get('steps')}: "
                "continue with fit(model, guide, *args, resume=result)"
            )
        start = self.settings.get("guide", {})
        if isinstance(start, dict) and "start" in start:
            head += f"\nstart: {start['start']}"
        if self.convergence:
            head += f"\nconvergence: {self.convergence}"
        replica_check = self.settings.get("replica_check")
        if isinstance(replica_check, dict) and "summary" in replica_check:
            head += f"\nreplicas: {replica_check['summary']}"
        check = self.settings.get("start_check")
        if isinstance(check, dict) and check.get("kept") == "start":
            head += f"\nstart check: {check['why']}"
        if self.report is None:
            tail = (
                np.mean(self.free_energy[-max(1, self.steps // 10) :]) if self.steps else math.nan
            )
            return f"{head}\nfinal running free energy {tail:.3f} (no report computed)"
        return head + "\n" + format_reports({self.name: self.report}) + f"\nverdict: {self.verdict}"


#: a non-finite loss or gradient after the first step is retried (update not applied, fresh
#: draws) at a learning rate this many times smaller, at most NONFINITE_BACKOFFS times per fit
NONFINITE_BACKOFF_FACTOR = 3.0
NONFINITE_BACKOFFS = 3
#: the start check (``compare_start``): draws per side, with common random numbers (this seed),
#: and how many standard errors of the paired difference the start must be better by
START_CHECK_DRAWS = 2000
START_CHECK_SEED = 20261206
START_CHECK_SES = 3.0
#: replicas whose ELBOs differ by more than this (nats) and 3 standard errors disagree
REPLICA_TOLERANCE = 0.05


class NonFiniteLossError(FloatingPointError):
    """The loss (or a gradient) became NaN or infinite during :func:`fit`.

    The update of that step was not applied, so the guide keeps the parameters left by the last
    finite step; ``result`` holds the free-energy history up to it (and the optimizer state).
    """

    def __init__(self, step: int, loss: float, what: str, result: FitResult, backoffs: int = 0):
        self.step = step
        self.loss = loss
        self.result = result
        retried = (
            f" after {backoffs} retries of a step at a learning rate "
            f"{NONFINITE_BACKOFF_FACTOR:g}× smaller each"
            if backoffs
            else ""
        )
        super().__init__(
            f"{what} at step {step} of fit (loss {loss}){retried}; that update was not applied, "
            f"so the guide keeps the parameters left by step {step - 1}, and error.result holds "
            f"the free-energy history of the {step - 1} finite steps. Try a smaller lr, a "
            "smaller init_scale, or more particles."
        )


def _gradients_are_finite(params) -> bool:
    """One check for all gradients: a NaN or infinity anywhere makes the total non-finite."""
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def _zero_captured_grads(trace) -> None:
    zero_grads({site["value"].unconstrained() for site in trace.nodes.values()})


class _StopRequest:
    """Ctrl-C during :func:`fit`: the first press asks to stop after the current step; a second
    press stops at once if the step is still computing its loss (that step is dropped), else
    after the optimizer update, which is never cut in half."""

    def __init__(self):
        self.requested = False
        self.in_loss = False
        self.now = False

    def handle(self, signum, frame) -> None:
        if self.requested and self.in_loss:
            raise KeyboardInterrupt
        if self.requested:
            self.now = True
            return
        self.requested = True
        print(
            "\npyroflows.fit: stopping after this step (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )


@contextmanager
def _deferred_ctrl_c(stop: _StopRequest):
    """Installs ``stop.handle`` for SIGINT in the main thread, if Python's default handler is in
    place (elsewhere a KeyboardInterrupt is caught between steps instead)."""
    installed = False
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, stop.handle)
            installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


_DEFAULTS = {
    "lr": "auto",
    "num_particles": 8,
    "vectorize_particles": True,
    "lr_decay": 0.1,
    "clip_norm": 10.0,
    "anneal_steps": "auto",
    "anneal_from": 0.05,
    "max_steps": 20000,
    "gradients": "auto",
}

#: the ELBO gradient estimators ``fit(gradients=...)`` accepts
GRADIENTS = ("auto", "stl", "reparameterized")

#: the step size of fixed runs shorter than four pilot runs (no pilot is worth it there)
SHORT_RUN_LR = 1e-2

#: steps of tempering that ``anneal_steps="auto"`` gives a guide that can represent several
#: modes (``guide.multimodal``: NAF and spline flows), none to the others
AUTO_ANNEAL_STEPS = 500
#: ... and such a guide whose multi-start MAP found several modes (``guide.start``): 500 steps
#: of β rising from 0.05 to 1 keep both modes of the equal-weight development target but lose
#: the light one of the 0.25/0.75 target (AutoNAF, 4 seeds of 4, KL 0.29 = -log 0.75); 1500
#: keep both on all 8 fits (KL 0.08-0.20 and 0.01-0.03)
AUTO_ANNEAL_STEPS_SEVERAL_MODES = 1500
#: where the MAP search ended at no isolated mode, β stays at ``anneal_from`` for this fraction
#: of the tempering steps before it rises. Such a start is a narrow Gaussian at one point of a
#: continuum of maxima (a ring's circle), and the flattened ``p^β`` has to be covered before it
#: sharpens: held at β = 0.05, AutoNAF from that start took about 400 steps to spread evenly
#: round a development ring (radius 3, width 0.2, base centred outside the circle), by which
#: time a linear rise over 1500 steps is at β ≈ 0.3; on 5 of 8 seeds that fit ended as an arc
#: with about a quarter of the circle missing (KL 0.37-0.46). With 500 steps held before the
#: same rise, on that ring (16 seeds) the median KL went 0.375 → 0.034 and the seeds above 0.2
#: from 12 to 2 (0.28, 0.41); on the wide ring (radius 2, width 0.3; 8 seeds) it stayed at
#: 0.033, on a narrower one (radius 1.5, width 0.15; 8 seeds) 0.030 → 0.026; AutoNSF on the
#: first (4 seeds) went 0.35-1.21 → 0.11-0.61. A third held before a rise of 1000 steps did
#: about as well (median 0.047, two seeds at 0.43 and 0.59). Where the multi-start found
#: separate modes the start already holds them, and the hold cost there (``bimodal_2``,
#: AutoNAF, 6 seeds: KL 0.010-0.017 → 0.011-0.042), so it is used only at no isolated mode.
#: ``benchmarks/bench_ring_tempering.py`` reruns the comparison on the two development rings
ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE = 1 / 4
#: the automatic tempering of a multimodal guide whose MAP search ended at no isolated mode (a
#: singular or indefinite Hessian: a ring's circle of maxima): the same 1500 steps of rise,
#: after a hold of 500 at ``anneal_from`` (the fraction above), 2000 in all. The 1500 were
#: chosen against 500 on two development rings (radius 2 and width 0.3, radius 3 and width 0.2;
#: AutoNAF, 4 seeds each: KL 0.11/0.049/0.005/0.068 and 0.44/0.039/0.40/0.20 with 500 steps,
#: 0.011/0.036/0.012/0.045 and 0.45/0.076/0.41/0.16 with 1500); those rings put
#: ``init_to_median`` near their centre, and on the same rings with the base centred outside
#: the circle (8 seeds each) 1500 still gave the lower total KL on the narrow ring (2.31
#: against 2.86) and the lower KL on 6 of 8 seeds of the wide one
AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE = round(
    AUTO_ANNEAL_STEPS_SEVERAL_MODES / (1 - ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE)
)


def _auto_anneal_steps(guide, run_steps: int) -> int:
    """The tempering steps of ``anneal_steps="auto"`` for a set-up ``guide`` (see
    :data:`AUTO_ANNEAL_STEPS`), at most a quarter of ``run_steps`` (the fixed ``steps``, or
    ``max_steps``)."""
    if not getattr(guide, "multimodal", False):
        return 0
    if start_found_no_isolated_mode(guide):
        steps = AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE
    elif len(guide_modes(guide)) > 1:
        steps = AUTO_ANNEAL_STEPS_SEVERAL_MODES
    else:
        steps = AUTO_ANNEAL_STEPS
    return min(steps, run_steps // 4)


def _anneal_hold_steps(guide, anneal_steps: int) -> int:
    """The steps of tempering held at ``anneal_from`` before β rises (see
    :data:`ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE`): a fraction of ``anneal_steps`` where the
    guide's start found no isolated mode, none elsewhere."""
    if anneal_steps <= 0 or not start_found_no_isolated_mode(guide):
        return 0
    return int(anneal_steps * ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE)


def _resumed_settings(resume, given: dict, guide, checkpoint_state) -> dict:
    """The settings a resumed fit continues with; a setting given with another value than the
    interrupted run's is an error, since the optimizer state and schedule belong to those."""
    previous = resume.settings if checkpoint_state is None else checkpoint_state["settings"]
    if checkpoint_state is None and resume.guide is not guide:
        raise ValueError(
            "resume=result belongs to another guide object: pass the guide of that fit "
            "(result.guide), or resume from a checkpoint file"
        )
    guide_name = type(guide).__name__
    if previous.get("guide_class", guide_name) != guide_name:
        raise _checkpoint.CheckpointError(
            f"the checkpointed run fitted a {previous['guide_class']}, not a {guide_name}"
        )
    previous = {"gradients": "reparameterized", **previous}  # made before pyroflows 0.3
    for name, value in given.items():
        if value != _DEFAULTS[name] and value != previous[name]:
            raise ValueError(
                f"{name}={value!r} differs from the resumed run's {name}={previous[name]!r}: "
                "resume continues with that run's optimizer state and learning-rate schedule. "
                "Leave it out, or start a new fit to change it."
            )
    return previous


def fit(
    model: Callable,
    guide: Callable,
    *args,
    steps: int | str | None = None,
    lr: float | str = "auto",
    num_particles: int = 8,
    vectorize_particles: bool = True,
    lr_decay: float = 0.1,
    clip_norm: float = 10.0,
    elbo: ELBO | None = None,
    progress: bool | None = None,
    report_samples: int | None = DEFAULT_NUM_DRAWS,
    anneal_steps: int | str = "auto",
    anneal_from: float = 0.05,
    max_steps: int = 20000,
    max_seconds: float | None = None,
    resume: FitResult | str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    compare_start: bool = True,
    replicas: int = 1,
    gradients: str = "auto",
    **kwargs,
) -> FitResult:
    """Fits ``guide`` to ``model`` by stochastic variational inference, tuned by itself.

    Defaults, and why (measured on the development targets of ``benchmarks/bench_accuracy.py``;
    :mod:`pyroflows.infer.schedule` has the details):

    * Pyro's ``ClippedAdam`` (elementwise gradient clipping at ``clip_norm=10``: one wild
      gradient cannot throw a flow far), with ``num_particles=8`` vectorized ELBO particles
      (half the gradient variance of 4, at a small cost per step for small models);
    * ``lr="auto"``: pilot runs of 60 steps at 3e-3, 1e-2 and 3e-2 (1e-3, 3e-3 and 1e-2 under
      sticking-the-landing gradients, whose smaller noise makes Adam's steps effectively
      larger: :data:`~pyroflows.infer.schedule.STL_PILOT_LRS`) from the same start choose
      the step size (a larger one must be better by more than its noise), and the fit goes on
      from the winning pilot's state; pyroflows guides learn in the whitened coordinates of
      their start, so this grid fits posteriors of any scale. Every step size applies to the
      whole guide: the fixed factors ``s`` by which a guide makes some parameters step less
      far in the user's own loop (a conditioner's ``output_step_scale``, AutoIAF, AutoNAF and
      AutoNSF 0.1, AutoRealNVP and AutoNICE 0.3, :class:`pyroflows.nn.MADE`) are undone by giving
      those parameters ``lr / s`` (and Adam's ``eps`` and gradient clip times ``s``, as their
      gradients are ``s`` times smaller), so ``fit`` trains them as it did before the factors
      existed
      (the accuracy benchmark's fits stand);
    * ``steps="auto"``: runs until the free energy stops improving by more than its Monte Carlo
      error (checked every 100 steps, twice in a row, after at least 1000); each such stall
      divides the learning rate by 3 and starts a new stage (judged again after 1000 steps),
      until a stall at a rate below 3e-3 (one more division would go under 1e-3) decays the
      rate geometrically to ``rate · lr_decay`` (``lr_decay=0.1``) over ``max(200, 20%)`` more
      steps. The stages let a fit that the pilots started at a large rate also reach the
      smaller noise floor of a small one (AutoNAF on a 10-D funnel: KL 0.13 → 0.05 nats).
      ``max_steps=20000`` caps it, and a fit the cap stopped while still
      improving is reported as not converged. With ``steps=N`` the rate decays from ``lr`` to
      ``lr · lr_decay`` over the ``N`` steps instead, and the same test says at the end whether
      the free energy was still falling;
    * ``anneal_steps="auto"``: 500 steps of tempering (below) for guides that can represent
      several modes (``guide.multimodal``: NAF and spline flows), 1500 where the guide's
      multi-start MAP found several modes (500 lost the light mode of a 0.25/0.75 development
      mixture on 4 seeds of 4, 1500 on none: :data:`AUTO_ANNEAL_STEPS_SEVERAL_MODES`), 2000
      where its MAP search ended at no isolated mode (a singular or indefinite Hessian: a
      ring's circle of maxima): there ``β`` stays at ``anneal_from`` for the first quarter of
      the tempering steps (given or auto) before it rises
      (:data:`ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE`; ``settings["anneal_hold"]``), since the
      guide, a narrow Gaussian at one point of the circle, must first spread over the whole
      flattened ``p^β``. At most a quarter of ``steps`` (or of ``max_steps``). The other
      guides (unimodal ones) are not tempered;
    * a non-finite loss or gradient after the first step is not applied: the step is retried
      with fresh draws at a learning rate ``NONFINITE_BACKOFF_FACTOR`` (3) times smaller, at
      most ``NONFINITE_BACKOFFS`` (3) times per fit (``settings["lr_backoffs"]`` lists them),
      then :class:`NonFiniteLossError`: a flexible flow that overshoots once (NAF on a 10-D
      funnel at the pilots' step size) recovers instead of ending the fit. During tempering
      (``β < 1``) a non-finite loss ends the tempering instead and puts the guide back at its
      start, with a fresh optimizer (``settings["tempering_ended"]`` says when and why): the
      flattened ``p^β`` lets a flow spread to where the model's density overflows (AutoNAF
      from its path start on the held-out 10-D funnel: draws of the log scale above 1000,
      four infinite losses in a row);
    * ``gradients="auto"``: sticking-the-landing gradients (Roeder, Wu & Duvenaud 2017) for
      pyroflows guides of at most ``STL_MAX_DIM`` (64) latent dimensions that are not
      ``multimodal`` (AutoIAF, AutoRealNVP, AutoNICE, AutoPlanar, AutoFlow("maf")), the plain
      reparameterized ones for NAF and spline guides, above 64 dimensions and under an
      ``elbo`` that is JIT-traced or
      importance-weighted (``RenyiELBO``: it needs the score term; Tucker et al. 2019);
      ``"stl"`` or ``"reparameterized"`` choose. The guide's
      log q of its own draw keeps its value but carries only the path gradient, so the
      gradient's score term, zero-mean noise that does not vanish as the guide nears the
      posterior, is gone (:class:`~pyroflows.distributions.FlowDistribution`; any flow, by a
      batched Jacobian, no layer inverted). Measured on the development targets
      (``benchmarks/bench_gradients.py``, 4 seeds, median KL or sd error, reparameterized →
      STL with its own pilot grid): AutoIAF 0.075 → 0.023 on a 5-D funnel, 0.052 → 0.031 on
      a banana, 0.044 → 0.032 sd on a logistic regression, Gaussian posteriors from 0.004-0.006
      nats to below 0.001, for 1.0-1.4 times the CPU time of a fit; on a 10-D development
      funnel (``pyroflows.models.funnel(10)``, seeds 0-5) KL 0.02-0.12 (0.16 median with the
      plain gradients). AutoNAF gained nothing on the funnel (0.022 → 0.023), dropped a mode of
      the bimodal target on every seed (0.031 → 0.69) and, with the plain pilot grid, diverged
      on the 10-D funnel on one seed of six (``NonFiniteLossError``), hence the plain gradients
      for the multimodal families;
    * ``compare_start=True``: the fit never ends worse than it started. After the last step the
      fitted guide and its start (the parameters before the first step: for pyroflows guides
      the Laplace approximation, a path start or the ``init_loc_fn`` start) are scored on the same
      ``START_CHECK_DRAWS`` (2000) standard-normal draws; if the start's ELBO is higher by more
      than ``START_CHECK_SES`` (3) standard errors of the paired difference, the start's
      parameters are put back (``settings["start_check"]`` records the comparison either way).
      Reparameterized gradients are noisy even at the exact posterior (the score term of
      ``log q`` has zero mean, not zero variance; Roeder et al. 2017), so on a Gaussian
      posterior, where the Laplace start is exact, training moved AutoIAF away from it: KL
      5e-6 nats at the start, 0.031 after ``fit`` on a 20-D conjugate regression (0.017 with
      the step-down stages, which 1000 draws per side no longer told from the start by 3
      standard errors: hence 2000).

    * ``max_seconds=None``: no time budget. A number stops the fit after the first step
      that ends past that many wall-clock seconds (pilot runs included; all replicas
      together), reported like a fit stopped by ``max_steps`` (``settings["stopped_by"]``);
    * ``replicas=1``: one fit. ``replicas=2`` (or more) runs independent fits from the same
      start (each with its own pilots, stages and random draws), keeps the one with the
      highest ELBO on ``START_CHECK_DRAWS`` common random numbers, and checks whether they
      agree: where two ELBOs differ by more than ``REPLICA_TOLERANCE`` (0.05 nats) and 3
      standard errors of the paired difference, at least one fit stopped short of the
      optimum, so the kept one may have too, and the verdict is at best "ok"
      (``settings["replica_check"]``; issue 10's "do two independent fits disagree?"). It
      costs ``replicas`` times the time; on the development targets (4 seeds, 2 replicas)
      it trimmed the bad seeds (AutoNAF on a bimodal target, median KL 0.038 → 0.020; on a
      5-D funnel the worst seed 0.031 → 0.010) and left the medians elsewhere within noise,
      so it is not the default. ``resume`` and ``checkpoint`` need ``replicas=1``.

    A tqdm bar shows the running free energy (by default only when stderr is a terminal). After
    fitting, ``report_samples`` fresh draws (default 4000, as for :func:`~pyroflows.diagnose`)
    give the free-energy report on the full data (``None`` or 0 skips it), and
    :attr:`FitResult.verdict` combines its PSIS k-hat with the convergence evidence and, where
    the guide's multi-start Laplace start found several modes
    (:mod:`pyroflows.guides.start`), with the check that the guide covers them
    (:mod:`pyroflows.diagnostics.modes`; a missed mode is "unreliable"): see
    :data:`VERDICT_RULE`.

    Annealing (Rezende & Mohamed 2015): with ``anneal_steps > 0`` the model's log density is
    multiplied by ``β`` rising linearly from ``anneal_from`` to 1 over the first
    ``anneal_steps`` steps (after a hold at ``anneal_from`` where the start found no isolated
    mode, above; :func:`~pyroflows.infer.schedule.tempering_beta`), so the guide first fits the
    flattened ``p^β`` and follows it as it
    sharpens; this lets a flexible guide (AutoNAF) keep every mode of a multimodal posterior
    that plain reverse-KL fitting would drop. The history of those steps is the tempered loss.

    Interrupt and resume: Ctrl-C stops after the current step and returns the partial result
    with ``interrupted=True`` (a second Ctrl-C stops at once, dropping the unfinished step);
    ``fit(model, guide, *args, resume=result)`` continues it with the same optimizer state and
    learning-rate schedule, up to the original ``steps`` (or a larger ``steps``, continuing the
    decay at the same rate). ``checkpoint=path`` writes the parameters, optimizer state,
    history and random states atomically every ``checkpoint_every`` steps (default: every 5% of
    the run), at the end, on Ctrl-C and on a non-finite loss; ``resume=path`` continues from
    the file, also in a new process with a freshly built guide, and ends, on CPU, with the same
    parameters bit for bit as an uninterrupted run.

    ``*args`` and ``**kwargs`` are passed to the model and guide, so the keyword names above
    cannot be model keywords.

    Raises:
        ValueError, TypeError: an argument outside its range, named with the accepted range.
        ModelGuideMismatchError: the guide was built for another model (before any step).
        NonFiniteDataError: the first step's loss is not finite and a model argument holds NaN
            or infinite values (named).
        NonFiniteLossError: the loss or a gradient turned NaN or infinite; it names the step, the
            update is not applied, and ``error.result`` keeps the history.

    Example:
        >>> guide = AutoIAF(model)  # doctest: +SKIP
        >>> result = fit(model, guide, data, steps=1000)
        >>> print(result)
    """
    checkpoint_state = None
    if resume is not None and not isinstance(resume, FitResult):
        if not isinstance(resume, str | os.PathLike):
            raise TypeError(
                "resume must be a FitResult or the path of a checkpoint, got "
                f"{type(resume).__name__}"
            )
        checkpoint_state = _checkpoint.load_checkpoint(resume)
    if isinstance(resume, FitResult) and resume.steps == 0:
        resume = None  # interrupted before its first step (during the pilot runs): start again
    given = {
        "lr": lr,
        "num_particles": num_particles,
        "vectorize_particles": vectorize_particles,
        "lr_decay": lr_decay,
        "clip_norm": clip_norm,
        "anneal_steps": anneal_steps,
        "anneal_from": anneal_from,
        "max_steps": max_steps,
        "gradients": gradients,
    }
    schedule_state = None
    anneal_hold = None  # resolved with anneal_steps, once the guide is set up
    if resume is not None:
        previous = _resumed_settings(resume, given, guide, checkpoint_state)
        anneal_hold = previous.get("anneal_hold", 0)  # runs saved before the hold held none
        lr, num_particles = previous["lr"], previous["num_particles"]
        vectorize_particles = previous["vectorize_particles"]
        lr_decay, clip_norm = previous["lr_decay"], previous["clip_norm"]
        anneal_steps, anneal_from = previous["anneal_steps"], previous["anneal_from"]
        max_steps = previous["max_steps"]
        gradients = previous["gradients"]
        schedule_state = dict(previous["schedule"])
        if steps is None:
            steps = previous["steps"]
        if elbo is None and previous["elbo"] != "Trace_ELBO":
            raise ValueError(
                f"the resumed run used a custom {previous['elbo']}: pass it again as elbo="
            )
    if steps is None:
        steps = "auto"

    max_steps = check_count("max_steps", max_steps, minimum=1)
    if max_seconds is not None:
        max_seconds = check_positive(
            "max_seconds", max_seconds, why=" (a wall-clock budget in seconds, or None)"
        )
    auto_steps = steps == "auto"
    if not auto_steps:
        steps = check_count("steps", steps, minimum=1, why=' (or "auto")')
    if lr != "auto":
        lr = check_positive("lr", lr, why=' (the step size of Adam, e.g. 1e-2; or "auto")')
    num_particles = check_count(
        "num_particles", num_particles, why=" (ELBO samples per step; 0 would train nothing)"
    )
    vectorize_particles = check_flag("vectorize_particles", vectorize_particles)
    lr_decay = check_unit_interval(
        "lr_decay", lr_decay, why=" (the final fraction of lr; 1.0 keeps lr constant)"
    )
    clip_norm = check_positive(
        "clip_norm",
        clip_norm,
        allow_inf=True,
        why=" (the bound on each gradient element; math.inf turns clipping off)",
    )
    auto_anneal = anneal_steps == "auto"  # resolved once the guide is set up
    if not auto_anneal:
        anneal_steps = check_count("anneal_steps", anneal_steps, minimum=0, why=' (or "auto")')
    if not auto_anneal and anneal_steps > (max_steps if auto_steps else steps):
        raise ValueError(
            f"anneal_steps ({anneal_steps}) must be at most steps "
            f"({max_steps if auto_steps else steps}): otherwise the fit ends on a tempered "
            "posterior (β < 1)"
        )
    anneal_from = check_unit_interval("anneal_from", anneal_from)
    if progress is not None:
        progress = check_flag("progress", progress)
    if report_samples:
        report_samples = check_count(
            "report_samples", report_samples, minimum=MIN_KHAT_DRAWS, why=_KHAT_WHY
        )
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(f"elbo must be a pyro.infer.ELBO, got {type(elbo).__name__}")
    if checkpoint_every is not None:
        checkpoint_every = check_count("checkpoint_every", checkpoint_every)
        if checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint=path, where to write")
    if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    if checkpoint is not None and checkpoint_every is None:
        checkpoint_every = 100 if auto_steps else max(1, steps // 20)
    compare_start = check_flag("compare_start", compare_start)
    if gradients not in GRADIENTS:
        raise ValueError(
            f"gradients must be one of {', '.join(map(repr, GRADIENTS))} (sticking-the-landing "
            f"or plain reparameterized ELBO gradients), got {gradients!r}"
        )
    replicas = check_count("replicas", replicas, why=" (independent fits to compare)")
    if replicas > 1:
        if resume is not None or checkpoint is not None:
            raise ValueError(
                f"replicas={replicas} cannot be combined with resume or checkpoint (each "
                "replica is a fit of its own): pass replicas=1"
            )
        options = {
            "steps": steps,
            "lr": lr,
            "num_particles": num_particles,
            "vectorize_particles": vectorize_particles,
            "lr_decay": lr_decay,
            "clip_norm": clip_norm,
            "elbo": elbo,
            "progress": progress,
            "anneal_steps": anneal_steps,
            "anneal_from": anneal_from,
            "max_steps": max_steps,
            "gradients": gradients,
        }
        return _fit_replicas(
            model,
            guide,
            args,
            kwargs,
            replicas,
            options,
            compare_start,
            report_samples,
            max_seconds,
        )

    done: list[float] = []
    wall_before = 0.0
    optimizer_state = None
    if isinstance(resume, FitResult):
        done = list(resume.free_energy)
        wall_before = resume.wall_time
        optimizer_state = copy.deepcopy(resume.optimizer_state)
    elif checkpoint_state is not None:
        done = list(checkpoint_state["history"])
        wall_before = checkpoint_state["wall_time"]
        optimizer_state = checkpoint_state["optimizer"]
    if resume is not None and optimizer_state is None:
        raise ValueError("the resumed result holds no optimizer state (made before pyroflows 0.2)")

    # one run of the guide and model: sets the guide up, names a guide built for another model
    # before any step, and gives the ELBO its plate nesting (so it guesses nothing)
    nesting = max_plate_nesting(model, guide, *args, **kwargs)
    if auto_anneal:
        anneal_steps = _auto_anneal_steps(guide, max_steps if auto_steps else steps)
    if anneal_hold is None:
        anneal_hold = _anneal_hold_steps(guide, anneal_steps)
    sticking_the_landing = _uses_sticking_the_landing(gradients, guide, elbo)
    gradients = "stl" if sticking_the_landing else "reparameterized"
    warned_slow = False
    if elbo is None:
        vectorize = vectorize_particles and num_particles > 1
        problem = vectorization_problem(model, guide, args, kwargs) if vectorize else None
        if problem is not None:
            warnings.warn(
                f"the model is not vectorization-safe ({problem}), so fit computes its "
                f"{num_particles} ELBO particles, and the report its draws, one by one, which is "
                "slower. " + _VECTORIZE_ADVICE,
                NotVectorizableWarning,
                stacklevel=2,
            )
            vectorize, warned_slow = False, True
        elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=vectorize,
            max_plate_nesting=nesting,
        )
    elif math.isinf(getattr(elbo, "max_plate_nesting", 0)):
        elbo.max_plate_nesting = nesting
    if isinstance(resume, FitResult):
        start_params = resume.start_params
    elif checkpoint_state is not None:
        start_params = checkpoint_state.get("start_params")
    else:
        start_params = _start_values(elbo, model, guide, args, kwargs)

    temperature = {"beta": 1.0}

    def tempered_model(*model_args, **model_kwargs):
        with poutine.scale(scale=temperature["beta"]):
            return model(*model_args, **model_kwargs)

    training_model = tempered_model if anneal_steps else model
    if progress is None:
        progress = sys.stderr.isatty()
    stop = _StopRequest()
    start = time.perf_counter()
    pilot_history: list[float] = []
    pilots: list[dict] = []
    if lr == "auto" and not auto_steps and steps < 4 * PILOT_STEPS:
        lr = SHORT_RUN_LR  # too short a run to spend on pilots
    if lr == "auto":  # a fresh run (a resumed one continues with its resolved lr)
        with (
            _deferred_ctrl_c(stop),
            quiet_pyro_logging(),
            _path_gradients(guide, sticking_the_landing),
        ):
            pilot_lrs = STL_PILOT_LRS if sticking_the_landing else PILOT_LRS
            lr, pilot_history, pilots = _pilot_runs(
                elbo, model, guide, args, kwargs, clip_norm, stop, start_params, pilot_lrs
            )
        if lr is None:  # Ctrl-C during the pilot runs: the guide is back where it started
            settings = {"steps": steps, "lr": "auto", "guide_class": type(guide).__name__}
            return FitResult(
                guide, np.asarray([]), time.perf_counter() - start, None, settings, True, {}
            )
    if schedule_state is not None:
        schedule = Schedule(**schedule_state)
    elif auto_steps:
        schedule = Schedule(lr, lr_decay, auto=True)
    else:
        schedule = Schedule(lr, lr_decay, span=steps)
    run_steps = schedule.total(max_steps) if auto_steps else steps
    if len(done) >= run_steps:
        raise ValueError(
            f"the resumed run has already done {len(done)} of steps={run_steps}: pass a larger "
            "steps to continue"
        )
    rule = StoppingRule(min_steps=max(StoppingRule.min_steps, anneal_steps + 200))
    settings = {
        "steps": "auto" if auto_steps else steps,
        "max_steps": max_steps,
        "schedule": schedule.as_dict(),
        "lr": lr,
        "lr_decay": lr_decay,
        "clip_norm": clip_norm,
        "num_particles": elbo.num_particles,
        "vectorize_particles": vectorize_particles,
        "elbo": type(elbo).__name__,
        "gradients": gradients,
        "anneal_steps": anneal_steps,
        "anneal_from": anneal_from,
        "anneal_hold": anneal_hold,
        "pilot": pilots,
        "guide_class": type(guide).__name__,
        "guide": guide.settings() if hasattr(guide, "settings") else type(guide).__name__,
    }
    history: list[float] = list(done) if done else list(pilot_history)
    first_step = len(history) + 1
    optim = _adam(guide, schedule.lr_at(first_step), clip_norm)
    if optimizer_state is not None:
        optim.set_state(optimizer_state)
    if checkpoint_state is not None:
        _restore_from_checkpoint(checkpoint_state, elbo, training_model, guide, args, kwargs)
    param_names: list[str] = list(checkpoint_state["params"]) if checkpoint_state else []
    bar = tqdm(
        total=run_steps,
        initial=len(history),
        disable=not progress,
        desc=type(guide).__name__,
        leave=False,
    )

    def current_state() -> dict:
        return copy.deepcopy(optim.get_state())

    def partial_result(interrupted: bool = False) -> FitResult:
        settings["schedule"] = schedule.as_dict()
        return FitResult(
            guide,
            np.asarray(history),
            wall_before + time.perf_counter() - start,
            None,
            settings,
            interrupted,
            current_state(),
            start_params=start_params,
        )

    def write_checkpoint() -> None:
        if checkpoint is None:
            return
        settings["schedule"] = schedule.as_dict()
        _checkpoint.save_checkpoint(
            checkpoint,
            {
                "step": len(history),
                "settings": settings,
                "history": [float(f) for f in history],
                "wall_time": wall_before + time.perf_counter() - start,
                "params": _checkpoint.parameter_values(param_names),
                "buffers": _checkpoint.module_buffers(guide),
                "optimizer": optim.get_state(),
                "rng": _checkpoint.rng_state(),
                "start_params": start_params,
            },
        )

    interrupted = False
    step = first_step - 1
    with (
        _deferred_ctrl_c(stop),
        quiet_pyro_logging(),
        _path_gradients(guide, sticking_the_landing),
    ):
        while step < run_steps:
            step += 1
            if anneal_steps and "tempering_ended" not in settings:
                temperature["beta"] = tempering_beta(step, anneal_steps, anneal_from, anneal_hold)
            param_capture = poutine.trace(param_only=True)
            validation_error = None
            stop.in_loss = True
            try:
                with param_capture:
                    try:
                        loss = elbo.loss_and_grads(training_model, guide, *args, **kwargs)
                    except ValueError as error:
                        if "found invalid values" not in str(error):
                            raise
                        # Pyro's argument validation caught a NaN inside the model or guide
                        _zero_captured_grads(param_capture.trace)
                        validation_error = error
                        loss = math.nan
            except KeyboardInterrupt:
                # a second Ctrl-C, or a KeyboardInterrupt from the model or guide: drop the
                # unfinished step (its gradients), keep everything before it
                _zero_captured_grads(param_capture.trace)
                interrupted = True
                break
            finally:
                stop.in_loss = False
            loss = float(loss)
            params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
            if not param_names and validation_error is None:
                param_names = sorted(param_capture.trace.nodes)
            problem = None
            if validation_error is not None:
                problem = f"a NaN reached a distribution ({str(validation_error).splitlines()[0]})"
            elif not math.isfinite(loss):
                problem = f"the loss became {loss}"
            elif not _gradients_are_finite(params):
                problem = "a gradient became non-finite"
            if problem is not None:
                zero_grads(params)
                if temperature["beta"] < 1.0 and start_params is not None:
                    # the flattened p^β let the guide spread to where the model's density
                    # overflows (NAF on a 10-D funnel: draws of its log scale in the hundreds):
                    # tempering ends, and the guide goes back to its start with a fresh Adam,
                    # whose moments would otherwise still carry the tempered run's gradients
                    settings["tempering_ended"] = {
                        "step": step,
                        "problem": problem,
                        "beta": temperature["beta"],
                    }
                    temperature["beta"] = 1.0
                    _restore(guide, start_params)
                    optim = _adam(guide, schedule.lr_at(step), clip_norm)
                    step -= 1
                    continue
                backoffs = settings.setdefault("lr_backoffs", [])
                if step > first_step and len(backoffs) < NONFINITE_BACKOFFS:
                    # not applied; the same step again, with fresh draws and a smaller rate
                    schedule.lr /= NONFINITE_BACKOFF_FACTOR
                    backoffs.append({"step": step, "problem": problem, "lr": schedule.lr})
                    _set_learning_rate(optim, schedule.lr_at(step))
                    step -= 1
                    continue
                bar.close()
                _raise_if_data_is_not_finite(step == first_step, args, kwargs, validation_error)
                write_checkpoint()
                error = NonFiniteLossError(step, loss, problem, partial_result(), len(backoffs))
                raise error from validation_error
            optim(params)
            zero_grads(params)
            history.append(loss)
            bar.update(1)
            if progress and (step % 25 == 0 or step == run_steps):
                bar.set_postfix(F=f"{np.mean(history[-100:]):.3f}", refresh=False)
            if (
                auto_steps
                and schedule.decay_start is None
                and step % rule.window == 0
                and step >= rule.min_steps
                and step - schedule.stage_start() >= STEP_DOWN_MIN_STEPS
                and _stalled(rule, history[schedule.stage_start() :])
            ):
                schedule.stalled_at(step, max_steps)
                run_steps = schedule.total(max_steps)
                bar.total = run_steps
            # the next step's rate, set now: it is then part of the optimizer's saved state,
            # and a resumed run's optimizers (re-created from that state) start with it
            _set_learning_rate(optim, schedule.lr_at(step + 1))
            if checkpoint is not None and step % checkpoint_every == 0:
                write_checkpoint()
            if stop.requested or stop.now:
                interrupted = step < run_steps
                break
            if (
                max_seconds is not None
                and step < run_steps
                and time.perf_counter() - start >= max_seconds
            ):
                settings["stopped_by"] = "max_seconds"
                break
    bar.close()
    if compare_start and start_params is not None and not interrupted:
        settings["start_check"] = _start_check(model, guide, args, kwargs, start_params)
    write_checkpoint()
    result = partial_result(interrupted)
    if not interrupted:
        result.converged, result.convergence = _convergence(
            rule, history, schedule, auto_steps, anneal_steps, settings.get("stopped_by")
        )
    if report_samples and not interrupted:
        result.report = _report(model, guide, args, kwargs, report_samples, warned_slow)
    return result


def _uses_sticking_the_landing(gradients: str, guide, elbo: ELBO | None) -> bool:
    """Whether ``fit(gradients=...)`` trains ``guide`` (set up with the model) with
    sticking-the-landing gradients: with ``"stl"``, or with ``"auto"`` for a pyroflows guide of
    at most :data:`STL_MAX_DIM` latent dimensions that is not ``multimodal`` (NAF and spline
    flows keep the plain gradients: on a 10-D funnel AutoNAF with STL diverged on 1 seed of 6),
    where the ELBO allows it (:func:`_path_gradient_problem`)."""
    if gradients == "reparameterized":
        return False
    problem = _path_gradient_problem(guide, elbo)
    if gradients == "stl":
        if problem is not None:
            raise ValueError(
                f'gradients="stl" cannot be used here: {problem}; pass gradients="auto" or '
                '"reparameterized"'
            )
        return True
    return problem is None and suits_path_gradients(guide)


def _path_gradient_problem(guide, elbo: ELBO | None) -> str | None:
    """Why sticking-the-landing gradients do not apply, or None: the guide must be a pyroflows
    guide (its draws know their own log q), and the ELBO the plain one
    (:func:`~pyroflows.guides.path_gradients.path_gradient_problem`)."""
    if not hasattr(guide, "sticking_the_landing"):
        return f"{type(guide).__name__} is not a pyroflows guide, whose draws know their log q"
    return None if elbo is None else path_gradient_problem(elbo)


@contextmanager
def _path_gradients(guide, on: bool):
    """``guide.sticking_the_landing = on`` inside the block, its own value restored after."""
    if not hasattr(guide, "sticking_the_landing"):
        yield
        return
    before = guide.sticking_the_landing
    guide.sticking_the_landing = on
    try:
        yield
    finally:
        guide.sticking_the_landing = before


def _start_check(model, guide, args, kwargs, start_params) -> dict:
    """:func:`_keep_the_better_of_start_and_end`, quietly (the fit gave its warnings)."""
    with warnings.catch_warnings(), quiet_pyro_logging():
        warnings.simplefilter("ignore", NotVectorizableWarning)  # one warning per fit
        return _keep_the_better_of_start_and_end(model, guide, args, kwargs, start_params)


def _report(model, guide, args, kwargs, num_samples: int, warned: bool) -> FreeEnergyReport:
    """The fit's report; ``warned``: the fit already said the model is not vectorizable."""
    with warnings.catch_warnings():
        if warned:  # one warning per fit
            warnings.simplefilter("ignore", NotVectorizableWarning)
        return free_energy_report(model, guide, *args, num_samples=num_samples, **kwargs)


def _step_multipliers(guide) -> dict[int, float]:
    """``id(parameter) -> 1 / s`` for every parameter that a module of ``guide`` multiplies by a
    fixed ``s ≠ 1`` (its ``step_scaled_parameters()``: a conditioner's ``output_step_scale``,
    :class:`pyroflows.nn.MADE`): the step size that moves what it computes by ``lr`` per step,
    as if unscaled."""
    multipliers: dict[int, float] = {}
    if isinstance(guide, torch.nn.Module):
        for module in guide.modules():
            if hasattr(module, "step_scaled_parameters"):
                for param, scale in module.step_scaled_parameters():
                    multipliers[id(param)] = 1.0 / scale
    return multipliers


def _adam(guide, lr: float, clip_norm: float) -> ScaledClippedAdam:
    """Pyro's ``ClippedAdam`` at ``lr``, which undoes the guide's step scales (see
    :func:`_step_multipliers`, read once, when the first parameter's optimizer is created:
    the guide has run by then): ``fit`` chooses its own step size, and a scale meant as a
    smaller step for a user's own loop would only shift the pilot grid for part of the guide."""
    multipliers: dict[int, float] | None = None

    def multiplier(param: torch.Tensor) -> float:
        nonlocal multipliers
        if multipliers is None:
            multipliers = _step_multipliers(guide)
        return multipliers.get(id(param), 1.0)

    return ScaledClippedAdam({"lr": lr, "lrd": 1.0, "clip_norm": clip_norm}, multiplier)


def _set_learning_rate(optim: ScaledClippedAdam, lr: float) -> None:
    """Sets the step size of every parameter's optimizer to ``lr`` times the multiplier it was
    created with (see :func:`_adam`; new parameters start at the base)."""
    for param, torch_optim in torch_optimizers(optim):
        rate = lr * optim.lr_multipliers.get(param, 1.0)
        for group in torch_optim.param_groups:
            group["lr"] = rate


def _stalled(rule: StoppingRule, history: list[float]) -> bool:
    """The rule's test at this check and at the one before (its patience, here 2), as a
    function of the history alone, so that a resumed run decides exactly as an uninterrupted
    one."""
    return all(
        rule.stalled(history[: len(history) - k * rule.window]) for k in range(rule.patience)
    )


def _convergence(
    rule, history, schedule, auto_steps: bool, anneal_steps: int, stopped_by: str | None = None
):
    """``(converged, why)`` at the end of a fit (``stopped_by``: the time budget that ended
    it before its steps)."""
    if stopped_by is not None and len(history) >= 2 * rule.window:
        if rule.stalled(history):
            return (
                True,
                f"the {stopped_by} budget ran out; {rule.describe(history)}: within its error",
            )
        return False, (
            f"the {stopped_by} budget ran out while the free energy was still improving "
            f"({rule.describe(history)}): fit longer (a larger max_seconds, or resume=result)"
        )
    if auto_steps and schedule.decay_start is not None:
        stages = ""
        if schedule.step_downs:
            steps_down = ", ".join(str(step) for step in schedule.step_downs)
            stages = (
                f" (it had stalled and the learning rate was divided by {schedule.factor:g} "
                f"after steps {steps_down})"
            )
        return True, (
            f"the free energy stopped improving by more than its Monte Carlo error at step "
            f"{schedule.decay_start}{stages}; the learning rate then decayed over "
            f"{schedule.decay_steps} steps"
        )
    if len(history) < max(2 * rule.window, anneal_steps + 2 * rule.window):
        return None, "too few steps to judge convergence"
    if auto_steps:  # the cap stopped it
        return False, (
            f"max_steps reached while the free energy was still improving ("
            f"{rule.describe(history)}): fit longer (a larger max_steps, or resume=result)"
        )
    if rule.stalled(history):
        return True, f"{rule.describe(history)}: within its Monte Carlo error"
    return False, (
        f"{rule.describe(history)}, more than its Monte Carlo error: still improving; fit "
        "longer (steps='auto', or resume=result with a larger steps)"
    )


def _snapshot(guide) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of every parameter in Pyro's param store (unconstrained values) and of the guide's
    buffers (batch-norm statistics, a pyroflows guide's start)."""
    params = {
        name: value.detach().clone() for name, value in pyro.get_param_store().named_parameters()
    }
    return {"params": params, "buffers": _checkpoint.module_buffers(guide)}


def _restore(guide, snapshot: dict[str, dict[str, torch.Tensor]]) -> None:
    """Puts a :func:`_snapshot` back into the param store and the guide's buffers, in place."""
    values = snapshot["params"]
    with torch.no_grad():
        for name, value in pyro.get_param_store().named_parameters():
            if name in values:
                value.copy_(values[name])
    _checkpoint.restore_buffers(guide, snapshot["buffers"])


def _start_values(elbo, model, guide, args, kwargs) -> dict[str, dict[str, torch.Tensor]]:
    """The :func:`_snapshot` before the first step. One ELBO evaluation creates every param the
    loss touches (the guide's and the model's), on a forked random state, so it takes no draws
    from the fit's random stream."""
    with torch.no_grad(), torch.random.fork_rng(devices=forked_devices()), quiet_pyro_logging():
        elbo.loss(model, guide, *args, **kwargs)
    return _snapshot(guide)


def _common_log_weights(model, guide, args, kwargs) -> torch.Tensor:
    """``log p(x, z) − log q(z)`` of :data:`START_CHECK_DRAWS` draws from the seed
    :data:`START_CHECK_SEED` (common random numbers: two guides of one family are scored on
    the same base draws), the global random state untouched."""
    with torch.random.fork_rng(devices=forked_devices()):
        torch.manual_seed(START_CHECK_SEED)
        return importance_log_weights(
            model, guide, *args, num_samples=START_CHECK_DRAWS, **kwargs
        ).double()


def _fit_replicas(
    model,
    guide,
    args,
    kwargs,
    replicas: int,
    options: dict,
    compare_start,
    report_samples,
    max_seconds: float | None,
) -> FitResult:
    """``replicas`` independent fits from the same start (the random stream goes on between
    them); keeps the one with the highest ELBO on common random numbers and records, in
    ``settings["replica_check"]``, whether they disagree (see :data:`REPLICA_TOLERANCE`).
    ``max_seconds`` is the budget of all of them: each gets what the ones before left, and
    none starts once it is spent."""
    results, ends, scores = [], [], []
    began = time.perf_counter()
    for index in range(replicas):
        budget = None
        if max_seconds is not None:
            budget = max_seconds - (time.perf_counter() - began)
            if index and budget <= 0:
                break
        if index:
            _restore(guide, results[0].start_params)
        try:
            with warnings.catch_warnings():
                if index:  # warnings about the model were given by the first replica
                    warnings.simplefilter("ignore")
                result = fit(
                    model,
                    guide,
                    *args,
                    replicas=1,
                    compare_start=False,
                    report_samples=None,
                    max_seconds=budget if budget is None else max(budget, 1e-3),
                    **options,
                    **kwargs,
                )
        except NonFiniteLossError as error:
            if not results:
                raise
            results.append(error.result)
            ends.append(None)
            scores.append(None)
            continue
        if result.interrupted:  # Ctrl-C: that replica's partial result, as a plain fit gives
            return result
        results.append(result)
        ends.append(_snapshot(guide))
        with warnings.catch_warnings(), quiet_pyro_logging():
            warnings.simplefilter("ignore", NotVectorizableWarning)
            scores.append(_common_log_weights(model, guide, args, kwargs))
    finite = [k for k, w in enumerate(scores) if w is not None and bool(torch.isfinite(w).all())]
    best = max(finite, key=lambda k: float(scores[k].mean())) if finite else 0
    kept = results[best]
    if ends[best] is not None:
        _restore(guide, ends[best])
    check = _compare_replicas(scores, best)
    check["steps"] = [r.steps for r in results]
    check["wall_time"] = [r.wall_time for r in results]
    if len(results) < replicas:
        check["summary"] += (
            f"; {replicas - len(results)} of {replicas} not run: max_seconds={max_seconds:g} "
            "was spent"
        )
    kept.settings["replicas"] = replicas
    kept.settings["replica_check"] = check
    kept.wall_time = float(sum(r.wall_time for r in results))
    if compare_start and kept.start_params is not None:
        kept.settings["start_check"] = _start_check(model, guide, args, kwargs, kept.start_params)
    if report_samples:
        kept.report = _report(model, guide, args, kwargs, report_samples, warned=True)
    return kept


def _compare_replicas(scores: list[torch.Tensor | None], best: int) -> dict:
    """The kept replica ``best`` against each other one: ELBO differences on common random
    numbers, their paired standard errors, and whether any exceeds both 3 standard errors and
    :data:`REPLICA_TOLERANCE` (JSON-ready)."""
    elbos = [None if w is None else float(w.mean()) for w in scores]
    gaps, ses, failed = [], [], []
    for index, other in enumerate(scores):
        if index == best:
            continue
        if other is None or not bool(torch.isfinite(other).all()):
            failed.append(index)
            continue
        difference = scores[best] - other
        gaps.append(float(difference.mean()))
        ses.append(float(difference.std() / math.sqrt(len(difference))))
    disagree = any(
        gap > START_CHECK_SES * se and gap > REPLICA_TOLERANCE
        for gap, se in zip(gaps, ses, strict=True)
    )
    words = ", ".join(f"{gap:.3g} ± {se:.2g}" for gap, se in zip(gaps, ses, strict=True))
    summary = (
        f"{len(scores)} independent fits from the same start, the best kept (its ELBO ahead "
        f"of the others' by {words} nats)"
        if len(scores) > 1
        else "1 fit"
    )
    if failed:
        summary += f"; {len(failed)} failed (non-finite)"
    if disagree:
        summary += (
            f": they disagree by more than {REPLICA_TOLERANCE} nats, so at least one stopped "
            "short of the optimum, and so may the kept one (fit longer, or more replicas)"
        )
    return {
        "elbos": elbos,
        "kept": best,
        "gaps": gaps,
        "ses": ses,
        "disagree": disagree,
        "failed": failed,
        "summary": summary,
    }


def _keep_the_better_of_start_and_end(model, guide, args, kwargs, start_params) -> dict:
    """Scores the fitted parameters and ``start_params`` on common random numbers
    (:data:`START_CHECK_DRAWS` draws from one seed, the global random state untouched) and
    keeps the start when its ELBO is higher by more than :data:`START_CHECK_SES` standard
    errors of the paired difference; returns what it compared (JSON-ready)."""
    end_params = _snapshot(guide)
    end = _common_log_weights(model, guide, args, kwargs)
    _restore(guide, start_params)
    begin = _common_log_weights(model, guide, args, kwargs)
    difference = begin - end  # > 0 where the start gives the higher ELBO integrand
    if not (bool(torch.isfinite(end).all()) and bool(torch.isfinite(begin).all())):
        _restore(guide, end_params)
        return {"kept": "end", "why": "a log weight was not finite; the start was not compared"}
    gain = float(difference.mean())
    se = float(difference.std() / math.sqrt(len(difference)))
    check = {"start_minus_end_elbo": gain, "se": se, "draws": START_CHECK_DRAWS}
    if gain > START_CHECK_SES * se and gain > 0:
        check["kept"] = "start"
        check["why"] = (
            f"the start's ELBO was higher than the fitted guide's by {gain:.3g} ± {se:.2g} "
            "nats, so the start was kept (training only added noise: fit fewer steps, or "
            "compare_start=False to keep the end)"
        )
        return check
    _restore(guide, end_params)
    check["kept"] = "end"
    return check


def _pilot_runs(elbo, model, guide, args, kwargs, clip_norm, stop, start, lrs):
    """Chooses the step size among ``lrs`` by pilot runs (see :mod:`pyroflows.infer.schedule`)
    from the :func:`_snapshot` ``start``; returns ``(lr, the winning pilot's history, a summary per
    pilot)``, the guide and the model's parameters left where the winning pilot took them.
    ``lr`` is None when Ctrl-C asked to stop; the parameters are then back at their start."""
    scores, ends, histories, summaries = [], [], [], []
    for lr in lrs:
        _restore(guide, start)
        optim = _adam(guide, lr, clip_norm)
        losses: list[float] = []
        for _ in range(PILOT_STEPS):
            capture = poutine.trace(param_only=True)
            try:
                with capture:
                    loss = float(elbo.loss_and_grads(model, guide, *args, **kwargs))
            except ValueError as error:  # a NaN caught by Pyro's validation: this lr fails
                if "found invalid values" not in str(error):
                    raise
                _zero_captured_grads(capture.trace)
                loss = math.nan
            params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
            if not (math.isfinite(loss) and _gradients_are_finite(params)):
                zero_grads(params)
                losses = []
                break
            optim(params)
            zero_grads(params)
            losses.append(loss)
            if stop.requested:
                _restore(guide, start)
                return None, [], []
        tail = np.asarray(losses[len(losses) // 2 :], dtype=float)
        mean = float(tail.mean()) if len(tail) else math.inf
        se = float(tail.std(ddof=1) / math.sqrt(len(tail))) if len(tail) > 1 else math.inf
        scores.append((lr, mean, se))
        summaries.append({"lr": lr, "free_energy": mean, "se": se})
        ends.append(_snapshot(guide))
        histories.append(losses)
    try:
        best = pick_pilot(scores)
    except FloatingPointError:
        _restore(guide, start)
        raise NonFiniteLossError(
            1,
            math.nan,
            f"every pilot run of the step size ({list(lrs)}) diverged",
            FitResult(guide, np.asarray([]), 0.0, None, {}, False, {}),
        ) from None
    _restore(guide, ends[best])
    return lrs[best], histories[best], summaries


def _raise_if_data_is_not_finite(first_step: bool, args, kwargs, cause) -> None:
    """A non-finite loss at the first step with NaN or infinite data: the data are the cause."""
    if not first_step:
        return
    problems = describe_nonfinite_arguments(args, kwargs)
    if problems:
        raise NonFiniteDataError(
            "the loss is not finite at the first step because the model's data hold non-finite "
            "values: " + "; ".join(problems) + ". Remove or impute them (or mask them with "
            "pyro.sample(..., obs_mask=...)); the parameters were not changed."
        ) from cause


def _restore_from_checkpoint(state, elbo, model, guide, args, kwargs) -> None:
    """Puts the checkpointed params into the (set-up) guide and model params, then the random
    states, so that the next step is the one the checkpointed run would have taken."""
    with torch.no_grad(), poutine.block():
        # creates every param the loss touches (the guide's and the model's) in the store
        elbo.loss(model, guide, *args, **kwargs)
    _checkpoint.restore_parameters(state["params"])
    _checkpoint.restore_buffers(guide, state.get("buffers", {}))
    _checkpoint.set_rng_state(state["rng"])
