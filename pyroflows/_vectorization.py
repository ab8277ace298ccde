"""When a vectorized (batched) run of a model agrees with a plain run of it.

A model that is not written for extra batch axes can run without error in a plate over draws
and still give each draw a wrong log density (``w.sum()`` of a batched latent mixes the
draws). Two checks compare a batched run with plain runs at a few draws: the start's
(:func:`pyroflows.guides.start.points_log_joint`) and the diagnostics' tracing
(:mod:`pyroflows.diagnostics.tracing`). Both use this tolerance: float32 sums over a few
thousand terms agree with their float64 counterparts to about 1e-5 relative, and a mixed-up
draw is off by whole nats.

Example:
    >>> import torch
    >>> log_densities_agree(torch.tensor(-11.7), torch.tensor(-11.7001))
    True
    >>> log_densities_agree(torch.tensor(-18.1), torch.tensor(-11.7))
    False
"""

from __future__ import annotations

import torch

__all__ = ["AGREEMENT_ATOL", "AGREEMENT_RTOL", "log_densities_agree"]

#: relative tolerance between a batched and a plain run's log density
AGREEMENT_RTOL = 1e-4
#: absolute tolerance (nats) between a batched and a plain run's log density
AGREEMENT_ATOL = 1e-3


def log_densities_agree(
    batched: torch.Tensor, plain: torch.Tensor, equal_nan: bool = False
) -> bool:
    """Whether a batched run's log density equals a plain run's, compared in float64 to
    ``rtol=AGREEMENT_RTOL, atol=AGREEMENT_ATOL`` (an infinite value agrees only with the same
    infinity; NaN with NaN only where ``equal_nan``)."""
    return bool(
        torch.isclose(
            batched.double(),
            plain.double(),
            rtol=AGREEMENT_RTOL,
            atol=AGREEMENT_ATOL,
            equal_nan=equal_nan,
        )
    )
