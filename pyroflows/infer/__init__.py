"""Fitting guides: SVI with a free-energy history and report; importance-sampled log p(x)."""

from pyroflows.infer.checkpoint import CheckpointError
from pyroflows.infer.fit import FitResult, NonFiniteLossError, fit
from pyroflows.infer.marginal import ImportanceEstimate, importance_log_likelihood

__all__ = [
    "CheckpointError",
    "FitResult",
    "ImportanceEstimate",
    "NonFiniteLossError",
    "fit",
    "importance_log_likelihood",
]
