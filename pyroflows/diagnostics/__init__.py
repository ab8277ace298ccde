"""How good is a fitted guide: free energy, importance-weighted bound, PSIS k-hat, the
"did it work?" diagnosis, ArviZ export and plots."""

from pyroflows._validation import NonFiniteDataError
from pyroflows.diagnostics.arviz_export import to_inference_data
from pyroflows.diagnostics.diagnose import Diagnosis, diagnose
from pyroflows.diagnostics.draws import PosteriorDraws, draw_posterior
from pyroflows.diagnostics.free_energy import (
    DEFAULT_NUM_DRAWS,
    MIN_KHAT_DRAWS,
    FreeEnergyReport,
    format_reports,
    free_energy_report,
    importance_log_weights,
    pareto_khat,
    psis_log_weights,
)
from pyroflows.diagnostics.plots import plot_free_energy, plot_pair
from pyroflows.diagnostics.tracing import (
    ModelGuideMismatchError,
    NotVectorizableWarning,
    SubsampledPlateError,
    max_plate_nesting,
)

__all__ = [
    "DEFAULT_NUM_DRAWS",
    "MIN_KHAT_DRAWS",
    "Diagnosis",
    "FreeEnergyReport",
    "ModelGuideMismatchError",
    "NonFiniteDataError",
    "NotVectorizableWarning",
    "SubsampledPlateError",
    "PosteriorDraws",
    "diagnose",
    "draw_posterior",
    "format_reports",
    "free_energy_report",
    "importance_log_weights",
    "max_plate_nesting",
    "pareto_khat",
    "plot_free_energy",
    "plot_pair",
    "psis_log_weights",
    "to_inference_data",
]
