"""A second look at a k-hat that reads "good" within its own noise of the threshold.

PSIS k-hat fits a generalized Pareto tail to the ``M = min(S / 5, 3 √S)`` largest of ``S``
importance weights; its standard error is about ``(1 + k) / √M`` (the maximum-likelihood
asymptotics of the Pareto shape), 0.11 at ``S = 4000`` and ``k = 0.5``. A guide whose weights'
tail index is 0.6 therefore reads below 0.5, "good", on about one set of 4000 draws in ten.
That happened on the held-out 10-D funnel of the accuracy benchmark: AutoIAF (seed 0) ended at
KL(q‖p) = 0.20 with ``fit``'s k-hat 0.487, "good"; eight more sets of 4000 draws of the same
guide read 0.52–0.79 and 16000 pooled draws 0.60–0.62.

So where a pyroflows guide's k-hat is below 0.5 by less than :data:`RECHECK_STANDARD_ERRORS`
standard errors (and its log weights are not as good as equal, where the tail's shape does not
matter), :func:`rechecked_khat` draws ``(RECHECK_FACTOR - 1) · S`` more from the guide and
estimates k-hat from all ``RECHECK_FACTOR · S`` draws, whose standard error is about 0.6 times
the first one's (``M`` grows as ``√S``). The recheck only ever looks again where the verdict
would be "good", and decides only between "good" (below 0.5) and "ok": two readings on either
side of 0.5 are not evidence for "unreliable". Everything else in the report comes from the
first draws. The held-out fits that ``fit`` called "good" at k-hat 0.40–0.49 (the accuracy
benchmark's seed 0), rechecked inside ``fit``: the funnel 0.63, "ok"; non-centered eight
schools 0.45 (AutoIAF, 0.062 sd from NUTS) and 0.43 (AutoNAF, 0.051 sd), "good" both; iris
(AutoIAF, 0.074 sd) 0.67, "ok". An iris guide of the same seed (0.085 sd, fitted before
``fit`` scaled Adam's ``eps`` with the step scale) had a tail index near 0.6 (40000 draws:
0.63), and ten sets of 4000 of its draws read 0.47–0.80: the first reading, 0.43, was the
lucky one.

The extra draws come from the guide's own forward pass with a generator of their own (the
global random state is left as it was), in chunks, and are scored by the same unconstrained
log joint as the defensive bound (:mod:`pyroflows.diagnostics.defensive`); for guides that are
not pyroflows guides no recheck is made.
"""

from __future__ import annotations

import math

import torch

from pyroflows.diagnostics.defensive import guide_draws_and_log_q, random_state_kept
from pyroflows.diagnostics.khat_thresholds import GOOD_KHAT
from pyroflows.guides.start import points_log_joint

__all__ = [
    "RECHECK_FACTOR",
    "RECHECK_STANDARD_ERRORS",
    "khat_standard_error",
    "needs_recheck",
    "rechecked_khat",
]

#: a recheck estimates k-hat from this many times the first draws
RECHECK_FACTOR = 4
#: a "good" k-hat this many of its standard errors or fewer below 0.5 is rechecked
RECHECK_STANDARD_ERRORS = 2.0
#: extra draws are drawn and scored this many at a time
CHUNK = 1000


def khat_standard_error(khat: float, num_samples: int) -> float:
    """About the standard error of k-hat from ``num_samples`` weights: ``(1 + k) / √M`` with
    ``M = min(S / 5, 3 √S)`` tail weights (the asymptotic standard error of a generalized
    Pareto shape's maximum-likelihood estimate, ``1 + k``, over the tail's size).

    Example:
        >>> round(khat_standard_error(0.5, 4000), 3)
        0.109
    """
    tail = min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))
    return (1.0 + max(khat, 0.0)) / math.sqrt(tail)


def needs_recheck(khat: float, num_samples: int, equal_weights: bool) -> bool:
    """Whether a k-hat below 0.5 lies within :data:`RECHECK_STANDARD_ERRORS` of its standard
    errors of it (never for log weights that are as good as equal, whose verdict is "good"
    below 0.7 anyway).

    Example:
        >>> needs_recheck(0.487, 4000, equal_weights=False), needs_recheck(0.2, 4000, False)
        (True, False)
    """
    if equal_weights or not math.isfinite(khat) or khat >= GOOD_KHAT:
        return False
    margin = RECHECK_STANDARD_ERRORS * khat_standard_error(GOOD_KHAT, num_samples)
    return khat >= GOOD_KHAT - margin


def rechecked_khat(
    guide, log_weights: torch.Tensor, args: tuple, kwargs: dict, seed: int = 1
) -> tuple[float, int] | None:
    """k-hat from ``log_weights`` pooled with ``(RECHECK_FACTOR - 1)`` times as many fresh
    draws of the pyroflows ``guide``, and the number of draws it used; ``None`` where the guide
    has no flow or the model cannot score the draws.

    Example:
        >>> khat, draws = rechecked_khat(guide, report_log_weights, (data,), {})  # doctest: +SKIP
    """
    from pyroflows.diagnostics.free_energy import pareto_khat  # free_energy imports this module

    if getattr(guide, "flow", None) is None:
        return None
    extra = (RECHECK_FACTOR - 1) * log_weights.numel()
    loc = guide.flow[-1].loc
    chunks = []
    with random_state_kept():
        generator = torch.Generator(device=loc.device).manual_seed(seed)
        for start in range(0, extra, CHUNK):
            z, log_q = guide_draws_and_log_q(guide, min(CHUNK, extra - start), generator)
            log_p = points_log_joint(guide, z, args, kwargs)
            if log_p is None:
                return None
            chunks.append((log_p - log_q).double().cpu())
    pooled = torch.cat([log_weights.detach().double().cpu(), *chunks])
    if not bool(torch.isfinite(pooled).all()):
        return None
    return pareto_khat(pooled), pooled.numel()
