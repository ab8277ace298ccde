"""Neural-network building blocks for flows (conditioners)."""

from pyroflows.nn.made import MADE, MaskedLinear, made_degrees

__all__ = ["MADE", "MaskedLinear", "made_degrees"]
