"""Flow autoguides: drop-in replacements for Pyro's AutoNormal and AutoIAFNormal."""

from pyroflows.guides.base import AutoFlowGuide, GuideSetupError, NoLatentSitesError
from pyroflows.guides.iaf import AutoIAF
from pyroflows.guides.naf import AutoNAF
from pyroflows.guides.planar import AutoPlanar
from pyroflows.guides.registry import (
    available_guides,
    get_guide_class,
    make_guide,
    register_guide,
)

__all__ = [
    "AutoFlowGuide",
    "AutoIAF",
    "AutoNAF",
    "AutoPlanar",
    "GuideSetupError",
    "NoLatentSitesError",
    "available_guides",
    "get_guide_class",
    "make_guide",
    "register_guide",
]
