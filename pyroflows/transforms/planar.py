"""Planar flow (Rezende & Mohamed 2015) with a stable log-determinant and an exact inverse."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pyroflows.transforms.layer import FlowLayer, check_context

__all__ = [
    "ConditionalPlanarFlow",
    "PlanarFlow",
    "planar_inverse",
    "planar_log_det",
    "planar_u_hat",
]

# softplus(_SHIFT) = 1, so m(0) = 0 below and a layer with u = 0 is the identity map
_SHIFT = math.log(math.e - 1.0)


def _log_softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(softplus(x))`` without underflow for very negative ``x`` (where it tends to x)."""
    return torch.where(x < -20.0, x, torch.log(F.softplus(x).clamp_min(1e-30)))


def _log_sech2(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - tanh(a)^2) = 2 (log 2 - |a| - log(1 + exp(-2|a|)))``."""
    a = a.abs()
    return 2.0 * (math.log(2.0) - a - F.softplus(-2.0 * a))


def planar_u_hat(u: torch.Tensor, w: torch.Tensor):
    """``(û, wᵀû, c)`` with ``wᵀû = -1 + softplus(c)``, batched over leading dimensions."""
    w_dot_u = (w * u).sum(-1)
    c = w_dot_u + _SHIFT
    w_dot_u_hat = F.softplus(c) - 1.0
    u_hat = u + ((w_dot_u_hat - w_dot_u) / (w * w).sum(-1)).unsqueeze(-1) * w
    return u_hat, w_dot_u_hat, c


def planar_log_det(a: torch.Tensor, tanh_a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``log(1 + (1 - tanh² a) wᵀû)`` from ``a = wᵀz + b`` and ``c`` (see :class:`PlanarFlow`)."""
    # clamped so that a = 0 exactly gives a finite value and a zero (not NaN) gradient
    log_tanh2 = 2.0 * torch.log(tanh_a.abs().clamp_min(torch.finfo(tanh_a.dtype).tiny))
    return torch.logaddexp(log_tanh2, _log_sech2(a) + _log_softplus(c))


