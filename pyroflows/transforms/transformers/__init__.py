"""Elementwise monotone transformers ``y = τ(x; θ)``: the half of a flow layer that acts on each
coordinate, given parameters from a conditioner."""

from pyroflows.transforms.transformers.affine import (
    AdditiveTransformer,
    AffineTransformer,
    GatedTransformer,
    affine_update,
)
from pyroflows.transforms.transformers.base import Transformer
from pyroflows.transforms.transformers.sigmoidal import SigmoidalTransformer, sigmoidal_stage_dims
from pyroflows.transforms.transformers.spline import SplineTransformer

__all__ = [
    "AdditiveTransformer",
    "AffineTransformer",
    "GatedTransformer",
    "SigmoidalTransformer",
    "SplineTransformer",
    "Transformer",
    "affine_update",
    "sigmoidal_stage_dims",
]
