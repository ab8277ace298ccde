"""Flow layers as Pyro ``TransformModule``s."""

from pyroflows.transforms.affine import ElementwiseAffine
from pyroflows.transforms.iaf import IAFUpdate, InverseAutoregressiveFlow
from pyroflows.transforms.permute import Permute

__all__ = [
    "ElementwiseAffine",
    "IAFUpdate",
    "InverseAutoregressiveFlow",
    "Permute",
]
