"""The interface every elementwise transformer implements.

A *transformer* is a strictly increasing scalar map ``y = τ(x; θ)`` applied to every coordinate,
with its own parameters ``θ`` per coordinate. A flow layer pairs a transformer with a
*conditioner* (a MADE for autoregressive layers, an MLP for coupling layers) that computes
``θ`` from the other coordinates (Papamakarios et al. 2021, section 3.1). Keeping the two apart
means a new flow family is one transformer class (or one conditioner class) plus one registry
line.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Transformer"]


class Transformer(nn.Module):
    """A strictly increasing elementwise map ``y = τ(x; θ)`` with ``num_params`` numbers per
    coordinate.

    Conditioners emit *raw* parameters of shape ``(..., num_params, D)``; a transformer adds its
    ``param_offset`` buffer (shape ``(num_params, 1)``) so that raw parameters of zero, which is
    what a freshly built conditioner emits, give the map described by :attr:`initial_slope`: the
    identity for every transformer except the gated update and the sigmoidal flows, which start
    at ``y ≈ initial_slope * x``.

    Subclasses implement :meth:`_forward` and either :meth:`_inverse` (closed form) or leave the
    default, which solves ``τ(x) = y`` by bracketed bisection followed by one Newton step that
    carries the gradient of the implicit function.

    Example:
        >>> from pyroflows.transforms.transformers import AffineTransformer
        >>> tau = AffineTransformer()
        >>> x, raw = torch.randn(5, 3), torch.zeros(5, tau.num_params, 3)
        >>> y, log_slope = tau(x, raw)
        >>> torch.equal(y, x) and bool((log_slope == 0).all())
        True
    """

    #: numbers per coordinate that the conditioner emits
    num_params: int = 0
    #: whether :meth:`inverse` is a closed form (False: bisection)
    analytic_inverse: bool = True

    def __init__(self, param_offset: torch.Tensor | None = None):
        super().__init__()
        if param_offset is None:
            param_offset = torch.zeros(self.num_params)
        if param_offset.shape != (self.num_params,):
            raise ValueError(
                f"param_offset must have shape ({self.num_params},), "
                f"got {tuple(param_offset.shape)}"
            )
        self.register_buffer("param_offset", param_offset.unsqueeze(-1))
        self._offset_is_zero = not bool(param_offset.any())

    def _offset(self, raw_params: torch.Tensor) -> torch.Tensor:
        return raw_params if self._offset_is_zero else raw_params + self.param_offset

    # ---- what a subclass provides ----------------------------------------------------------

    def _forward(
        self, x: torch.Tensor, params: torch.Tensor, need_log_slope: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(τ(x), log τ'(x))`` from offset parameters ``params`` of shape ``(..., P, D)``."""
        raise NotImplementedError

    def _inverse(self, y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``τ⁻¹(y)``; the default solves by bisection (see :meth:`solve`)."""
        return self.solve(y, params)

    # ---- the interface layers use ------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, raw_params: torch.Tensor, need_log_slope: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(y, log dy/dx)``, both shaped like ``x``; the second is None when not asked for."""
        return self._forward(x, self._offset(raw_params), need_log_slope)

    def inverse(
        self, y: torch.Tensor, raw_params: torch.Tensor, need_log_slope: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, log dy/dx at x)`` with ``τ(x) = y``."""
        params = self._offset(raw_params)
        x = self._inverse(y, params)
        if not need_log_slope:
            return x, None
        return x, self._forward(x, params, True)[1]

    @property
    def initial_slope(self) -> float:
        """``c`` with ``τ(x) ≈ c x`` near 0 for raw parameters of zero (1 for most)."""
        return 1.0

    # ---- the numerical inverse -----------------------------------------------------------------

    def solve(self, y: torch.Tensor, params: torch.Tensor, iterations: int | None = None):
        """Solves ``τ(x) = y`` per coordinate: the bracket ``[-1, 1]`` doubles until it holds the
        root, bisection (no gradient) narrows it, and one Newton step from the root,
        ``x - (τ(x) - y) / τ'(x)``, carries the implicit gradient with respect to ``y`` and
        ``params`` (exact at a root)."""
        if iterations is None:
            iterations = 64 if y.dtype == torch.float64 else 40
        with torch.no_grad():
            fixed = params.detach()
            low = torch.full_like(y, -1.0)
            high = torch.full_like(y, 1.0)
            for _ in range(64):  # widen until the bracket holds the root
                too_high = self._forward(low, fixed, False)[0] > y
                too_low = self._forward(high, fixed, False)[0] < y
                if not bool(too_high.any() or too_low.any()):
                    break
                low = torch.where(too_high, 2.0 * low, low)
                high = torch.where(too_low, 2.0 * high, high)
            for _ in range(iterations):
                mid = 0.5 * (low + high)
                above = self._forward(mid, fixed, False)[0] > y
                high = torch.where(above, mid, high)
                low = torch.where(above, low, mid)
            root = 0.5 * (low + high)
        value, log_slope = self._forward(root, params, True)
        return root - (value - y) * torch.exp(-log_slope)

    def extra_repr(self) -> str:
        return f"num_params={self.num_params}"
