"""MADE: the masked autoencoder for distribution estimation (Germain et al. 2015).

A MADE is an MLP whose weight matrices are masked so that output ``i`` depends only on the inputs
that come before ``i`` in a chosen ordering. It is the conditioner of every autoregressive flow in
pyroflows: it emits, for each input dimension, ``num_params`` numbers (e.g. a shift and a scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MADE", "MaskedLinear", "default_hidden_dims", "made_degrees", "skip_connection_fits"]


#: the largest masked input-to-output matrix (``num_params * D * D`` weights) that
#: ``skip_connection="auto"`` keeps; beyond it the direct path costs more than it brings
SKIP_CONNECTION_MAX_WEIGHTS = 2**22


def default_hidden_dims(input_dim: int, context_dim: int = 0) -> list[int]:
    """The one default conditioner width of pyroflows: one hidden layer of ``3 D + 1`` units
    (Pyro's AutoIAFNormal default) kept in ``[16, 1024]``; amortized layers (``context_dim >
    0``), which serve every data point, get ``4 D`` units kept in ``[64, 1024]``.

    Example:
        >>> default_hidden_dims(10), default_hidden_dims(32, context_dim=300)
        ([31], [128])
    """
    if context_dim > 0:
        return [min(max(4 * input_dim, 64), 1024)]
    return [min(max(3 * input_dim + 1, 16), 1024)]


def skip_connection_fits(input_dim: int, num_params: int) -> bool:
    """Whether a direct masked input-to-output path of ``num_params * D²`` weights is within
    :data:`SKIP_CONNECTION_MAX_WEIGHTS` (4M; D ≤ 1448 for an affine layer)."""
    return num_params * input_dim * input_dim <= SKIP_CONNECTION_MAX_WEIGHTS


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed mask (a buffer).

    ``weight_scale`` multiplies the mask: ``y = (scale ⊙ mask ⊙ W) x + b``. Since Adam moves
    every weight by about ``lr`` per step whatever its gradient's size, a scale ``c`` on a row
    is a learning rate ``c·lr`` for what that row computes.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mask: torch.Tensor,
        bias: bool = True,
        weight_scale: float | torch.Tensor = 1.0,
    ):
        super().__init__(in_features, out_features, bias=bias)
        if mask.shape != (out_features, in_features):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, expected {(out_features, in_features)}"
            )
        scale = torch.as_tensor(weight_scale, dtype=self.weight.dtype)
        self.register_buffer("mask", mask.to(self.weight.dtype) * scale)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def check_output_step_scale(scale: float) -> float:
    """``scale`` as a float if it is finite and positive (see :class:`MADE`), else a
    ``ValueError`` naming the accepted range."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(
            f"output_step_scale must be a finite number > 0 (1: the plain step), got {scale!r}"
        )
    return float(scale)


