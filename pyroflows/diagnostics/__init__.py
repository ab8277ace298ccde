"""How good is a fitted guide: free energy, importance-weighted bound, PSIS k-hat."""

from pyroflows.diagnostics.free_energy import (
    FreeEnergyReport,
    format_reports,
    free_energy_report,
    importance_log_weights,
    max_plate_nesting,
    pareto_khat,
)

__all__ = [
    "FreeEnergyReport",
    "format_reports",
    "free_energy_report",
    "importance_log_weights",
    "max_plate_nesting",
    "pareto_khat",
]
