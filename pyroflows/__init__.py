"""pyroflows: normalizing-flow variational inference for Pyro, as drop-in autoguides.

Example:
    >>> import pyroflows
    >>> guide = pyroflows.AutoIAF(model)  # doctest: +SKIP
    >>> result = pyroflows.fit(model, guide, data, steps=2000)
    >>> print(result)  # free energy, importance-weighted bound, PSIS k-hat
"""

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
from pyroflows.guides import (
    AutoFlow,
    AutoFlowGuide,
    AutoIAF,
    AutoNAF,
    AutoNICE,
    AutoNSF,
    AutoPlanar,
    AutoRealNVP,
    GuideSetupError,
    NoLatentSitesError,
    available_guides,
    make_guide,
    register_guide,
)
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
    "AutoFlow",
    "DEFAULT_NUM_DRAWS",
    "AutoFlowGuide",
    "AutoIAF",
    "AutoNAF",
    "AutoNICE",
    "AutoNSF",
    "AutoPlanar",
    "AutoRealNVP",
    "CheckpointError",
    "ConditionalFittedDensity",
    "Diagnosis",
    "DistillationReport",
    "FittedDensity",
    "FitResult",
    "FreeEnergyReport",
    "GuideSetupError",
    "ImportanceEstimate",
    "ModelGuideMismatchError",
    "NoLatentSitesError",
    "NonFiniteDataError",
    "NonFiniteDensityLossError",
    "NonFiniteLossError",
    "available_flows",
    "NotVectorizableWarning",
    "SubsampledPlateError",
    "available_guides",
    "diagnose",
    "distill",
    "fit",
    "fit_density",
    "free_energy_report",
    "importance_log_likelihood",
    "load_density",
    "make_flow",
    "make_guide",
    "register_guide",
    "to_inference_data",
]