def planar_inverse(
    y: torch.Tensor,
    u_hat: torch.Tensor,
    w_dot_u_hat: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> torch.Tensor:
    """Exact inverse of ``z + û tanh(wᵀz + b)``: bracketed bisection on ``α = wᵀz`` (the root
    lies within ``|wᵀû|`` of ``wᵀy``), then two Newton steps that carry the gradient."""
    target = (y * w).sum(-1)
    radius = w_dot_u_hat.abs().detach() + 1e-6
    low, high = target - radius, target + radius
    iterations = 60 if y.dtype == torch.float64 else 40
    with torch.no_grad():
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            above = mid + w_dot_u_hat * torch.tanh(mid + b) > target
            high = torch.where(above, mid, high)
            low = torch.where(above, low, mid)
    alpha = 0.5 * (low + high)
    for _ in range(2):  # Newton polish, differentiable in y and the parameters
        t = torch.tanh(alpha + b)
        residual = alpha + w_dot_u_hat * t - target
        alpha = alpha - residual / (1.0 + w_dot_u_hat * (1.0 - t * t))
    return y - u_hat * torch.tanh(alpha + b).unsqueeze(-1)


class PlanarFlow(FlowLayer):
    r"""One planar layer ``f(z) = z + û tanh(wᵀz + b)``, with ``u, w, b`` learned directly or,
    with ``context_dim > 0``, linear in a context ``h`` (the amortized planar flows of van den
    Berg et al. 2018: every data point gets its own layer).

    ``û = u + (m(wᵀu) - wᵀu) w / ‖w‖²`` with ``m(x) = -1 + softplus(x + log(e - 1))`` keeps
    ``wᵀû > -1``, so every layer is invertible (Rezende & Mohamed 2015, appendix A; the shift
    makes ``m(0) = 0``, so a layer with ``u = 0`` is exactly the identity, which is how a fresh
    layer starts). With ``a = wᵀz + b`` and ``c = wᵀu + log(e - 1)``,

        1 + (1 - tanh² a) wᵀû = tanh² a + (1 - tanh² a) softplus(c),

    a sum of two positive terms, so ``log|det J|`` is computed with ``logaddexp`` in log space.

    Pyro's ``Planar`` has no inverse; here ``f⁻¹(y)`` solves the monotone scalar equation
    ``α + wᵀû tanh(α + b) = wᵀy`` for ``α = wᵀz`` by bisection on a bracket that provably holds
    the root (``|α - wᵀy| ≤ |wᵀû|``), then two Newton steps, and returns
    ``z = y - û tanh(α + b)``.

    Example:
        >>> layer = PlanarFlow(3)
        >>> z = torch.randn(4, 3)
        >>> torch.allclose(layer(z), z)  # u starts at zero: the identity
        True
    """

    def __init__(self, input_dim: int, init_w_scale: float | None = None, context_dim: int = 0):
        super().__init__(input_dim, context_dim)
        scale = init_w_scale if init_w_scale is not None else 1.0 / math.sqrt(input_dim)
        if context_dim == 0:
            self.u = nn.Parameter(torch.zeros(input_dim))
            self.w = nn.Parameter(scale * torch.randn(input_dim))
            self.b = nn.Parameter(torch.zeros(()))
            return
        self.u_layer = nn.Linear(context_dim, input_dim)
        self.w_layer = nn.Linear(context_dim, input_dim)
        self.b_layer = nn.Linear(context_dim, 1)
        nn.init.zeros_(self.u_layer.weight)
        nn.init.zeros_(self.u_layer.bias)
        with torch.no_grad():
            self.w_layer.weight.mul_(0.1)
            self.w_layer.bias.normal_(0.0, scale)
            self.b_layer.weight.mul_(0.1)
            self.b_layer.bias.zero_()

    def _parameters_for(self, context: torch.Tensor | None):
        """``(û, wᵀû, c, w, b)``: vectors without context, batched with one."""
        check_context(context, self.context_dim)
        if context is None:
            u, w, b = self.u, self.w, self.b
        else:
            u, w = self.u_layer(context), self.w_layer(context)
            b = self.b_layer(context).squeeze(-1)
        u_hat, w_dot_u_hat, c = planar_u_hat(u, w)
        return u_hat, w_dot_u_hat, c, w, b

    def forward_with_log_det(self, z, context=None, need_log_det=True):
        u_hat, _, c, w, b = self._parameters_for(context)
        a = (z @ w if w.dim() == 1 else (z * w).sum(-1)) + b
        tanh_a = torch.tanh(a)
        x = z + u_hat * tanh_a.unsqueeze(-1)
        return x, (planar_log_det(a, tanh_a, c) if need_log_det else None)

    def inverse_with_log_det(self, y, context=None):
        u_hat, w_dot_u_hat, c, w, b = self._parameters_for(context)
        z = planar_inverse(y, u_hat, w_dot_u_hat, w, b)
        a = (z @ w if w.dim() == 1 else (z * w).sum(-1)) + b
        return z, planar_log_det(a, torch.tanh(a), c)


class ConditionalPlanarFlow(PlanarFlow):
    """A :class:`PlanarFlow` whose ``u, w, b`` are linear in a context (``context_dim >= 1``).

    Example:
        >>> layer = ConditionalPlanarFlow(4, context_dim=6)
        >>> h, z = torch.randn(10, 6), torch.randn(10, 4)
        >>> torch.allclose(layer.condition(h)(z), z)
        True
    """

    def __init__(self, input_dim: int, context_dim: int, init_w_scale: float | None = None):
        if context_dim < 1:
            raise ValueError(f"context_dim must be at least 1, got {context_dim}")
        super().__init__(input_dim, init_w_scale=init_w_scale, context_dim=context_dim)
