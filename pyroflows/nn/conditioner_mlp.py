"""The conditioner of coupling layers: an MLP from the kept coordinates (and a context) to the
transformer parameters of the others."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyroflows.nn.made import OutputStepScaled, check_output_step_scale

__all__ = ["ConditionerMLP"]


class ConditionerMLP(OutputStepScaled, nn.Module):
    """``(..., in_features) [+ context] -> (..., num_params, out_features)``.

    The output layer starts at zero, so a coupling layer built on a fresh conditioner starts as
    the transformer's initial map (the identity for affine, additive and spline transformers).
    A context, when there is one, is concatenated to the input. With ``in_features = 0`` and no
    context (a coupling layer over one coordinate), the output is a learned constant.
    ``output_fan_in_cap = c`` multiplies the output weights by ``min(1, c / fan_in)``, so an
    Adam step moves each output as if it read at most ``c`` units, and ``output_step_scale = s``
    multiplies the outputs by ``s``: a learning rate ``s · lr`` for the output layer under Adam,
    undone by :func:`pyroflows.fit` (both: see :class:`pyroflows.nn.MADE`).

    Example:
        >>> net = ConditionerMLP(3, num_params=2, out_features=4, hidden_dims=[16])
        >>> net(torch.randn(5, 3)).shape
        torch.Size([5, 2, 4])
    """

    def __init__(
        self,
        in_features: int,
        num_params: int,
        out_features: int,
        hidden_dims: Sequence[int],
        context_dim: int = 0,
        activation: nn.Module | None = None,
        output_fan_in_cap: int | None = None,
        output_step_scale: float = 1.0,
    ):
        super().__init__()
        self.output_step_scale = check_output_step_scale(output_step_scale)
        self.in_features = in_features
        self.num_params = num_params
        self.out_features = out_features
        self.context_dim = context_dim
        if in_features + context_dim == 0:  # nothing to read: a learned constant
            hidden_dims = []
        sizes = [in_features + context_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), activation if activation is not None else nn.SiLU()]
        self.hidden = nn.Sequential(*layers)
        with warnings.catch_warnings():  # out_features = 0: a layer with nothing to change
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.output_layer = nn.Linear(max(sizes[-1], 1), num_params * out_features)
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)
        if output_fan_in_cap is not None and output_fan_in_cap < 1:
            raise ValueError(f"output_fan_in_cap must be None or >= 1, got {output_fan_in_cap}")
        fan_in = self.output_layer.in_features
        self.output_weight_scale = (
            1.0 if output_fan_in_cap is None else min(1.0, output_fan_in_cap / fan_in)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            x = torch.cat(
                [x.expand(batch + x.shape[-1:]), context.expand(batch + context.shape[-1:])], -1
            )
        if x.shape[-1] == 0:  # the constant: a zero input of width one reads only the bias
            x = x.new_zeros(x.shape[:-1] + (1,))
        layer, hidden = self.output_layer, self.hidden(x)
        if self.output_weight_scale == 1.0:  # plain weights: no extra product per call
            out = layer(hidden)
        else:
            out = F.linear(hidden, layer.weight * self.output_weight_scale, layer.bias)
        return self._scaled(out).unflatten(-1, (self.num_params, self.out_features))

    def output_parameters(self) -> list[nn.Parameter]:
        """The output layer's weight and bias (what ``output_step_scale`` scales)."""
        return list(self.output_layer.parameters())