class OutputStepScaled:
    """What the conditioners share about ``output_step_scale = s`` (see :class:`MADE`): their
    outputs are multiplied by ``s``, and :meth:`step_scaled_parameters` tells
    :func:`pyroflows.fit` which parameters to step by ``lr / s``. A conditioner sets
    ``output_step_scale`` and provides ``output_parameters()``."""

    output_step_scale: float = 1.0

    def output_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def _scaled(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.output_step_scale == 1.0 else out * self.output_step_scale

    def step_scaled_parameters(self) -> list[tuple[nn.Parameter, float]]:
        """``(parameter, s)`` for each output parameter when ``output_step_scale = s ≠ 1``, for
        :func:`pyroflows.fit`, which steps them by ``lr / s``."""
        scale = self.output_step_scale
        return [] if scale == 1.0 else [(param, scale) for param in self.output_parameters()]


def _zero_(layer: nn.Linear) -> None:
    """Starts a layer at zero (weights and bias), so a fresh flow starts at its initial map."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def made_degrees(
    input_dim: int, hidden_dims: Sequence[int], ordering: torch.Tensor
) -> list[torch.Tensor]:
    """Degrees of the input units and of each hidden layer.

    The input ``ordering[k]`` is the ``k``-th variable in the autoregressive order and gets degree
    ``k + 1``. Hidden units cycle through the degrees ``1 .. input_dim - 1``, so every degree is
    represented when a layer is at least ``input_dim - 1`` wide.
    """
    input_degrees = torch.empty(input_dim, dtype=torch.long)
    input_degrees[ordering] = torch.arange(1, input_dim + 1)
    degrees = [input_degrees]
    span = max(1, input_dim - 1)
    for width in hidden_dims:
        degrees.append(torch.arange(width) % span + 1)
    return degrees


class MADE(OutputStepScaled, nn.Module):
    """Masked autoregressive MLP with ``num_params`` outputs per input dimension.

    Output ``[..., p, i]`` depends on ``x[..., j]`` only if ``j`` comes strictly before ``i`` in
    ``ordering``, and on every entry of ``context``. The output layer (and the optional direct
    input-to-output connection) starts at zero, so a flow built on a fresh MADE starts as the
    identity map.

    Args:
        input_dim: number of autoregressive variables ``D``.
        hidden_dims: widths of the hidden layers (may be empty).
        num_params: numbers emitted per variable (2 for a shift and a scale).
        ordering: a permutation of ``range(D)`` listing the variables in autoregressive order;
            defaults to ``0, 1, ..., D-1``.
        context_dim: size of an optional context vector fed, unmasked, to the first layer.
        skip_connection: add a masked linear map from inputs straight to outputs, so that
            linear (Gaussian) dependencies are represented exactly; ``"auto"`` (default) keeps
            it while its ``num_params * D²`` weights fit :data:`SKIP_CONNECTION_MAX_WEIGHTS`.
        activation: the hidden nonlinearity (default SiLU: smooth, for HMC with NeuTra, and
            half the cost of ELU on a CPU).
        output_fan_in_cap: ``c``: an output row (output layer or skip path) that may read
            ``fan_in > c`` units has its weights multiplied by the fixed factor ``c / fan_in``
            (``None``, the default: plain weights). Adam moves every weight by about ``lr`` per
            step whatever its gradient's size, so a row moves its output by up to ``lr · fan_in
            · max|h|`` per step; capped, by ``lr · min(fan_in, c) · max|h|`` at any width (the
            "base width" of μP, Yang & Hu 2021). Guides use ``c = 16``, the narrowest default
            width, so that small flows step as before while wide ones no longer take steps
            ``D`` times larger (AutoNAF on a horseshoe regression with ``D = 202``: the first
            step at ``lr = 1e-2`` moved its MADE outputs by up to 0.26 with plain weights and
            0.017 capped; at ``D = 102`` the README's plain SVI loop turned NaN at steps 29–45
            with plain weights, on 3 of 3 seeds, and stays finite capped).
        output_step_scale: ``s > 0``: every output is multiplied by the fixed factor ``s``
            (default 1: none). The outputs start at zero, so the initial map is unchanged; under
            Adam, which moves each weight by about ``lr`` per step, ``s`` is a learning rate
            ``s · lr`` for the output layer's weights and biases (:meth:`output_parameters`),
            so the transformer's parameters move ``s`` times as far per step.
            :func:`pyroflows.fit` gives those parameters ``lr / s`` and so undoes it; a
            user's own loop keeps it.

    Example:
        >>> made = MADE(3, [16], num_params=2)
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 2, 3])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        num_params: int = 2,
        ordering: torch.Tensor | Sequence[int] | None = None,
        context_dim: int = 0,
        skip_connection: bool | str = "auto",
        activation: nn.Module | None = None,
        output_fan_in_cap: int | None = None,
        output_step_scale: float = 1.0,
    ):
        super().__init__()
        self.output_step_scale = check_output_step_scale(output_step_scale)
        if skip_connection == "auto":
            skip_connection = skip_connection_fits(input_dim, num_params)
        elif not isinstance(skip_connection, bool):
            raise ValueError(
                f"skip_connection must be True, False or 'auto', got {skip_connection!r}"
            )
        if input_dim < 1:
            raise ValueError(f"MADE needs input_dim >= 1, got {input_dim}")
        if num_params < 1:
            raise ValueError(f"MADE needs num_params >= 1, got {num_params}")
        if output_fan_in_cap is not None and output_fan_in_cap < 1:
            raise ValueError(f"output_fan_in_cap must be None or >= 1, got {output_fan_in_cap}")
        if ordering is None:
            ordering = torch.arange(input_dim)
        ordering = torch.as_tensor(ordering, dtype=torch.long)
        if sorted(ordering.tolist()) != list(range(input_dim)):
            raise ValueError(f"ordering must be a permutation of range({input_dim})")
        self.input_dim = input_dim
        self.hidden_dims = list(hidden_dims)
        self.num_params = num_params
        self.context_dim = context_dim
        self.register_buffer("ordering", ordering.clone())
        self.activation = activation if activation is not None else nn.SiLU()

        degrees = made_degrees(input_dim, self.hidden_dims, ordering)
        output_degrees = degrees[0].repeat(num_params)  # block p holds parameter p of every dim
        num_outputs = num_params * input_dim
        # The skip connection is a masked linear path from the inputs to the outputs (linear,
        # Gaussian, dependencies represented exactly); the context feeds the first hidden layer
        # and the outputs (so the first variable in the ordering, which sees no hidden unit,
        # still reads it). Both direct paths start at zero and are added to the output layer
        # inside its matrix product (addmm), so they cost no concatenation.
        self.skip_connection = bool(skip_connection and self.hidden_dims)
        direct_mask = output_degrees[:, None] > degrees[0][None, :]
        if self.hidden_dims:
            first_mask = degrees[1][:, None] >= degrees[0][None, :]
        else:
            first_mask = direct_mask

        def row_scale(mask: torch.Tensor) -> torch.Tensor | float:
            if output_fan_in_cap is None:
                return 1.0
            fan_in = mask.sum(1, keepdim=True).clamp_min(1).float()
            return (output_fan_in_cap / fan_in).clamp_max(1.0)

        self.input_layer = MaskedLinear(
            input_dim,
            first_mask.shape[0],
            first_mask,
            weight_scale=1.0 if self.hidden_dims else row_scale(first_mask),
        )
        if not self.hidden_dims:  # the input layer is the output layer
            _zero_(self.input_layer)
        self.skip_layer: MaskedLinear | None = None
        if self.skip_connection:
            self.skip_layer = MaskedLinear(
                input_dim, num_outputs, direct_mask, bias=False, weight_scale=row_scale(direct_mask)
            )
            _zero_(self.skip_layer)
        self.context_layer: nn.Linear | None = None
        self.context_output_layer: nn.Linear | None = None
        if context_dim > 0:
            self.context_layer = nn.Linear(context_dim, first_mask.shape[0], bias=False)
            if self.hidden_dims:
                self.context_output_layer = nn.Linear(context_dim, num_outputs, bias=False)
                _zero_(self.context_output_layer)
            else:
                _zero_(self.context_layer)
        layers = []
        for d_in, d_out in zip(degrees[1:-1], degrees[2:], strict=True):
            layers.append(MaskedLinear(len(d_in), len(d_out), d_out[:, None] >= d_in[None, :]))
        self.hidden_layers = nn.ModuleList(layers)
        self.output_layer: MaskedLinear | None = None
        if self.hidden_dims:
            out_mask = output_degrees[:, None] > degrees[-1][None, :]
            self.output_layer = MaskedLinear(
                self.hidden_dims[-1], num_outputs, out_mask, weight_scale=row_scale(out_mask)
            )
            _zero_(self.output_layer)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the parameters, of shape ``x.shape[:-1] + (num_params, input_dim)``."""
        h = self._last_hidden(x, context)
        if self.output_layer is None:  # the input layer is the output layer
            return self._scaled(h).unflatten(-1, (self.num_params, self.input_dim))
        direct = None
        if self.skip_layer is not None:
            direct = self.skip_layer(x)
        if self.context_output_layer is not None:
            from_context = self.context_output_layer(context)
            direct = from_context if direct is None else direct + from_context
        layer = self.output_layer
        if direct is None:
            out = layer(h)
        else:
            batch = h.shape[:-1]
            direct = (direct + layer.bias).expand(batch + direct.shape[-1:])
            out = torch.addmm(
                direct.reshape(-1, direct.shape[-1]),
                h.reshape(-1, h.shape[-1]),
                layer.masked_weight().t(),
            ).reshape(batch + direct.shape[-1:])
        return self._scaled(out).unflatten(-1, (self.num_params, self.input_dim))

    def forward_coordinate(
        self, x: torch.Tensor, coordinate: int, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The parameters of coordinate ``coordinate`` alone, of shape ``x.shape[:-1] +
        (num_params, 1)``: ``forward(x, context)[..., coordinate:coordinate + 1]`` with only
        that coordinate's ``num_params`` output rows computed (an autoregressive inverse needs
        one coordinate per pass).

        Example:
            >>> made = MADE(3, [16], num_params=2)
            >>> made.forward_coordinate(torch.randn(5, 3), 1).shape
            torch.Size([5, 2, 1])
        """
        if not 0 <= coordinate < self.input_dim:
            raise ValueError(f"coordinate must be in [0, {self.input_dim}), got {coordinate}")
        rows = torch.arange(self.num_params, device=x.device) * self.input_dim + coordinate

        def sliced(layer: nn.Linear, inputs: torch.Tensor, bias: bool = True) -> torch.Tensor:
            weight = layer.weight[rows]
            if isinstance(layer, MaskedLinear):
                weight = weight * layer.mask[rows]
            return F.linear(inputs, weight, layer.bias[rows] if bias else None)

        if self.output_layer is None:  # the input layer is the output layer
            self._check_input(x, context)
            out = sliced(self.input_layer, x)
            if self.context_layer is not None:
                out = out + sliced(self.context_layer, context, bias=False)
        else:
            out = sliced(self.output_layer, self._last_hidden(x, context))
            if self.skip_layer is not None:
                out = out + sliced(self.skip_layer, x, bias=False)
            if self.context_output_layer is not None:
                out = out + sliced(self.context_output_layer, context, bias=False)
        return self._scaled(out).unsqueeze(-1)

    def _last_hidden(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The last hidden layer's activations (the input layer's output, before any
        activation, when there are no hidden layers)."""
        self._check_input(x, context)
        h = self.input_layer(x)
        if self.context_layer is not None:
            h = h + self.context_layer(context)
        if self.output_layer is None:
            return h
        h = self.activation(h)
        for layer in self.hidden_layers:
            h = self.activation(layer(h))
        return h

    def _check_input(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"MADE expected inputs of size {self.input_dim}, got {x.shape[-1]}")
        self._check_context(context)

    def output_parameters(self) -> list[nn.Parameter]:
        """The weights and biases of the layers that compute the outputs directly (what
        ``output_step_scale`` scales)."""
        if self.output_layer is None:
            layers = [self.input_layer, self.context_layer]
        else:
            layers = [self.output_layer, self.skip_layer, self.context_output_layer]
        return [p for layer in layers if layer is not None for p in layer.parameters()]

    def _check_context(self, context: torch.Tensor | None) -> None:
        if self.context_dim == 0:
            if context is not None:
                raise ValueError("this MADE was built with context_dim=0 but got a context")
            return
        if context is None:
            raise ValueError(f"this MADE needs a context of size {self.context_dim}, got None")
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context has size {context.shape[-1]} in its last dimension, "
                f"expected {self.context_dim}"
            )
