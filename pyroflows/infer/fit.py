"""``fit``: SVI with a progress bar, a free-energy history, and a report at the end."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import zero_grads
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from pyroflows.diagnostics.free_energy import FreeEnergyReport, format_reports, free_energy_report

__all__ = ["FitResult", "NonFiniteLossError", "fit"]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        guide: the fitted guide (trained in place).
        free_energy: ``F = -ELBO`` estimate at each step (numpy array of length ``steps``).
        wall_time: seconds spent in the optimization loop.
        report: the :class:`FreeEnergyReport` from fresh draws after fitting (None if skipped).
        settings: the optimization settings used.
    """

    guide: Callable
    free_energy: np.ndarray
    wall_time: float
    report: FreeEnergyReport | None = None
    settings: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.free_energy)

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.wall_time / max(self.steps, 1)

    @property
    def name(self) -> str:
        return type(self.guide).__name__

    def __str__(self) -> str:
        head = (
            f"{self.name}: {self.steps} steps in {self.wall_time:.1f} s "
            f"({self.ms_per_step:.2f} ms/step)"
        )
        if self.report is None:
            tail = (
                np.mean(self.free_energy[-max(1, self.steps // 10) :]) if self.steps else math.nan
            )
            return f"{head}\nfinal running free energy {tail:.3f} (no report computed)"
        return head + "\n" + format_reports({self.name: self.report})


class NonFiniteLossError(FloatingPointError):
    """The loss (or a gradient) became NaN or infinite during :func:`fit`.

    The update of that step was not applied, so the guide keeps the parameters left by the last
    finite step; ``result`` holds the free-energy history up to it.
    """

    def __init__(self, step: int, loss: float, what: str, result: FitResult):
        self.step = step
        self.loss = loss
        self.result = result
        super().__init__(
            f"{what} at step {step} of fit (loss {loss}); that update was not applied, so the "
            f"guide keeps the parameters left by step {step - 1}, and error.result holds the "
            f"free-energy history of the {step - 1} finite steps. Try a smaller lr, a smaller "
            "init_scale, or more particles."
        )


def _gradients_are_finite(params) -> bool:
    """One check for all gradients: a NaN or infinity anywhere makes the total non-finite."""
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def _zero_captured_grads(trace) -> None:
    zero_grads({site["value"].unconstrained() for site in trace.nodes.values()})


def fit(
    model: Callable,
    guide: Callable,
    *args,
    steps: int = 2000,
    lr: float = 1e-2,
    num_particles: int = 4,
    vectorize_particles: bool = True,
    lr_decay: float = 0.1,
    clip_norm: float = 10.0,
    elbo: ELBO | None = None,
    progress: bool | None = None,
    report_samples: int | None = 2000,
    anneal_steps: int = 0,
    anneal_from: float = 0.05,
    **kwargs,
) -> FitResult:
    """Fits ``guide`` to ``model`` by stochastic variational inference.

    Adam with elementwise gradient clipping (Pyro's ``ClippedAdam``), ``num_particles``
    vectorized ELBO particles, and an optional learning-rate decay: the learning rate falls
    geometrically from ``lr`` to ``lr * lr_decay`` over ``steps``. A tqdm bar shows the running
    free energy (by default only when stderr is a terminal). After fitting, ``report_samples``
    fresh draws give the free-energy report (``None`` skips it).

    Annealing (Rezende & Mohamed 2015): with ``anneal_steps > 0`` the model's log density is
    multiplied by ``β`` rising linearly from ``anneal_from`` to 1 over the first
    ``anneal_steps`` steps, so the guide first fits the flattened ``p^β`` and follows it as it
    sharpens; this lets a flexible guide (AutoNAF) keep every mode of a multimodal posterior
    that plain reverse-KL fitting would drop. The history of those steps is the tempered loss.

    ``*args`` and ``**kwargs`` are passed to the model and guide, so the keyword names above
    cannot be model keywords.

    Raises:
        NonFiniteLossError: the loss or a gradient turned NaN or infinite; it names the step, the
            update is not applied, and ``error.result`` keeps the history.

    Example:
        >>> guide = AutoIAF(model)  # doctest: +SKIP
        >>> result = fit(model, guide, data, steps=1000)
        >>> print(result)
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay is the final fraction of lr, in (0, 1]; got {lr_decay}")
    if anneal_steps < 0 or not 0 < anneal_from <= 1:
        raise ValueError("anneal_steps must be >= 0 and anneal_from in (0, 1]")
    if elbo is None:
        elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles and num_particles > 1,
        )
    settings = {
        "steps": steps,
        "lr": lr,
        "lr_decay": lr_decay,
        "clip_norm": clip_norm,
        "num_particles": elbo.num_particles,
        "elbo": type(elbo).__name__,
        "anneal_steps": anneal_steps,
        "guide": guide.settings() if hasattr(guide, "settings") else type(guide).__name__,
    }
    temperature = {"beta": 1.0}

    def tempered_model(*model_args, **model_kwargs):
        with poutine.scale(scale=temperature["beta"]):
            return model(*model_args, **model_kwargs)

    training_model = tempered_model if anneal_steps else model
    if progress is None:
        progress = sys.stderr.isatty()
    optim = ClippedAdam({"lr": lr, "lrd": lr_decay ** (1.0 / steps), "clip_norm": clip_norm})
    history: list[float] = []
    bar = tqdm(range(1, steps + 1), disable=not progress, desc=type(guide).__name__, leave=False)
    start = time.perf_counter()

    def partial_result() -> FitResult:
        return FitResult(guide, np.asarray(history), time.perf_counter() - start, None, settings)

    for step in bar:
        if anneal_steps:
            progress_fraction = min(1.0, (step - 1) / anneal_steps)
            temperature["beta"] = anneal_from + (1.0 - anneal_from) * progress_fraction
        with poutine.trace(param_only=True) as param_capture:
            try:
                loss = elbo.loss_and_grads(training_model, guide, *args, **kwargs)
            except ValueError as error:
                if "found invalid values" not in str(error):
                    raise
                # Pyro's argument validation caught a NaN inside the model or guide
                _zero_captured_grads(param_capture.trace)
                bar.close()
                raise NonFiniteLossError(
                    step,
                    math.nan,
                    f"a NaN reached a distribution ({str(error).splitlines()[0]})",
                    partial_result(),
                ) from error
        loss = float(loss)
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        problem = None
        if not math.isfinite(loss):
            problem = f"the loss became {loss}"
        elif not _gradients_are_finite(params):
            problem = "a gradient became non-finite"
        if problem is not None:
            zero_grads(params)
            bar.close()
            raise NonFiniteLossError(step, loss, problem, partial_result())
        optim(params)
        zero_grads(params)
        history.append(loss)
        if progress and (step % 25 == 0 or step == steps):
            bar.set_postfix(F=f"{np.mean(history[-100:]):.3f}", refresh=False)
    bar.close()
    result = partial_result()
    if report_samples:
        result.report = free_energy_report(
            model, guide, *args, num_samples=report_samples, **kwargs
        )
    return result
