"""pyroflows: normalizing-flow variational inference for Pyro, as drop-in autoguides.

Example:
    >>> import pyroflows
    >>> guide = pyroflows.AutoIAF(model)  # doctest: +SKIP
    >>> result = pyroflows.fit(model, guide, data, steps=2000)
    >>> print(result)  # free energy, importance-weighted bound, PSIS k-hat
"""

from pyroflows.diagnostics import FreeEnergyReport, free_energy_report
from pyroflows.guides import (
    AutoFlowGuide,
    AutoIAF,
    AutoNAF,
    AutoPlanar,
    GuideSetupError,
    available_guides,
    make_guide,
    register_guide,
)
from pyroflows.infer import FitResult, NonFiniteLossError, fit

__version__ = "0.1.0"

__all__ = [
    "AutoFlowGuide",
    "AutoIAF",
    "AutoNAF",
    "AutoPlanar",
    "FitResult",
    "FreeEnergyReport",
    "GuideSetupError",
    "NonFiniteLossError",
    "available_guides",
    "fit",
    "free_energy_report",
    "make_guide",
    "register_guide",
]
