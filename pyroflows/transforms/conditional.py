"""Conditional flow layers: IAF, NAF and planar layers whose parameters depend on a context.

A conditional layer is a Pyro :class:`~pyro.distributions.ConditionalTransformModule`:
``layer.condition(h)`` returns an ordinary transform bound to the context ``h`` (for a VAE, the
encoder's features of a batch of data points). Autoregressive layers feed ``h`` into every MADE
(Kingma et al. 2016); planar layers read their ``u, w, b`` off ``h`` through a linear map
(Rezende & Mohamed 2015; van den Berg et al. 2018). ``h`` has shape ``batch + (context_dim,)``
and broadcasts against the inputs, so ``(num_samples, batch, D)`` inputs work with a
``(batch, context_dim)`` context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pyro.distributions import ConditionalTransformModule, constraints
from torch import nn
from torch.distributions import Transform

from pyroflows.transforms.iaf import IAFUpdate, InverseAutoregressiveFlow
from pyroflows.transforms.naf import NeuralAutoregressiveFlow
from pyroflows.transforms.planar import planar_inverse, planar_log_det, planar_u_hat

__all__ = [
    "ConditionalFlow",
    "ConditionalInverseAutoregressiveFlow",
    "ConditionalNeuralAutoregressiveFlow",
    "ConditionalPlanarFlow",
    "ConditionedFlow",
]


class ConditionedFlow(Transform):
    """A conditional layer bound to one context: what ``ConditionalFlow.condition`` returns.

    Its forward pass computes ``log|det J|`` at the same time and keeps it for the layer's own
    last output, so a flow distribution scores its own samples without recomputation.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, layer: ConditionalFlow, context: torch.Tensor):
        super().__init__(cache_size=1)
        self.layer = layer
        self.context = context
        self._cached_log_det: tuple[torch.Tensor, torch.Tensor] | None = None

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        x, log_det = self.layer._forward_with_log_det(u, self.context)
        self._cached_log_det = (u, log_det)
        return x

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.inverse_uncached(x, self.context)

    def log_abs_det_jacobian(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cached = self._cached_log_det
        if cached is not None and cached[0] is u:
            return cached[1]
        return self.layer._forward_with_log_det(u, self.context)[1]


class ConditionalFlow(ConditionalTransformModule):
    """Base class: a layer with ``_forward_with_log_det(u, context)`` and
    ``inverse_uncached(x, context)``; ``condition(context)`` binds a context."""

    input_dim: int
    context_dim: int

    def condition(self, context: torch.Tensor) -> ConditionedFlow:
        return ConditionedFlow(self, context)

    def _forward_with_log_det(
        self, u: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse_uncached(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def initial_scale(self) -> float:
        """The factor ``c`` with ``x ≈ c * u`` for a freshly built layer (1 for most)."""
        return 1.0


class _AutoregressiveConditionalFlow(ConditionalFlow):
    """A conditional layer that is an autoregressive layer (``self.flow``) built with a
    ``context_dim``: the context goes to its MADE."""

    flow: InverseAutoregressiveFlow | NeuralAutoregressiveFlow

    @property
    def initial_scale(self) -> float:
        return self.flow.initial_scale

    def _forward_with_log_det(self, u, context):
        return self.flow._forward_with_log_det(u, context)

    def inverse_uncached(self, x, context):
        return self.flow.inverse_uncached(x, context)


class ConditionalInverseAutoregressiveFlow(_AutoregressiveConditionalFlow):
    """An IAF layer whose MADE reads the context ``h`` beside ``u`` (Kingma et al. 2016, sec. 4).

    Same updates and options as :class:`~pyroflows.transforms.InverseAutoregressiveFlow`;
    a fresh layer is the identity for every context.

    Example:
        >>> layer = ConditionalInverseAutoregressiveFlow(4, context_dim=6)
        >>> h, u = torch.randn(10, 6), torch.randn(10, 4)
        >>> layer.condition(h)(u).shape
        torch.Size([10, 4])
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: Sequence[int] | None = None,
        update: IAFUpdate = "affine",
        ordering: torch.Tensor | Sequence[int] | None = None,
        **kwargs,
    ):
        super().__init__()
        if context_dim < 1:
            raise ValueError(f"context_dim must be at least 1, got {context_dim}")
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.flow = InverseAutoregressiveFlow(
            input_dim, hidden_dims, update=update, ordering=ordering, context_dim=context_dim,
            **kwargs,
        )


class ConditionalNeuralAutoregressiveFlow(_AutoregressiveConditionalFlow):
    """A NAF layer (DSF or DDSF transformer) whose MADE reads the context ``h``.

    Example:
        >>> layer = ConditionalNeuralAutoregressiveFlow(3, context_dim=5, transformer="ddsf")
        >>> h, u = torch.randn(7, 5), torch.randn(7, 3)
        >>> torch.allclose(layer.inverse_uncached(layer.condition(h)(u), h), u, atol=1e-4)
        True
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: Sequence[int] | None = None,
        transformer: Literal["dsf", "ddsf"] = "dsf",
        hidden_units: int = 8,
        depth: int = 2,
        **kwargs,
    ):
        super().__init__()
        if context_dim < 1:
            raise ValueError(f"context_dim must be at least 1, got {context_dim}")
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.flow = NeuralAutoregressiveFlow(
            input_dim,
            hidden_dims,
            transformer=transformer,
            hidden_units=hidden_units,
            depth=depth,
            context_dim=context_dim,
            **kwargs,
        )


class ConditionalPlanarFlow(ConditionalFlow):
    """A planar layer ``z + û(h) tanh(w(h)ᵀz + b(h))`` with ``u, w, b`` linear in the context.

    As in the amortized planar flows of van den Berg et al. (2018), every data point gets its own
    layer parameters; the invertibility correction ``û`` and the stable ``log|det J|`` are those
    of :class:`~pyroflows.transforms.PlanarFlow`. The ``u`` map starts at zero, so a fresh layer
    is the identity; ``w`` starts near a random direction of norm about 1.

    Example:
        >>> layer = ConditionalPlanarFlow(4, context_dim=6)
        >>> h, z = torch.randn(10, 6), torch.randn(10, 4)
        >>> torch.allclose(layer.condition(h)(z), z)
        True
    """

    def __init__(self, input_dim: int, context_dim: int):
        super().__init__()
        if context_dim < 1:
            raise ValueError(f"context_dim must be at least 1, got {context_dim}")
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.u_layer = nn.Linear(context_dim, input_dim)
        self.w_layer = nn.Linear(context_dim, input_dim)
        self.b_layer = nn.Linear(context_dim, 1)
        nn.init.zeros_(self.u_layer.weight)
        nn.init.zeros_(self.u_layer.bias)
        with torch.no_grad():
            self.w_layer.weight.mul_(0.1)
            self.w_layer.bias.normal_(0.0, 1.0 / math.sqrt(input_dim))
            self.b_layer.weight.mul_(0.1)
            self.b_layer.bias.zero_()

    def _parameters_for(self, context: torch.Tensor):
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context has size {context.shape[-1]} in its last dimension, "
                f"expected {self.context_dim}"
            )
        u, w = self.u_layer(context), self.w_layer(context)
        b = self.b_layer(context).squeeze(-1)
        u_hat, w_dot_u_hat, c = planar_u_hat(u, w)
        return u_hat, w_dot_u_hat, c, w, b

    def _forward_with_log_det(self, z, context):
        u_hat, _, c, w, b = self._parameters_for(context)
        a = (z * w).sum(-1) + b
        tanh_a = torch.tanh(a)
        return z + u_hat * tanh_a.unsqueeze(-1), planar_log_det(a, tanh_a, c)

    def inverse_uncached(self, x, context):
        u_hat, w_dot_u_hat, _, w, b = self._parameters_for(context)
        return planar_inverse(x, u_hat, w_dot_u_hat, w, b)

