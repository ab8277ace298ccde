"""Flow layers as Pyro ``TransformModule``s."""

from pyroflows.transforms.affine import ElementwiseAffine
from pyroflows.transforms.iaf import IAFUpdate, InverseAutoregressiveFlow
from pyroflows.transforms.permute import Permute
from pyroflows.transforms.planar import PlanarFlow

__all__ = [
    "ElementwiseAffine",
    "IAFUpdate",
    "InverseAutoregressiveFlow",
    "Permute",
    "PlanarFlow",
]
