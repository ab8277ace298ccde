"""Inverse autoregressive flow (Kingma et al. 2016), with the affine and the gated update."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.nn import functional as F

from pyroflows.nn.made import MADE

__all__ = ["InverseAutoregressiveFlow", "IAFUpdate"]

IAFUpdate = Literal["affine", "gated"]


class InverseAutoregressiveFlow(TransformModule):
    r"""One IAF layer, a Pyro ``TransformModule`` mapping noise ``u`` to ``x``.

    With ``(m, s) = MADE(u)`` (so ``m_i, s_i`` depend on ``u_<i`` only), the two updates are

    * ``"affine"``: ``x = u * exp(l) + m``, with ``l`` a smooth squashing of ``s`` into
      ``log_scale_bounds`` (``l = 0`` at ``s = 0``), ``log|det J| = sum(l)``;
    * ``"gated"`` (Kingma et al. 2016, eq. 14): ``g = sigmoid(s + gate_bias)``,
      ``x = g * u + (1 - g) * m``, ``log|det J| = sum(log g)``, computed with ``logsigmoid``.

    The forward (sampling) direction costs one MADE pass. ``log_abs_det_jacobian`` of the layer's
    own last output is served from a cache, and so is the inverse of that output; the inverse of
    any other point is computed exactly by ``D`` sequential MADE passes. Use ``.inv`` of this
    layer for a masked autoregressive flow (one-pass density, sequential sampling).

    A fresh layer is the identity map for ``"affine"`` and ``x = sigmoid(gate_bias) * u`` for
    ``"gated"`` (see :attr:`initial_scale`).

    Example:
        >>> iaf = InverseAutoregressiveFlow(4, hidden_dims=[16])
        >>> u = torch.randn(10, 4)
        >>> x = iaf(u)
        >>> torch.allclose(iaf.inverse_uncached(x), u, atol=1e-5)
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] | None = None,
        update: IAFUpdate = "affine",
        ordering: torch.Tensor | Sequence[int] | None = None,
        context_dim: int = 0,
        gate_bias: float = 2.0,
        log_scale_bounds: tuple[float, float] = (-4.0, 1.0),
        skip_connection: bool = True,
        activation: nn.Module | None = None,
    ):
        super().__init__(cache_size=1)
        if update not in ("affine", "gated"):
            raise ValueError(f"update must be 'affine' or 'gated', got {update!r}")
        low, high = log_scale_bounds
        if not low < 0.0 < high:
            raise ValueError(f"log_scale_bounds must straddle 0, got {log_scale_bounds}")
        if hidden_dims is None:
            hidden_dims = [3 * input_dim + 1]
        self.input_dim = input_dim
        self.update = update
        self.gate_bias = float(gate_bias)
        self.log_scale_low = float(low)
        self.log_scale_high = float(high)
        # shift so that a zero MADE output gives log-scale 0 (the identity map)
        self._log_scale_shift = math.log(high / -low)
        self.made = MADE(
            input_dim,
            hidden_dims,
            num_params=2,
            ordering=ordering,
            context_dim=context_dim,
            skip_connection=skip_connection,
            activation=activation,
        )
        self._cached_log_det: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def initial_scale(self) -> float:
        """The factor ``c`` with ``x = c * u`` for a freshly built layer."""
        return 1.0 if self.update == "affine" else 1.0 / (1.0 + math.exp(-self.gate_bias))

    def _shift_and_log_scale(
        self, u: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(m, s)`` where the update is ``x = exp(l) * u + (1 - exp(l)) * m`` (gated)
        or ``x = exp(l) * u + m`` (affine), and ``l`` is the per-dimension log-scale."""
        shift, raw = self.made(u, context).unbind(-2)
        if self.update == "gated":
            log_scale = F.logsigmoid(raw + self.gate_bias)
        else:
            width = self.log_scale_high - self.log_scale_low
            log_scale = self.log_scale_low + width * torch.sigmoid(raw - self._log_scale_shift)
        return shift, log_scale

    def _forward_with_log_det(
        self, u: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self._shift_and_log_scale(u, context)
        scale = torch.exp(log_scale)
        if self.update == "gated":
            x = scale * u + (1.0 - scale) * shift
        else:
            x = scale * u + shift
        return x, log_scale.sum(-1)

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        x, log_det = self._forward_with_log_det(u)
        self._cached_log_det = (u, log_det)
        return x

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        return self.inverse_uncached(x)

    def inverse_uncached(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact inverse of any point by ``D`` sequential MADE passes.

        After pass ``k`` the first ``k`` variables in the ordering are exact, because output
        ``i`` of the MADE reads only inputs before ``i``.
        """
        u = torch.zeros_like(x)
        for _ in range(self.input_dim):
            shift, log_scale = self._shift_and_log_scale(u, context)
            if self.update == "gated":
                scale = torch.exp(log_scale)
                u = (x - (1.0 - scale) * shift) / scale
            else:
                u = (x - shift) * torch.exp(-log_scale)
        return u

    def log_abs_det_jacobian(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cached = self._cached_log_det
        if cached is not None and cached[0] is u:
            return cached[1]
        _, log_scale = self._shift_and_log_scale(u)
        return log_scale.sum(-1)
