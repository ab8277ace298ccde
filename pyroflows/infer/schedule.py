"""How ``fit`` steps: the learning-rate schedule, the stopping rule, and the pilot runs that
choose the step size.

* **Step size** (``lr="auto"``): short pilot runs from the same start, one per candidate in
  :data:`PILOT_LRS`, each ``PILOT_STEPS`` steps; the candidate with the lowest mean free energy
  over the second half of its pilot wins (a larger step size must beat a smaller one by more
  than twice the Monte Carlo error of the difference), and the fit continues from the state
  that winning pilot reached. The guides learn in the whitened coordinates of their start (see
  :class:`~pyroflows.transforms.AffineStage`), so the same small grid serves posteriors of any
  scale.
* **Stopping** (``steps="auto"``, Dhaka et al. 2020's idea in its simplest form): every
  ``window`` steps, the mean free energy of the last quarter of the history (at least
  ``window`` steps) is compared with the quarter before;
  once it has improved by less than twice its Monte Carlo standard error at ``patience``
  consecutive checks, the free energy has stopped improving by more than its noise, and a final
  phase of ``max(200, 20%)`` more steps decays the learning rate geometrically to
  ``lr · lr_decay`` (shrinking the optimizer's noise around the optimum). ``max_steps`` caps
  the run; a fit stopped by the cap while the free energy was still falling is reported as not
  converged.
* **Fixed steps** (``steps=N``): the learning rate decays geometrically from ``lr`` to
  ``lr · lr_decay`` over the ``N`` steps, ``lr_t = lr · lr_decay^((t - 1) / N)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PILOT_LRS",
    "PILOT_STEPS",
    "Schedule",
    "StoppingRule",
    "pick_pilot",
]

#: the step sizes the pilot runs try (in the whitened coordinates of the guide's start)
PILOT_LRS = (3e-3, 1e-2, 3e-2)
#: steps of each pilot run
PILOT_STEPS = 60


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
    """

    lr: float
    lr_decay: float
    span: int = 0
    auto: bool = False
    decay_start: int | None = None
    decay_steps: int | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step`` (1-based)."""
        if not self.auto:
            return self.lr * self.lr_decay ** ((step - 1) / self.span)
        if self.decay_start is None or step <= self.decay_start:
            return self.lr
        return self.lr * self.lr_decay ** ((step - self.decay_start) / self.decay_steps)

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
