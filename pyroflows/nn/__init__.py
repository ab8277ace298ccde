"""Conditioner networks: MADE for autoregressive layers, an MLP for coupling layers."""

from pyroflows.nn.conditioner_mlp import ConditionerMLP
from pyroflows.nn.made import MADE, MaskedLinear, default_hidden_dims, made_degrees

__all__ = ["MADE", "ConditionerMLP", "MaskedLinear", "default_hidden_dims", "made_degrees"]
