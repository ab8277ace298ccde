"""Fitting guides: SVI with a free-energy history and report."""

from pyroflows.infer.fit import FitResult, NonFiniteLossError, fit

__all__ = ["FitResult", "NonFiniteLossError", "fit"]
