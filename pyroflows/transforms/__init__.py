"""Flow layers as Pyro ``TransformModule``s, and the registry of flow families.

Structure: a layer pairs a *conditioner* (``pyroflows.nn``: MADE, MLP) with an elementwise
*transformer* (``pyroflows.transforms.transformers``); ``AutoregressiveTransform`` and
``CouplingTransform`` are the two structures, ``PlanarFlow`` and ``BatchNorm`` stand alone.
``make_flow(name, dim, context_dim=0, **options)`` builds any registered family.
"""

from pyroflows.transforms.affine import ElementwiseAffine
from pyroflows.transforms.autoregressive import AutoregressiveTransform
from pyroflows.transforms.batchnorm import BatchNorm
from pyroflows.transforms.conditional import (
    ConditionalFlow,
    ConditionalInverseAutoregressiveFlow,
    ConditionalNeuralAutoregressiveFlow,
    ConditionedFlow,
)
from pyroflows.transforms.coupling import CouplingTransform, alternating_mask
from pyroflows.transforms.iaf import IAFUpdate, InverseAutoregressiveFlow
from pyroflows.transforms.layer import ConditionedLayer, FlowLayer
from pyroflows.transforms.naf import NeuralAutoregressiveFlow
from pyroflows.transforms.permute import Permute, interleave_permutations
from pyroflows.transforms.planar import ConditionalPlanarFlow, PlanarFlow
from pyroflows.transforms.registry import (
    FlowFamily,
    available_flows,
    flow_family,
    make_flow,
    register_flow,
)
from pyroflows.transforms.stack import FlowStack

__all__ = [
    "AutoregressiveTransform",
    "BatchNorm",
    "ConditionalFlow",
    "ConditionalInverseAutoregressiveFlow",
    "ConditionalNeuralAutoregressiveFlow",
    "ConditionalPlanarFlow",
    "ConditionedFlow",
    "ConditionedLayer",
    "CouplingTransform",
    "ElementwiseAffine",
    "FlowFamily",
    "FlowLayer",
    "FlowStack",
    "IAFUpdate",
    "InverseAutoregressiveFlow",
    "NeuralAutoregressiveFlow",
    "Permute",
    "PlanarFlow",
    "alternating_mask",
    "available_flows",
    "flow_family",
    "interleave_permutations",
    "make_flow",
    "register_flow",
]
