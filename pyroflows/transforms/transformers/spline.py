"""Monotone rational-quadratic spline transformer with linear tails (Durkan et al. 2019)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from pyroflows.transforms.transformers.base import Transformer

__all__ = ["SplineTransformer"]


class SplineTransformer(Transformer):
    r"""Monotone rational-quadratic spline on ``[-bound, bound]``, the identity outside.

    ``num_bins = K`` bins with widths ``w_k`` and heights ``h_k`` (softmax, each at least
    ``min_bin_size``·2·bound) and positive derivatives ``d_k`` at the ``K - 1`` inner knots
    (softplus, at least ``min_derivative``); the derivative at both outer knots is 1, so the
    map joins the identity tails smoothly. In bin ``k``, with ``ξ = (x - x_k) / w_k`` and
    ``s_k = h_k / w_k``,

        y = y_k + h_k (s_k ξ² + d_k ξ(1-ξ)) / (s_k + (d_k + d_{k+1} - 2 s_k) ξ(1-ξ)),

    whose derivative is positive, and whose inverse is the root of a quadratic (closed form,
    Durkan et al. 2019, eqs. 6-8). Raw parameters of zero give equal bins and unit derivatives:
    exactly the identity.

    Example:
        >>> tau = SplineTransformer(num_bins=4, bound=3.0)
        >>> raw = torch.randn(5, tau.num_params, 2)
        >>> x = torch.randn(5, 2)
        >>> y, _ = tau(x, raw)
        >>> torch.allclose(tau.inverse(y, raw)[0], x, atol=1e-5)
        True
    """

    def __init__(
        self,
        num_bins: int = 8,
        bound: float = 4.0,
        min_bin_size: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        if num_bins < 1:
            raise ValueError(f"num_bins must be at least 1, got {num_bins}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound}")
        if not 0 < min_bin_size * num_bins < 1:
            raise ValueError(
                f"min_bin_size must lie in (0, 1 / num_bins) = (0, {1 / num_bins:.3g}), "
                f"got {min_bin_size}"
            )
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative}")
        self.num_params = 3 * num_bins - 1
        offset = torch.zeros(self.num_params)
        # softplus(offset) + min_derivative = 1 for the inner derivatives
        offset[2 * num_bins :] = math.log(math.expm1(1.0 - min_derivative))
        super().__init__(offset)
        self.num_bins = num_bins
        self.bound = float(bound)
        self.min_bin_size = float(min_bin_size)
        self.min_derivative = float(min_derivative)

    def _knots(self, params: torch.Tensor):
        """Knot positions ``(..., D, K+1)`` in x and y, and derivatives ``(..., D, K+1)``."""
        K, B = self.num_bins, self.bound
        positions = []
        for logits in (params[..., :K, :], params[..., K : 2 * K, :]):
            # the softmax over the bins runs on the (..., K, D) layout, where D is contiguous:
            # over a short last axis torch's CPU softmax is ten times slower
            share = torch.softmax(logits, -2).movedim(-2, -1)  # (..., D, K)
            size = self.min_bin_size + (1.0 - self.min_bin_size * K) * share
            edges = F.pad(torch.cumsum(size, -1), (1, 0))
            edges = 2.0 * B * edges - B
            # pin the ends exactly (the cumulative sum may drift by an ulp)
            edges = torch.cat(
                [
                    torch.full_like(edges[..., :1], -B),
                    edges[..., 1:-1],
                    torch.full_like(edges[..., :1], B),
                ],
                -1,
            )
            positions.append(edges)
        inner = self.min_derivative + F.softplus(params[..., 2 * K :, :]).movedim(-2, -1)
        ones = torch.ones_like(inner[..., :1])
        derivatives = torch.cat([ones, inner, ones], -1)
        return positions[0], positions[1], derivatives

    @staticmethod
    def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return values.gather(-1, index).squeeze(-1)

    def _bin(self, knots: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Index of the bin of each ``v`` (inside the bound), shape ``v.shape + (1,)``."""
        index = (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)
        return index.clamp(0, self.num_bins - 1)

    def _bin_params(self, params, v, in_x: bool):
        x_knots, y_knots, derivatives = self._knots(params)
        x_knots, y_knots, derivatives = (
            t.expand(v.shape + t.shape[-1:]) for t in (x_knots, y_knots, derivatives)
        )
        index = self._bin(x_knots if in_x else y_knots, v)
        x_k, x_k1 = self._gather(x_knots, index), self._gather(x_knots, index + 1)
        y_k, y_k1 = self._gather(y_knots, index), self._gather(y_knots, index + 1)
        d_k, d_k1 = self._gather(derivatives, index), self._gather(derivatives, index + 1)
        return x_k, x_k1 - x_k, y_k, y_k1 - y_k, d_k, d_k1

    def _forward(self, x, params, need_log_slope):
        inside = (x > -self.bound) & (x < self.bound)
        clamped = x.clamp(-self.bound, self.bound)
        x_k, width, y_k, height, d_k, d_k1 = self._bin_params(params, clamped, in_x=True)
        slope = height / width
        xi = ((clamped - x_k) / width).clamp(0.0, 1.0)
        xi_1m = xi * (1.0 - xi)
        denominator = slope + (d_k1 + d_k - 2.0 * slope) * xi_1m
        y = y_k + height * (slope * xi * xi + d_k * xi_1m) / denominator
        y = torch.where(inside, y, x)
        if not need_log_slope:
            return y, None
        numerator = slope * slope * (d_k1 * xi * xi + 2.0 * slope * xi_1m + d_k * (1 - xi) ** 2)
        log_slope = torch.log(numerator) - 2.0 * torch.log(denominator)
        return y, torch.where(inside, log_slope, torch.zeros_like(log_slope))

    def _inverse(self, y, params):
        inside = (y > -self.bound) & (y < self.bound)
        clamped = y.clamp(-self.bound, self.bound)
        x_k, width, y_k, height, d_k, d_k1 = self._bin_params(params, clamped, in_x=False)
        slope = height / width
        offset = clamped - y_k
        curvature = d_k1 + d_k - 2.0 * slope
        a = height * (slope - d_k) + offset * curvature
        b = height * d_k - offset * curvature
        c = -slope * offset
        discriminant = (b * b - 4.0 * a * c).clamp_min(0.0)
        xi = (2.0 * c) / (-b - torch.sqrt(discriminant))
        x = x_k + xi.clamp(0.0, 1.0) * width
        return torch.where(inside, x, y)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, bound={self.bound}"
