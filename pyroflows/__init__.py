"""pyroflows: normalizing-flow variational inference for Pyro, as drop-in autoguides.

Example:
    >>> import pyroflows
    >>> guide = pyroflows.AutoIAF(model)  # doctest: +SKIP
    >>> result = pyroflows.fit(model, guide, data, steps=2000)
    >>> print(result)  # free energy, importance-weighted bound, PSIS k-hat
"""

from pyroflows import guides
from pyroflows.density import (
    ConditionalFittedDensity,
    DistillationReport,
    FittedDensity,
    NonFiniteDensityLossError,
    distill,
    fit_density,
    load_density,
)
from pyroflows.diagnostics import (
    DEFAULT_NUM_DRAWS,
    Diagnosis,
    FreeEnergyReport,
    ModelGuideMismatchError,
    NonFiniteDataError,
    NotVectorizableWarning,
    SubsampledPlateError,
    diagnose,
    free_energy_report,
    to_inference_data,
)
from pyroflows.guides import *  # noqa: F403 (every name of pyroflows.guides.__all__)
from pyroflows.infer import (
    CheckpointError,
    FitResult,
    ImportanceEstimate,
    NonFiniteLossError,
    fit,
    importance_log_likelihood,
)
from pyroflows.transforms import available_flows, make_flow

__version__ = "0.1.0"

__all__ = [
    *guides.__all__,
    "DEFAULT_NUM_DRAWS",
    "CheckpointError",
    "ConditionalFittedDensity",
    "Diagnosis",
    "DistillationReport",
    "FittedDensity",
    "FitResult",
    "FreeEnergyReport",
    "ImportanceEstimate",
    "ModelGuideMismatchError",
    "NonFiniteDataError",
    "NonFiniteDensityLossError",
    "NonFiniteLossError",
    "available_flows",
    "NotVectorizableWarning",
    "SubsampledPlateError",
    "diagnose",
    "distill",
    "fit",
    "fit_density",
    "free_energy_report",
    "importance_log_likelihood",
    "load_density",
    "make_flow",
    "to_inference_data",
]
