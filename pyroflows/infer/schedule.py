"""How ``fit`` steps: the learning-rate schedule, the stopping rule, and the pilot runs that
choose the step size.

* **Step size** (``lr="auto"``): short pilot runs from the same start, one per candidate in
  :data:`PILOT_LRS` (:data:`STL_PILOT_LRS` under sticking-the-landing gradients), each
  ``PILOT_STEPS`` steps; the candidate with the lowest mean free energy
  over the second half of its pilot wins (a larger step size must beat a smaller one by more
  than twice the Monte Carlo error of the difference), and the fit continues from the state
  that winning pilot reached. The guides learn in the whitened coordinates of their start (see
  :class:`~pyroflows.transforms.AffineStage`), so the same small grid serves posteriors of any
  scale.
* **Stopping** (``steps="auto"``, Dhaka et al. 2020's idea in its simplest form): every
  ``window`` steps, the mean free energy of the last quarter of the history (at least
  ``window`` steps) is compared with the quarter before;
  once it has improved by less than twice its Monte Carlo standard error at ``patience``
  consecutive checks, the free energy has stopped improving by more than its noise *at this
  step size*. The rate is then divided by :data:`STEP_DOWN_FACTOR` (3) and a new stage starts,
  judged by the same rule on its own history after at least :data:`STEP_DOWN_MIN_STEPS`
  (1000, as many as the first stage) steps (Lang, Zhang & Xiao 2019, SASA: cut the rate when a
  statistical test finds the iterates stationary). Only a stall at a rate that cannot be
  divided again without going below :data:`STEP_DOWN_FLOOR` (1e-3) ends the fit: a final
  phase of ``max(200, 20%)`` more steps decays that rate geometrically to ``rate · lr_decay``
  (shrinking the optimizer's noise around the optimum). A larger rate stalls sooner and higher
  (its noise floor is higher), so without the stages the pilots' fastest rate ended fits early
  and worse: AutoNAF on a 10-D funnel stopped at KL 0.13/0.17 nats with the pilots' 3e-2,
  where a fixed 3e-3 reached 0.02/0.03. ``max_steps`` caps the run; a fit stopped by the cap
  while the free energy was still falling is reported as not converged.
* **Fixed steps** (``steps=N``): the learning rate decays geometrically from ``lr`` to
  ``lr · lr_decay`` over the ``N`` steps, ``lr_t = lr · lr_decay^((t - 1) / N)``.
* **Tempering** (``anneal_steps``, :func:`tempering_beta`): the model's log density is
  multiplied by ``β``, which rises linearly from ``anneal_from`` to 1, after a hold at
  ``anneal_from`` where ``fit`` asks for one (a start at no isolated mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "PILOT_LRS",
    "PILOT_STEPS",
    "STL_PILOT_LRS",
    "STEP_DOWN_FACTOR",
    "STEP_DOWN_FLOOR",
    "STEP_DOWN_MIN_STEPS",
    "Schedule",
    "StoppingRule",
    "pick_pilot",
    "tempering_beta",
]

#: the step sizes the pilot runs try (in the whitened coordinates of the guide's start)
PILOT_LRS = (3e-3, 1e-2, 3e-2)
#: the step sizes the pilot runs try under sticking-the-landing gradients, one step of the grid
#: lower. Their noise is smaller, so Adam, which divides each gradient by its running rms,
#: takes larger effective steps at the same rate: at 3e-2 (which won the pilots) AutoIAF on the
#: 2-D development banana ended at KL 0.16 with a free energy that swung between 0.05 and 1 per
#: 100 steps, against 0.034 with this grid (4 seeds: median 0.040 → 0.031, worst 0.16 → 0.039;
#: 5-D funnel median 0.022 → 0.023, logistic regression a tie)
STL_PILOT_LRS = (1e-3, 3e-3, 1e-2)
#: steps of each pilot run
PILOT_STEPS = 60
#: (auto steps) the factor by which the rate is divided each time the free energy stalls
STEP_DOWN_FACTOR = 3.0
#: (auto steps) the smallest stage rate: a stall at a rate that cannot be divided again without
#: going below it starts the final decay
STEP_DOWN_FLOOR = 1e-3
#: (auto steps) steps of a stage after a step down before the rule judges it again: as many
#: as the first stage gets (``StoppingRule.min_steps``). A 3× smaller rate descends 3× more
#: slowly, and over 300 steps its progress hid in the iterates' own noise (an 8-D funnel's
#: free energy swings by 0.1 nats between checks 100 steps apart), so stages ended early and
#: the fit stopped short: on the development targets (2 seeds, AutoIAF and AutoNAF, median
#: KL) 300 → 1000 took an 8-D funnel with log-scale sd 2.5 from 0.17 to 0.12 (AutoIAF) and
#: 0.095 to 0.051 (AutoNAF), the 2-D banana from 0.037 to 0.017 and 0.13 to 0.074, the 5-D
#: funnel from 0.019 to 0.011 and 0.026 to 0.017, ``bimodal_2`` (AutoNAF) 0.022 to 0.011,
#: the rest within 0.015 nats, for 1.0-1.8× the CPU time
STEP_DOWN_MIN_STEPS = 1000


@dataclass
class Schedule:
    """The learning rate of every step, and the run's length.

    Attributes:
        lr: the base learning rate.
        lr_decay: the final fraction of ``lr``.
        span: fixed steps: the steps over which the rate decays to ``lr · lr_decay`` (a
            resumed run that asks for more steps keeps decaying at the same rate).
        auto: whether the stopping rule decides the length.
        decay_start: (auto) the last step at the base rate, once the rule has fired.
        decay_steps: (auto) the length of the final decay, once the rule has fired.
        step_downs: (auto) the steps after which the rule fired and the rate was divided by
            ``factor`` (each starts a new stage).
        factor: (auto) the division of each step down.
        floor: (auto) the smallest stage rate.
    """

    lr: float
    lr_decay: float
    span: int = 0
    auto: bool = False
    decay_start: int | None = None
    decay_steps: int | None = None
    step_downs: list[int] = field(default_factory=list)
    factor: float = STEP_DOWN_FACTOR
    floor: float = STEP_DOWN_FLOOR

    def stage_rate(self, step: int) -> float:
        """(auto) the rate of the stage ``step`` belongs to, before any final decay."""
        drops = sum(1 for drop in self.step_downs if step > drop)
        return self.lr / self.factor**drops

    def stage_start(self) -> int:
        """(auto) the last step before the current stage (0 in the first)."""
        return self.step_downs[-1] if self.step_downs else 0

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step`` (1-based)."""
        if not self.auto:
            return self.lr * self.lr_decay ** ((step - 1) / self.span)
        rate = self.stage_rate(step)
        if self.decay_start is None or step <= self.decay_start:
            return rate
        return rate * self.lr_decay ** ((step - self.decay_start) / self.decay_steps)

    def stalled_at(self, step: int, max_steps: int) -> None:
        """(auto) the stopping rule fired after ``step``: divide the rate by ``factor`` and
        start a new stage, or, where that would go below ``floor``, start the final decay."""
        if self.stage_rate(step) / self.factor >= self.floor * (1 - 1e-9):
            self.step_downs.append(step)
        else:
            self.start_decay(step, max_steps)

    def total(self, max_steps: int) -> int:
        """(auto) the run's length: decided by the rule, else ``max_steps``."""
        if self.decay_start is None:
            return max_steps
        return self.decay_start + self.decay_steps

    def start_decay(self, step: int, max_steps: int) -> None:
        """The stopping rule fired after ``step``: decay over ``max(200, 20%)`` more steps."""
        self.decay_start = step
        self.decay_steps = max(1, min(max_steps - step, max(200, step // 5)))

    def as_dict(self) -> dict:
        return {
            "lr": self.lr,
            "lr_decay": self.lr_decay,
            "span": self.span,
            "auto": self.auto,
            "decay_start": self.decay_start,
            "decay_steps": self.decay_steps,
            "step_downs": list(self.step_downs),
            "factor": self.factor,
            "floor": self.floor,
        }


@dataclass
class StoppingRule:
    """Has the free energy stopped improving by more than its Monte Carlo error?

    Attributes:
        window: steps per window (the rule is checked at the end of each).
        patience: consecutive stalled checks needed to stop.
        min_steps: no decision before this many steps of history.
    """

    window: int = 100
    patience: int = 2
    min_steps: int = 1000

    def width(self, history) -> int:
        """The windows compared: a quarter of the history, at least ``window`` steps. Growing
        windows shrink the noise of their means as ``1/sqrt(width)``, so a slow but steady
        descent, invisible over 100 steps, is still seen over 1000."""
        return max(self.window, len(history) // 4)

    def improvement(self, history) -> tuple[float, float, int]:
        """``(mean of the window before − mean of the last window, its standard error,
        width)``."""
        width = self.width(history)
        values = np.asarray(history[-2 * width :], dtype=float)
        before, last = values[:width], values[width:]
        se = math.sqrt(before.var(ddof=1) / len(before) + last.var(ddof=1) / len(last))
        return float(before.mean() - last.mean()), se, width

    def stalled(self, history) -> bool:
        """Whether the last window improved by less than twice its standard error."""
        if len(history) < 2 * self.window:
            return False
        delta, se, _ = self.improvement(history)
        return delta < 2.0 * se

    def describe(self, history) -> str:
        """The last window's improvement, in words."""
        if len(history) < 2 * self.window:
            return "too few steps to judge convergence"
        delta, se, width = self.improvement(history)
        return f"the free energy fell by {delta:.3g} ± {se:.2g} nats over the last {width} steps"


def pick_pilot(scores: list[tuple[float, float, float]]) -> int:
    """The index of the winning pilot among ``(lr, mean F, standard error)``: the lowest mean
    free energy, where a larger step size must beat every smaller one by more than twice the
    standard error of the difference (noisier, faster runs win only when clearly better)."""
    best = None
    for index, (_, mean, se) in enumerate(scores):
        if not math.isfinite(mean):
            continue
        if best is None:
            best = index
            continue
        _, best_mean, best_se = scores[best]
        if mean < best_mean - 2.0 * math.sqrt(se * se + best_se * best_se):
            best = index
    if best is None:
        raise FloatingPointError("every pilot run of the step size diverged")
    return best


def tempering_beta(step: int, anneal_steps: int, anneal_from: float, hold_steps: int = 0) -> float:
    r"""The tempering exponent ``β`` of ``step`` (1-based): ``anneal_from`` up to step
    ``hold_steps + 1``, then rising by equal steps to 1, which it reaches at step
    ``anneal_steps + 1`` and keeps (1 throughout where ``anneal_steps`` is 0). ``fit``
    multiplies the model's log density by it.

    .. math::

        β_t = a + (1 - a) \min\bigl(1, \max(0, (t - 1 - h) / (n - h))\bigr)

    with ``a = anneal_from``, ``h = hold_steps < n = anneal_steps``.

    Example:
        >>> [round(tempering_beta(t, 4, 0.2, hold_steps=2), 2) for t in range(1, 7)]
        [0.2, 0.2, 0.2, 0.6, 1.0, 1.0]
    """
    if anneal_steps <= 0:
        return 1.0
    if not 0 <= hold_steps < anneal_steps:
        raise ValueError(
            f"hold_steps must be at least 0 and below anneal_steps ({anneal_steps}), got "
            f"{hold_steps}"
        )
    rising = (step - 1 - hold_steps) / (anneal_steps - hold_steps)
    return anneal_from + (1.0 - anneal_from) * min(1.0, max(0.0, rising))
