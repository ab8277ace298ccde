"""Flow autoguides: drop-in replacements for Pyro's AutoNormal and AutoIAFNormal."""

from pyroflows.guides.base import (
    AutoFlowGuide,
    GuideSetupError,
    LargeGuideWarning,
    NoLatentSitesError,
)
from pyroflows.guides.flow import AutoFlow
from pyroflows.guides.presets import AutoIAF, AutoNAF, AutoNICE, AutoNSF, AutoPlanar, AutoRealNVP
from pyroflows.guides.registry import (
    available_guides,
    get_guide_class,
    make_guide,
    register_guide,
)

__all__ = [
    "AutoFlow",
    "AutoFlowGuide",
    "AutoIAF",
    "AutoNAF",
    "AutoNICE",
    "AutoNSF",
    "AutoPlanar",
    "AutoRealNVP",
    "GuideSetupError",
    "LargeGuideWarning",
    "NoLatentSitesError",
    "available_guides",
    "get_guide_class",
    "make_guide",
    "register_guide",
]
