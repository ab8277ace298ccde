"""The accuracy benchmark's machinery: training with snapshots, peers, and metrics.

Contenders on a target and seed:

* **pyroflows guides** (``make_guide(family, model)``) fitted by ``pyroflows.fit(model, guide,
  *args)`` at its defaults, whatever they are when this runs (no tuning arguments; a time cap is
  passed only if ``fit`` has an argument for one, and is otherwise enforced from outside, see
  :func:`train_pyroflows`);
* **peers** (:data:`PEERS`): Pyro's ``AutoNormal``, ``AutoMultivariateNormal``,
  ``AutoLaplaceApproximation`` (a MAP, then ``laplace_approximation()``), ``AutoIAFNormal`` with
  4 layers, ``AutoNormalizingFlow`` with 2 ``neural_autoregressive`` layers, and zuko's NSF
  wrapped by ``pyro.contrib.zuko.ZukoToPyro`` (:class:`AutoZukoNSF`), each trained by one plain
  SVI loop (:data:`PEER_TRAINING`) for a given time budget.

Time is one clock for everyone (:class:`Clock`): by default the process's CPU time, which with
one torch thread equals the wall time of an unloaded core and is robust to other jobs on a
shared machine.

During training, copies of the guide's ``state_dict`` are taken at geometrically spaced times
(:class:`SnapshotRecorder`); afterwards each copy is evaluated (:func:`evaluate_guide`), giving
the quality-versus-time curve from which the time to quality is read.

Metrics of a guide ``q`` from ``S`` fresh draws ``z_s ~ q`` with ``log w_s = log p(x, z_s) -
log q(z_s)``:

* ``ELBO = mean_s log w_s`` with its standard error, and ``KL = log Z - ELBO`` where ``log Z``
  is known;
* the IW gap ``log mean_s w_s - ELBO`` (a lower bound on KL(q || p)), PSIS k-hat and the
  verdict from ``pyroflows.diagnose``;
* per scalar coordinate ``i`` (constrained space): the mean error ``|mean_q - mean_p| / sd_p``
  and ``|log(sd_q / sd_p)|``; their max and mean over coordinates; the **sd error**
  ``max_i max(mean error_i, |log sd ratio_i|)`` (optionally from more draws than the rest:
  ``moment_samples``).

Example:
    >>> from accuracy.targets import build_target
    >>> target = build_target("linreg_10")
    >>> run = train_peer(target, "AutoLaplaceApproximation", seed=0, budget=3.0)
    >>> metrics = run.evaluate_state(run.final_state, 4000, target.reference_moments())
    >>> metrics["kl"] < 0.5  # the Laplace approximation is exact for this Gaussian posterior
    True
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (
    AutoContinuous,
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)
from pyro.infer.util import zero_grads

from accuracy.targets import ReferenceMoments, Target, flatten_draws

__all__ = [
    "PEERS",
    "PEER_TRAINING",
    "AutoZukoNSF",
    "Clock",
    "SnapshotRecorder",
    "TimeCapReached",
    "TrainedGuide",
    "evaluate_guide",
    "quality",
    "time_to_quality",
    "train_peer",
    "train_pyroflows",
]

#: the peers' SVI loop, one setting for every peer and target (see README of the benchmark):
#: Adam at a fixed lr 5e-3 with 8 vectorized particles (1 for the MAP of the Laplace peer,
#: whose loss is deterministic)
PEER_TRAINING = {"optimizer": "Adam", "lr": 5e-3, "num_particles": 8, "map_num_particles": 1}

#: the 0.05-nat tolerance of time to quality on targets with a known log Z
KL_TOLERANCE = 0.05
#: the tolerance of time to quality on reference-draw targets, in posterior sds (sd error)
SD_TOLERANCE = 0.1

#: names ``fit`` might give a time cap; passed only if ``fit`` has one of them
#: where ``fit`` takes the cap itself, the wrapper stops it only past this multiple of the cap
#: (a safety net: ``fit`` stops by its own wall clock, then scores and reports)
CAP_SLACK = 2.0
FIT_TIME_CAP_ARGUMENTS = ("max_time", "time_limit", "max_seconds", "time_budget", "max_wall_time")


class Clock:
    """Seconds on one clock: ``"process"`` (CPU time of this process, the default) or
    ``"wall"`` (``time.perf_counter``)."""

    def __init__(self, kind: str = "process"):
        if kind not in ("process", "wall"):
            raise ValueError(f"clock must be 'process' or 'wall', got {kind!r}")
        self.kind = kind
        self._now = time.process_time if kind == "process" else time.perf_counter

    def __call__(self) -> float:
        return self._now()


class TimeCapReached(Exception):  # noqa: N818 - a signal, not an error
    """Raised from inside a model call when a fit runs past its time cap.

    Deliberately not a ``ValueError``/``RuntimeError``: Pyro's trace handler re-raises those
    with a shape table appended, and ``fit`` inspects ``ValueError``.
    """


def _state_copy(guide: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in guide.state_dict().items()}


class SnapshotRecorder:
    """Copies of a guide's ``state_dict`` at times ``first * ratio^k`` after ``start``.

    Call :meth:`maybe_record` often (every step, or every model call); it records at most one
    copy per scheduled time and costs one clock read otherwise.
    """

    def __init__(self, clock: Clock, start: float, first: float = 0.05, ratio: float = 1.3):
        self.clock = clock
        self.start = start
        self.first = first
        self.ratio = ratio
        self.next_time = 0.0
        self.states: list[tuple[float, dict[str, torch.Tensor]]] = []

    def elapsed(self) -> float:
        return self.clock() - self.start

    def maybe_record(self, guide: torch.nn.Module) -> None:
        now = self.elapsed()
        if now < self.next_time:
            return
        state = _state_copy(guide)
        if not state:  # not initialized yet
            return
        self.states.append((now, state))
        next_time = self.first
        while next_time <= now:
            next_time *= self.ratio
        self.next_time = next_time

    def record_final(self, guide: torch.nn.Module) -> None:
        self.states.append((self.elapsed(), _state_copy(guide)))


@dataclass
class TrainedGuide:
    """A trained guide, its snapshots, and how the training went.

    ``evaluation_guide(state)`` loads ``state`` into the guide and returns the guide to evaluate
    (for the Laplace peer: the Gaussian of ``laplace_approximation``).
    """

    label: str
    kind: str  # "pyroflows" or "peer"
    guide: torch.nn.Module
    target: Target
    seed: int
    seconds: float
    steps: int | None
    status: str  # "ok", "capped", "diverged", "failed"
    note: str
    snapshots: list[tuple[float, dict[str, torch.Tensor]]]
    budget: float | None = None
    extra: dict = field(default_factory=dict)
    to_evaluate: Callable[[torch.nn.Module], Callable] | None = None

    @property
    def final_state(self) -> dict[str, torch.Tensor]:
        return self.snapshots[-1][1]

    def evaluation_guide(self, state: dict[str, torch.Tensor]) -> Callable:
        """The guide with ``state`` loaded, ready to evaluate.

        Raises whatever building it raises (e.g. a non-positive-definite Hessian in
        ``laplace_approximation``); :meth:`evaluate_state` turns that into an ``error`` entry.
        """
        pyro.clear_param_store()  # the module, not a stale param store, holds the values
        self.guide.load_state_dict(state)
        if self.to_evaluate is not None:
            return self.to_evaluate(self.guide)
        return self.guide

    def evaluate_state(
        self,
        state: dict[str, torch.Tensor],
        num_samples: int,
        reference: ReferenceMoments,
        diagnose: bool = True,
        moment_samples: int | None = None,
    ) -> dict:
        """:func:`evaluate_guide` of the guide at ``state``; a guide that cannot be built
        gets ``{"error": ...}`` instead of figures."""
        try:
            guide = self.evaluation_guide(state)
        except Exception as error:
            return {
                "num_samples": num_samples,
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}",
            }
        return evaluate_guide(
            self.target,
            guide,
            num_samples,
            reference=reference,
            diagnose=diagnose,
            moment_samples=moment_samples,
        )


# ---------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------


class AutoZukoNSF(AutoContinuous):
    """zuko's neural spline flow as a Pyro guide, through ``pyro.contrib.zuko.ZukoToPyro``.

    Pyro's tutorial "SVI with a normalizing flow guide" samples a site from
    ``ZukoToPyro(flow())`` with ``flow.transform = flow.transform.inv`` (the inverse direction
    samples in one pass). This wraps the same thing in ``AutoContinuous`` so that any model's
    latent sites are packed into one unconstrained vector ``z ~ flow()`` and mapped to each site
    with its bijection (and log-Jacobian), as Pyro's ``AutoIAFNormal`` does. zuko's defaults:
    ``NSF(features=D)``, i.e. 3 transforms, hidden (64, 64), 8 bins on [-5, 5].
    """

    def __init__(self, model: Callable, **nsf_options):
        self.nsf_options = nsf_options
        super().__init__(model)

    def _setup_prototype(self, *args, **kwargs) -> None:
        import zuko

        super()._setup_prototype(*args, **kwargs)
        flow = zuko.flows.NSF(features=self.latent_dim, **self.nsf_options)
        flow.transform = flow.transform.inv
        self.flow = flow

    def get_posterior(self, *args, **kwargs):
        from pyro.contrib.zuko import ZukoToPyro

        return ZukoToPyro(self.flow())


def _pyro_naf(model: Callable) -> AutoNormalizingFlow:
    from pyro.distributions.transforms import iterated, neural_autoregressive

    return AutoNormalizingFlow(model, partial(iterated, 2, neural_autoregressive))


#: peer label -> guide builder (Pyro's and zuko's defaults unless stated)
PEERS: dict[str, Callable[[Callable], torch.nn.Module]] = {
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoLaplaceApproximation": AutoLaplaceApproximation,
    "AutoIAFNormal(4)": partial(AutoIAFNormal, num_transforms=4),
    "AutoNormalizingFlow(NAF)": _pyro_naf,
    "zuko NSF": AutoZukoNSF,
}


def _laplace(args: tuple) -> Callable[[torch.nn.Module], Callable]:
    def to_gaussian(guide: AutoLaplaceApproximation) -> Callable:
        return guide.laplace_approximation(*args)

    return to_gaussian


def _finite(loss: float, params) -> bool:
    if not math.isfinite(loss):
        return False
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def train_peer(
    target: Target,
    label: str,
    seed: int,
    budget: float,
    clock: Clock | None = None,
    snapshot_first: float = 0.05,
    snapshot_ratio: float = 1.3,
    max_bad_steps: int = 50,
    build: Callable[[Callable], torch.nn.Module] | None = None,
    kind: str = "peer",
) -> TrainedGuide:
    """Trains peer ``label`` on ``target`` for ``budget`` seconds with the loop of
    :data:`PEER_TRAINING`: each step is ``Trace_ELBO.loss_and_grads`` and an Adam update, as in
    ``SVI.step``, except that a step whose loss or gradient is not finite is not applied; after
    ``max_bad_steps`` such steps in a row the run stops as ``"diverged"``. ``build`` (a guide
    builder, for a guide that is not in :data:`PEERS`) and ``kind`` (the record's kind) train
    another guide in the same loop, e.g. a pyroflows guide without ``fit``.

    The time includes building and initializing the guide, and for the Laplace peer the Hessian
    (``laplace_approximation``) after the loop.
    """
    if build is None and label not in PEERS:
        raise KeyError(f"no peer {label!r}; peers: {list(PEERS)}")
    clock = clock or Clock()
    model, args = target.model, target.args
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = clock()
    recorder = SnapshotRecorder(clock, start, snapshot_first, snapshot_ratio)
    guide = (build or PEERS[label])(model)
    is_laplace = isinstance(guide, AutoLaplaceApproximation)
    particles = PEER_TRAINING["map_num_particles" if is_laplace else "num_particles"]
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
    guide(*args)  # initializes the parameters
    optimizer = pyro.optim.Adam({"lr": PEER_TRAINING["lr"]})
    steps, bad_in_a_row, bad_total = 0, 0, 0
    status, note = "ok", ""
    recorder.maybe_record(guide)
    while recorder.elapsed() < budget:
        with poutine.trace(param_only=True) as capture:
            try:
                loss = float(elbo.loss_and_grads(model, guide, *args))
            except ValueError as error:  # Pyro's validation caught a NaN
                loss, note = math.nan, str(error).splitlines()[0]
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        if _finite(loss, params):
            optimizer(params)
            bad_in_a_row = 0
        else:
            bad_in_a_row += 1
            bad_total += 1
        zero_grads(params)
        steps += 1
        if bad_in_a_row >= max_bad_steps:
            status = "diverged"
            note = f"{max_bad_steps} non-finite steps in a row at step {steps}; {note}".strip()
            break
        recorder.maybe_record(guide)
    train_seconds = recorder.elapsed()
    to_evaluate = None
    extra = {"non_finite_steps": bad_total, "loop_seconds": train_seconds}
    if is_laplace:
        to_evaluate = _laplace(args)
        hessian_start = clock()
        try:
            to_evaluate(guide)
        except Exception as error:  # a non-positive-definite Hessian, typically
            status, note = "failed", f"laplace_approximation: {type(error).__name__}: {error}"
        extra["hessian_seconds"] = clock() - hessian_start
    recorder.record_final(guide)
    if bad_total and status == "ok":
        note = f"{bad_total} non-finite steps skipped"
    return TrainedGuide(
        label=label,
        kind=kind,
        guide=guide,
        target=target,
        seed=seed,
        seconds=clock() - start,
        steps=steps,
        status=status,
        note=note[:300],
        snapshots=recorder.states,
        budget=budget,
        extra=extra,
        to_evaluate=to_evaluate,
    )


# ---------------------------------------------------------------------------------------------
# pyroflows
# ---------------------------------------------------------------------------------------------


def pyroflows_label(family: str) -> str:
    """``AutoIAF`` for ``"iaf"``: the class ``make_guide`` builds, or ``AutoFlow(<family>)``."""
    from pyroflows.guides.registry import get_guide_class

    cls = get_guide_class(family)
    return f"AutoFlow({family})" if cls.__name__ == "AutoFlow" else cls.__name__


def train_pyroflows(
    target: Target,
    family: str,
    seed: int,
    time_cap: float,
    clock: Clock | None = None,
    snapshot_first: float = 0.05,
    snapshot_ratio: float = 1.3,
) -> TrainedGuide:
    """Builds ``make_guide(family, model)`` and runs ``pyroflows.fit(model, guide, *args)`` at
    its defaults; the time runs from before ``make_guide`` to the return of ``fit`` (so a
    Laplace start, pilot runs and ``fit``'s own report are included).

    Snapshots are taken from a thin wrapper around the model: ``fit`` calls the model at every
    step, and the wrapper copies the guide's state at the scheduled times. If ``fit`` has a time
    cap argument (:data:`FIT_TIME_CAP_ARGUMENTS`) and the clock is the wall clock (``fit``'s
    budget is wall-clock seconds), ``time_cap`` is passed to it and the
    wrapper only stops a fit that runs past :data:`CAP_SLACK` times it; otherwise the wrapper
    raises :class:`TimeCapReached` past ``time_cap``. Either way a stopped fit's guide is
    evaluated as it stands (status ``"capped"``).
    """
    import pyroflows

    clock = clock or Clock()
    model, args = target.model, target.args
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = clock()
    recorder = SnapshotRecorder(clock, start, snapshot_first, snapshot_ratio)
    guide = pyroflows.make_guide(family, model)

    calls = {"model": 0}
    parameters = inspect.signature(pyroflows.fit).parameters
    # fit's own budget is wall-clock seconds: it stands in for the cap only on the wall clock
    # (on a shared machine the process clock runs slower, and fit would stop early)
    cap_argument = (
        next((n for n in FIT_TIME_CAP_ARGUMENTS if n in parameters), None)
        if clock.kind == "wall"
        else None
    )

    def model_with_snapshots(*model_args, **model_kwargs):
        calls["model"] += 1
        recorder.maybe_record(guide)
        if recorder.elapsed() > time_cap * (CAP_SLACK if cap_argument else 1.0):
            raise TimeCapReached(f"time cap {time_cap:.1f} s reached")
        return model(*model_args, **model_kwargs)

    fit_options: dict = {}
    if "progress" in parameters:
        fit_options["progress"] = False
    if cap_argument is not None:
        fit_options[cap_argument] = time_cap
    status, note, extra = "ok", "", {"fit_options": dict(fit_options)}
    steps = None
    try:
        result = pyroflows.fit(model_with_snapshots, guide, *args, **fit_options)
        steps = result.steps
        extra["fit_wall_time"] = result.wall_time
        extra["fit_settings"] = _jsonable(getattr(result, "settings", {}))
        if isinstance(getattr(result, "verdict", None), str):  # fit's own combined verdict
            extra["fit_verdict"] = result.verdict
        report = getattr(result, "report", None)
        if report is not None:
            extra["fit_report"] = _jsonable(
                report.as_dict() if hasattr(report, "as_dict") else vars(report)
            )
    except TimeCapReached as error:
        status, note = "capped", str(error)
    except pyroflows.NonFiniteLossError as error:
        status, note = "failed", str(error).split(";")[0]
        steps = getattr(error, "step", None)
    seconds = clock() - start
    extra["model_calls"] = calls["model"]
    recorder.record_final(guide)
    return TrainedGuide(
        label=pyroflows_label(family),
        kind="pyroflows",
        guide=guide,
        target=target,
        seed=seed,
        seconds=seconds,
        steps=steps,
        status=status,
        note=note[:300],
        snapshots=recorder.states,
        extra=extra,
    )


def _jsonable(value):
    """Settings and reports as JSON-friendly values (tensors and objects become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return str(value)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def evaluate_guide(
    target: Target,
    guide: Callable,
    num_samples: int,
    seed: int = 12345,
    reference: ReferenceMoments | None = None,
    diagnose: bool = True,
    moment_samples: int | None = None,
) -> dict:
    """The metrics of ``guide`` on ``target`` from ``num_samples`` fresh draws (seeded with
    ``seed``, so every snapshot of a run is scored on common random numbers).

    Returns a dict with ``elbo``, ``elbo_se``, ``kl`` (None unless ``log Z`` is known),
    ``iw_bound``, ``iw_gap``, ``mean_error_max``/``mean``, ``log_sd_error_max``/``mean``,
    ``sd_error`` (see the module docstring), and with ``diagnose=True`` also ``khat``,
    ``verdict`` and ``ess`` from ``pyroflows.diagnose``. A guide whose draws fail (NaN, an
    exception) gets ``error`` and no figures.

    ``moment_samples`` (at least ``num_samples``; default ``num_samples``): the mean and sd
    errors come from this many draws, of which the first ``num_samples`` give everything else
    (ELBO, KL, IW gap, k-hat and verdict keep the meaning they have at the library's default
    number of draws). The sd error is a max over coordinates of errors that each carry the
    guide's own Monte Carlo error, ``1/sqrt(draws)`` sd in a mean; more draws lower that floor.
    """
    from pyroflows import diagnose as pyroflows_diagnose
    from pyroflows.diagnostics.draws import draw_posterior

    moment_samples = num_samples if moment_samples is None else moment_samples
    if moment_samples < num_samples:
        raise ValueError(
            f"moment_samples={moment_samples} must be at least num_samples={num_samples}"
        )
    reference = reference or target.reference_moments()
    pyro.set_rng_seed(seed)
    metrics: dict = {"num_samples": num_samples, "moment_samples": moment_samples}
    try:
        all_draws = draw_posterior(
            target.model, guide, *target.args, num_samples=moment_samples, chunk_size=500
        )
    except Exception as error:  # a broken guide (NaN parameters, a failed Cholesky...)
        metrics["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return metrics
    draws = _first_draws(all_draws, num_samples)
    log_w = draws.log_weights.detach().double()
    if not bool(torch.isfinite(log_w).all()):
        bad = int((~torch.isfinite(log_w)).sum())
        metrics["error"] = f"{bad} of {num_samples} log weights are not finite"
        return metrics
    elbo = float(log_w.mean())
    metrics["elbo"] = elbo
    metrics["elbo_se"] = float(log_w.std() / math.sqrt(num_samples))
    metrics["iw_bound"] = float(torch.logsumexp(log_w, 0) - math.log(num_samples))
    metrics["iw_gap"] = metrics["iw_bound"] - elbo
    metrics["kl"] = None if target.log_evidence is None else target.log_evidence - elbo
    values = flatten_draws(all_draws.samples, target.sites)
    mean_error = np.abs(values.mean(0) - reference.mean) / reference.sd
    log_sd_error = np.abs(np.log(values.std(0, ddof=1) / reference.sd))
    metrics["mean_error_max"] = float(mean_error.max())
    metrics["mean_error_mean"] = float(mean_error.mean())
    metrics["log_sd_error_max"] = float(log_sd_error.max())
    metrics["log_sd_error_mean"] = float(log_sd_error.mean())
    metrics["sd_error"] = float(np.maximum(mean_error, log_sd_error).max())
    metrics["worst_coordinate"] = reference.names[
        int(np.argmax(np.maximum(mean_error, log_sd_error)))
    ]
    if diagnose:
        try:
            # diagnose(guide, model, ...) until issue 10, diagnose(model, guide, ...) after it
            first = next(iter(inspect.signature(pyroflows_diagnose).parameters))
            pair = (target.model, guide) if first == "model" else (guide, target.model)
            diagnosis = pyroflows_diagnose(*pair, *target.args, draws=draws)
            metrics["khat"] = float(diagnosis.khat)
            metrics["verdict"] = str(diagnosis.verdict)
            metrics["ess"] = float(diagnosis.ess)
        except Exception as error:  # the diagnostic itself failed: say so, keep the rest
            metrics["diagnose_error"] = f"{type(error).__name__}: {error}"[:200]
    return metrics


def _first_draws(draws, count: int):
    """The first ``count`` of ``draws`` (a ``PosteriorDraws``; itself where it has no more)."""
    if draws.num_samples <= count:
        return draws

    def first(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: tensor[:count] for name, tensor in tensors.items()}

    return replace(
        draws,
        samples=first(draws.samples),
        log_q=draws.log_q[:count],
        log_joint=draws.log_joint[:count],
        log_likelihood=first(draws.log_likelihood),
        predictive=first(draws.predictive),
    )


def quality(target: Target, metrics: dict) -> float:
    """The number a guide is ranked by (lower is better): KL where ``log Z`` is known, else
    the sd error; ``inf`` for a guide that could not be evaluated."""
    key = "kl" if target.log_evidence is not None else "sd_error"
    value = metrics.get(key)
    return math.inf if value is None or not math.isfinite(value) else float(value)


def tolerance(target: Target) -> float:
    """Time-to-quality tolerance: 0.05 nats of KL, or 0.1 posterior sd of sd error."""
    return KL_TOLERANCE if target.log_evidence is not None else SD_TOLERANCE


def time_to_quality(curve: list[tuple[float, float]], goal: float) -> float | None:
    """The first time of ``curve`` (``(seconds, quality)`` pairs, in time order) at which the
    quality is at most ``goal``; None if it never is."""
    for seconds, value in curve:
        if value <= goal:
            return seconds
    return None
