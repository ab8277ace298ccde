"""Flow layers as Pyro ``TransformModule``s."""

from pyroflows.transforms.affine import ElementwiseAffine
from pyroflows.transforms.conditional import (
    ConditionalFlow,
    ConditionalInverseAutoregressiveFlow,
    ConditionalNeuralAutoregressiveFlow,
    ConditionalPlanarFlow,
    ConditionedFlow,
)
from pyroflows.transforms.iaf import IAFUpdate, InverseAutoregressiveFlow
from pyroflows.transforms.naf import NeuralAutoregressiveFlow
from pyroflows.transforms.permute import Permute, interleave_permutations
from pyroflows.transforms.planar import PlanarFlow

__all__ = [
    "ConditionalFlow",
    "ConditionalInverseAutoregressiveFlow",
    "ConditionalNeuralAutoregressiveFlow",
    "ConditionalPlanarFlow",
    "ConditionedFlow",
    "ElementwiseAffine",
    "IAFUpdate",
    "InverseAutoregressiveFlow",
    "NeuralAutoregressiveFlow",
    "Permute",
    "PlanarFlow",
    "interleave_permutations",
]
