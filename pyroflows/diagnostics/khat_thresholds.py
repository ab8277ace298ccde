"""The PSIS k-hat thresholds of every verdict (Yao et al. 2018; Vehtari et al. 2024).

The Pareto tail index ``k`` of the importance weights ``p(x, z) / q(z)``, ``z ~ q``, says how
heavy their right tail is: below :data:`GOOD_KHAT` the weights have finite variance and the
guide is close to the posterior; from :data:`GOOD_KHAT` to :data:`OK_KHAT` the variance is
infinite but importance-weighted estimates still converge at a usable rate; above
:data:`OK_KHAT` they do not, and the guide is not to be trusted.

Example:
    >>> "good" if 0.42 < GOOD_KHAT else "ok" if 0.42 < OK_KHAT else "unreliable"
    'good'
"""

__all__ = ["GOOD_KHAT", "OK_KHAT"]

#: below it the verdict is "good"
GOOD_KHAT = 0.5
#: below it (and at least :data:`GOOD_KHAT`) the verdict is "ok", above it "unreliable"
OK_KHAT = 0.7
