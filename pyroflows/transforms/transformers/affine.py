"""Affine-type transformers: the bounded affine update (IAF, MAF, RealNVP), Kingma's gated
update, and the additive update (NICE)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from pyroflows.transforms.transformers.base import Transformer

__all__ = ["AdditiveTransformer", "AffineTransformer", "GatedTransformer", "affine_update"]


class AffineTransformer(Transformer):
    r"""``y = x·exp(l) + m`` with a smoothly bounded log-scale.

    From raw parameters ``(m, s)``: ``l = a + (b - a)·σ(s - log(b / -a))`` for bounds
    ``(a, b) = log_scale_bounds`` with ``a < 0 < b``, so ``l`` stays in ``(a, b)`` and ``s = 0``
    gives ``l = 0`` (the identity). ``log dy/dx = l``; the inverse is ``(y - m)·exp(-l)``. The
    bounds cap what one layer can stretch (``e^b``) or shrink (``e^a``): stacked layers multiply.

    Example:
        >>> tau = AffineTransformer(log_scale_bounds=(-5.0, 3.0))
        >>> raw = torch.tensor([[1.0], [100.0]])  # shift 1, a huge raw scale
        >>> y, l = tau(torch.tensor([2.0]), raw)
        >>> round(float(l), 4)  # capped at the upper bound
        3.0
    """

    num_params = 2

    def __init__(self, log_scale_bounds: tuple[float, float] = (-4.0, 1.0)):
        low, high = (float(b) for b in log_scale_bounds)
        if not low < 0.0 < high:
            raise ValueError(
                f"log_scale_bounds must be (low, high) with low < 0 < high, got {log_scale_bounds}"
            )
        super().__init__()
        self.log_scale_bounds = (low, high)
        self._width = high - low
        self._centre = math.log(high / -low)  # σ(-centre) = -low / width gives l = 0

    def log_scale(self, raw_scale: torch.Tensor) -> torch.Tensor:
        return self.log_scale_bounds[0] + self._width * torch.sigmoid(raw_scale - self._centre)

    def _forward(self, x, params, need_log_slope):
        shift, raw_scale = params.unbind(-2)
        log_scale = self.log_scale(raw_scale)
        return x * torch.exp(log_scale) + shift, log_scale

    def _inverse(self, y, params):
        shift, raw_scale = params.unbind(-2)
        return (y - shift) * torch.exp(-self.log_scale(raw_scale))

    def extra_repr(self) -> str:
        return f"log_scale_bounds={self.log_scale_bounds}"


class GatedTransformer(Transformer):
    r"""Kingma et al. (2016), eq. 14: ``g = σ(s + gate_bias)``, ``y = g·x + (1 - g)·m``.

    ``log dy/dx = log σ(s + gate_bias)`` (computed with ``logsigmoid``), always below 0: each
    layer contracts, which is what makes the update numerically stable. A fresh layer is
    ``y = σ(gate_bias)·x`` (:attr:`initial_slope`).

    Example:
        >>> tau = GatedTransformer(gate_bias=2.0)
        >>> round(tau.initial_slope, 4)
        0.8808
    """

    num_params = 2

    def __init__(self, gate_bias: float = 2.0):
        super().__init__()
        self.gate_bias = float(gate_bias)

    def _forward(self, x, params, need_log_slope):
        shift, raw_gate = params.unbind(-2)
        log_gate = F.logsigmoid(raw_gate + self.gate_bias)
        gate = torch.exp(log_gate)
        return gate * x + (1.0 - gate) * shift, log_gate

    def _inverse(self, y, params):
        shift, raw_gate = params.unbind(-2)
        gate = torch.sigmoid(raw_gate + self.gate_bias)
        return (y - (1.0 - gate) * shift) / gate

    @property
    def initial_slope(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.gate_bias))

    def extra_repr(self) -> str:
        return f"gate_bias={self.gate_bias}"


class AdditiveTransformer(Transformer):
    """``y = x + m``: volume preserving (``log dy/dx = 0``), the coupling of NICE (Dinh et al.
    2015).

    Example:
        >>> y, log_slope = AdditiveTransformer()(torch.zeros(2), torch.ones(1, 2))
        >>> y.tolist(), log_slope.tolist()
        ([1.0, 1.0], [0.0, 0.0])
    """

    num_params = 1

    def _forward(self, x, params, need_log_slope):
        shift = params.squeeze(-2)
        y = x + shift
        return y, (torch.zeros_like(y) if need_log_slope else None)

    def _inverse(self, y, params):
        return y - params.squeeze(-2)


def affine_update(
    update: str = "affine", log_scale_bounds: tuple[float, float] = (-4.0, 1.0), gate_bias=2.0
) -> Transformer:
    """A fresh transformer of an IAF or MAF layer: ``update="affine"`` (an
    :class:`AffineTransformer` with ``log_scale_bounds``) or ``"gated"`` (a
    :class:`GatedTransformer` with ``gate_bias``).

    Example:
        >>> affine_update("gated", gate_bias=3.0)
        GatedTransformer(gate_bias=3.0)
    """
    if update == "affine":
        return AffineTransformer(log_scale_bounds)
    if update == "gated":
        return GatedTransformer(gate_bias)
    raise ValueError(f"update must be 'affine' or 'gated', got {update!r}")
