"""Probability density distillation (van den Oord et al. 2018): a one-pass sampler trained
against a density that is fast to evaluate but slow to sample."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from pyro.distributions.conditional import ConditionalDistribution
from torch import nn
from tqdm.auto import tqdm

from pyroflows._validation import check_count, check_flag, check_positive, check_unit_interval
from pyroflows.density.fit import (
    DEFAULT_NUM_TRANSFORMS,
    NonFiniteDensityLossError,
    _backward_checked,
    _seeded,
)
from pyroflows.density.model import DensityModel, FitHistory, FittedDensity, build_flow
from pyroflows.distributions import FlowDistribution
from pyroflows.transforms.autoregressive import AutoregressiveTransform
from pyroflows.transforms.registry import flow_family

__all__ = ["DistillationReport", "Distilled", "distill", "sampling_seconds"]


@dataclass
class DistillationReport:
    """How close a distilled student is to its teacher, and how much faster it samples.

    Attributes:
        kl: ``KL(student ‖ teacher) = E_student[log student(x) - log teacher(x)]`` estimated
            from ``num_draws`` fresh draws of the student (nats).
        kl_se: its Monte Carlo standard error (the draws' standard deviation / √num_draws).
        num_draws: the draws behind ``kl``.
        teacher_seconds, student_seconds: CPU time of the calling thread (``time.thread_time``;
            wall time after synchronizing on a GPU) to draw ``timing_draws`` samples, the best
            of ``timing_repeats`` runs; nan when not measured.
        speedup: ``teacher_seconds / student_seconds``.
        timing_draws, clock: what was timed, and with which clock.
        steps, loss: the training steps and the loss (the KL estimate of each batch, up to the
            teacher's normalizing constant if it has one) per step.
        wall_seconds: time spent training.
    """

    kl: float
    kl_se: float
    num_draws: int
    teacher_seconds: float = math.nan
    student_seconds: float = math.nan
    timing_draws: int = 0
    clock: str = ""
    steps: int = 0
    loss: list[float] = field(default_factory=list, repr=False)
    wall_seconds: float = 0.0

    @property
    def speedup(self) -> float:
        return self.teacher_seconds / self.student_seconds

    def __str__(self) -> str:
        lines = [
            f"KL(student ‖ teacher) = {self.kl:.4f} ± {self.kl_se:.4f} nats "
            f"({self.num_draws} draws), after {self.steps} steps in {self.wall_seconds:.1f} s",
        ]
        if math.isfinite(self.teacher_seconds):
            lines.append(
                f"{self.timing_draws} draws: teacher {1e3 * self.teacher_seconds:.1f} ms, student "
                f"{1e3 * self.student_seconds:.1f} ms ({self.clock}): {self.speedup:.1f}× faster"
            )
        return "\n".join(lines)


class Distilled(NamedTuple):
    """What :func:`distill` returns: ``student, report = distill(...)``."""

    student: FlowDistribution
    report: DistillationReport


def _clock(device: torch.device):
    if device.type == "cuda":

        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return wall, "wall time after cuda synchronize"
    if torch.get_num_threads() == 1:
        return time.thread_time, "CPU time of the calling thread (1 torch thread)"
    return time.process_time, f"CPU time of the process ({torch.get_num_threads()} torch threads)"


def sampling_seconds(
    distribution, num_draws: int = 1000, repeats: int = 3, device: torch.device | None = None
) -> tuple[float, str]:
    """``(seconds, clock)``: the best of ``repeats`` timings of ``distribution.sample((n,))``
    after one warm-up draw; CPU time of the calling thread when torch uses one thread (what the
    benchmarks do), of the process otherwise, wall time after synchronizing on a GPU."""
    device = device or torch.device("cpu")
    clock, name = _clock(device)
    distribution.sample((min(num_draws, 8),))
    best = math.inf
    for _ in range(repeats):
        start = clock()
        distribution.sample((num_draws,))
        best = min(best, clock() - start)
    return best, name


def _parameters_of(distribution) -> list[nn.Parameter]:
    modules: list[nn.Module] = []
    model = getattr(distribution, "model", None)
    if isinstance(model, nn.Module):
        modules.append(model)
    for transform in getattr(distribution, "transforms", []):
        for candidate in (transform, getattr(transform, "layer", None)):
            if isinstance(candidate, nn.Module):
                modules.append(candidate)
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for parameter in module.parameters():
            seen[id(parameter)] = parameter
    return list(seen.values())


def _reference(teacher) -> torch.Tensor:
    """A tensor with the teacher's device and dtype."""
    model = getattr(teacher, "model", None)
    if isinstance(model, DensityModel):
        return model.standardization.shift
    for name in ("loc", "mean"):
        try:
            value = getattr(teacher, name)
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(value, torch.Tensor):
            return value
    return torch.zeros(())


def _student_from_family(
    name: str,
    teacher,
    dim: int,
    num_transforms: int | None,
    options: dict,
    moment_draws: int,
) -> FittedDensity:
    family = flow_family(name)
    if not family.one_pass_sampling or options.get("direction") == "maf":
        raise ValueError(
            f"the student must sample in one pass, and {name!r}"
            f"{' with direction=maf' if family.one_pass_sampling else ''} samples in D sequential "
            "passes: use 'iaf', or 'nsf'/'naf' in their default (IAF) direction"
        )
    if num_transforms is None:
        num_transforms = max(DEFAULT_NUM_TRANSFORMS, family.default_num_transforms)
    spec = {
        "family": family.name,
        "dim": dim,
        "context_dim": 0,
        "num_transforms": num_transforms,
        "options": dict(options),
    }
    stack = build_flow(spec)
    stack.family = family.name
    teacher_model = getattr(teacher, "model", None)
    if isinstance(teacher_model, DensityModel) and teacher_model.context_dim == 0:
        shift = teacher_model.standardization.shift
        scale = teacher_model.standardization.scale
    else:  # the teacher's moments, from its own draws
        with torch.no_grad():
            draws = teacher.sample((moment_draws,)).reshape(moment_draws, dim)
        shift, scale = draws.mean(0), draws.std(0).clamp_min(1e-6)
    model = DensityModel(stack, shift, scale)
    model.to(device=shift.device, dtype=shift.dtype)
    return FittedDensity(model, spec, FitHistory())


def distill(
    teacher,
    student: str | FlowDistribution = "iaf",
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    lr_decay: float = 0.1,
    clip_value: float = 10.0,
    num_transforms: int | None = None,
    kl_draws: int = 10000,
    timing_draws: int = 1000,
    timing_repeats: int = 3,
    moment_draws: int = 4096,
    seed: int | None = 0,
    progress: bool | None = None,
    **options,
) -> Distilled:
    r"""Trains a one-pass sampler (the student) to match a teacher density by reverse KL.

    Probability density distillation (van den Oord et al. 2018, Parallel WaveNet): the
    teacher's ``log_prob`` is cheap (a MAF scores any point in one pass per layer) but its
    samples cost ``D`` sequential passes; the student (an IAF, or a spline or NAF flow in the
    IAF direction) draws *with its own log-density* in one pass, so

    .. math::

        \mathrm{KL}(s \,\|\, t) = \mathbb E_{x \sim s}[\log s(x) - \log t(x)],
        \qquad x = μ + σ ⊙ f(u),\; u \sim \mathcal N(0, I),

    is minimized by Adam on reparameterized draws (``batch_size`` per step, the rate decaying
    geometrically from ``lr`` to ``lr·lr_decay`` over ``steps``). The student starts as the
    Gaussian with the teacher's per-coordinate mean and standard deviation (a teacher from
    :func:`fit_density` gives its standardization; otherwise ``moment_draws`` teacher draws).
    Reverse KL is mode-seeking: a student that misses a mode of the teacher is not penalized
    by it, so check the report's KL against what matters to you.

    Args:
        teacher: any distribution over vectors of size ``D`` with a differentiable
            ``log_prob`` (a :class:`FittedDensity` of :func:`fit_density`, a Pyro
            distribution, ...); its parameters are frozen while the student trains.
        student: a family name (default ``"iaf"``; ``"nsf"``, ``"naf"``, ``"realnvp"``, ...
            any family that samples in one pass) built with ``num_transforms`` layers (default
            5) and ``**options``, or a :class:`FlowDistribution` whose transforms are trained in
            place (it must not contain MAF-direction layers).
        steps: optimizer steps.
        kl_draws: fresh student draws behind the report's KL and its standard error.
        timing_draws, timing_repeats: the sampling-speed measurement (``timing_draws=0``
            skips it).
        seed: seeds the student's initialization and its draws (the global random state is
            left as it was).
        progress: a tqdm bar (default: only when stderr is a terminal).

    Returns:
        ``Distilled(student, report)``: the trained student (a :class:`FittedDensity` when
        built from a family name, with ``save``) in evaluation mode, and a
        :class:`DistillationReport` (KL with its Monte Carlo error, sampling times, speedup).

    Raises:
        ValueError: a teacher that is not over vectors, a student that does not sample in one
            pass or of another dimension, an argument outside its range.
        NonFiniteDensityLossError: the loss or a gradient became NaN or infinite (the step is
            named; the update is not applied and the student keeps its last finite parameters).

    Example:
        >>> teacher = fit_density("maf", data)                  # doctest: +SKIP
        >>> student, report = distill(teacher, "iaf", steps=2000)
        >>> print(report)  # KL(student ‖ teacher) ± error, teacher vs student sampling time
    """
    steps = check_count("steps", steps, minimum=1)
    batch_size = check_count("batch_size", batch_size, minimum=1)
    lr = check_positive("lr", lr, why=" (Adam's step size, e.g. 1e-3)")
    lr_decay = check_unit_interval("lr_decay", lr_decay, why=" (the final fraction of lr)")
    clip_value = check_positive("clip_value", clip_value, allow_inf=True)
    kl_draws = check_count("kl_draws", kl_draws, minimum=2)
    timing_draws = check_count("timing_draws", timing_draws, minimum=0)
    timing_repeats = check_count("timing_repeats", timing_repeats, minimum=1)
    moment_draws = check_count("moment_draws", moment_draws, minimum=2)
    if progress is not None:
        progress = check_flag("progress", progress)
    if seed is not None:
        seed = check_count("seed", seed, minimum=0)
    if isinstance(teacher, ConditionalDistribution):
        raise ValueError(
            "the teacher is a conditional density: distill one of its conditionals, "
            "teacher.condition(h) with a single context h of shape (context_dim,)"
        )
    event_shape = tuple(getattr(teacher, "event_shape", ()))
    if len(event_shape) != 1 or not callable(getattr(teacher, "log_prob", None)):
        raise ValueError(
            "the teacher must be a distribution over vectors (event_shape (D,)) with a "
            f"log_prob, got {type(teacher).__name__} with event_shape {event_shape}"
        )
    if tuple(getattr(teacher, "batch_shape", ())) != ():
        raise ValueError(
            f"the teacher must be one distribution (batch_shape ()), got batch_shape "
            f"{tuple(teacher.batch_shape)}: condition a conditional teacher on one context"
        )
    dim = event_shape[0]
    reference = _reference(teacher)
    device = reference.device

    with _seeded(seed, device):
        if isinstance(student, str):
            student = _student_from_family(
                student, teacher, dim, num_transforms, options, moment_draws
            )
        elif isinstance(student, FlowDistribution):
            if num_transforms is not None or options:
                raise TypeError("num_transforms and family options apply to a family name only")
            if tuple(student.event_shape) != (dim,):
                raise ValueError(
                    f"the student is over vectors of size {tuple(student.event_shape)}, the "
                    f"teacher over ({dim},)"
                )
            for transform in student.transforms:
                module = (
                    transform
                    if isinstance(transform, nn.Module)
                    else getattr(transform, "layer", None)
                )
                layers = module.modules() if isinstance(module, nn.Module) else []
                if any(
                    isinstance(layer, AutoregressiveTransform) and layer.direction == "maf"
                    for layer in layers
                ):
                    raise ValueError(
                        "the student has a layer in the MAF direction, which samples in D "
                        "sequential passes: distill into an IAF-direction flow"
                    )
        else:
            raise TypeError(
                f"student must be a family name or a FlowDistribution, got {type(student).__name__}"
            )
        report = _train_student(
            teacher,
            student,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            lr_decay=lr_decay,
            clip_value=clip_value,
            progress=progress,
        )
        kl, kl_se = kl_estimate(student, teacher, kl_draws)
    report.kl, report.kl_se, report.num_draws = kl, kl_se, kl_draws
    if timing_draws:
        report.teacher_seconds, report.clock = sampling_seconds(
            teacher, timing_draws, timing_repeats, device
        )
        report.student_seconds, _ = sampling_seconds(student, timing_draws, timing_repeats, device)
        report.timing_draws = timing_draws
    return Distilled(student, report)


def kl_estimate(student, teacher, num_draws: int, chunk: int = 4096) -> tuple[float, float]:
    """``(KL(student ‖ teacher), its standard error)`` from ``num_draws`` student draws, each
    scored with the log-density kept from its own draw (no inversion)."""
    values = []
    with torch.no_grad():
        remaining = num_draws
        while remaining:
            n = min(chunk, remaining)
            x = student.rsample((n,))
            values.append(student.log_prob(x) - teacher.log_prob(x))
            remaining -= n
    gaps = torch.cat(values).double()
    return float(gaps.mean()), float(gaps.std() / math.sqrt(num_draws))


def _train_student(teacher, student, *, steps, batch_size, lr, lr_decay, clip_value, progress):
    teacher_params = _parameters_of(teacher)
    frozen = [p.requires_grad for p in teacher_params]
    params = [p for p in _parameters_of(student) if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameters")
    teacher_modules = [m for m in (getattr(teacher, "model", None),) if isinstance(m, nn.Module)]
    for module in teacher_modules:
        module.eval()
    student_model = getattr(student, "model", None)
    optimizer = torch.optim.Adam(params, lr=lr)
    decay = lr_decay ** (1.0 / max(steps - 1, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=steps, disable=not progress, desc="distill", leave=False)
    report = DistillationReport(math.nan, math.nan, 0)
    wall = time.perf_counter()
    last_good = None
    try:
        for p in teacher_params:
            p.requires_grad_(False)
        if isinstance(student_model, nn.Module):
            student_model.train()
        for step in range(1, steps + 1):
            x = student.rsample((batch_size,))
            loss = (student.log_prob(x) - teacher.log_prob(x)).mean()
            value, problem = _backward_checked(loss, params, optimizer)
            if problem is not None:
                report.steps = step - 1
                if isinstance(student, FittedDensity):
                    student.history.stopped_by = f"stopped at step {step}: {problem}"
                    student.history.steps = step - 1
                    if isinstance(student_model, nn.Module):
                        student_model.eval()
                    raise NonFiniteDensityLossError(step, 0, value, problem, student, "distill")
                raise FloatingPointError(
                    f"{problem} at step {step} of distill (loss {value}); that update was not "
                    "applied. Try a smaller lr."
                )
            if math.isfinite(clip_value):
                torch.nn.utils.clip_grad_value_(params, clip_value)
            optimizer.step()
            scheduler.step()
            report.loss.append(value)
            bar.update(1)
            if progress and (step % 25 == 0 or step == steps):
                recent = report.loss[-100:]
                bar.set_postfix(KL=f"{sum(recent) / len(recent):.4f}", refresh=False)
            last_good = step
    finally:
        for p, flag in zip(teacher_params, frozen, strict=True):
            p.requires_grad_(flag)
        bar.close()
        if isinstance(student_model, nn.Module):
            student_model.eval()
    report.steps = last_good or 0
    report.wall_seconds = time.perf_counter() - wall
    if isinstance(student, FittedDensity):
        history = student.history
        history.train_loss = list(report.loss)
        history.steps = report.steps
        history.epochs = 0
        history.best_epoch = 0
        history.stopped_by = f"steps={steps} done (distillation: reverse KL to the teacher)"
        history.wall_seconds = report.wall_seconds
        history.settings = {
            "optimizer": "Adam",
            "lr": lr,
            "lr_decay": lr_decay,
            "batch_size": batch_size,
            "steps": steps,
            "clip_value": clip_value,
            "objective": "reverse KL",
        }
    return report
