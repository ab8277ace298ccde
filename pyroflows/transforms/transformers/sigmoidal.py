"""Sigmoidal transformers of neural autoregressive flows (Huang et al. 2018): DSF and DDSF.

Each coordinate goes through a small monotone network whose weights are the coordinate's
parameters. Every stage is increasing in its scalar input, so every intermediate derivative is
positive and ``log dy/dx`` is carried through the stages in log space (``logsumexp``,
``logsigmoid``), never as a product of small numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from pyroflows.transforms.transformers.base import Transformer

__all__ = ["SigmoidalTransformer", "sigmoidal_stage_dims"]

_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1


def _soft_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """``bound · tanh(x / bound)``: the identity near 0, smoothly kept in ``(-bound, bound)``."""
    return x if math.isinf(bound) else bound * torch.tanh(x / bound)


def _log_softplus(x: torch.Tensor) -> torch.Tensor:
    """``log softplus(x)`` without underflow for very negative ``x`` (where it tends to x)."""
    return torch.where(x < -20.0, x, torch.log(F.softplus(x).clamp_min(1e-30)))


@dataclass(frozen=True)
class _Stage:
    """One dense sigmoidal stage ``d_in -> m -> d_out`` and where its parameters sit."""

    d_in: int
    m: int
    d_out: int
    start: int

    @property
    def mixing_size(self) -> int:
        """Logits of the row-stochastic ``U`` (none for a scalar input: ``U = 1``)."""
        return self.m * self.d_in if self.d_in > 1 else 0

    @property
    def size(self) -> int:
        return 2 * self.m + self.mixing_size + self.d_out * self.m


def sigmoidal_stage_dims(kind: str, hidden_units: int, depth: int) -> list[tuple[int, int, int]]:
    """``(d_in, m, d_out)`` of each stage: DSF is one stage ``1 -> K -> 1``; DDSF stacks
    ``depth`` stages ``1 -> K -> K -> ... -> K -> 1``."""
    if kind == "dsf":
        return [(1, hidden_units, 1)]
    dims = [1] + [hidden_units] * (depth - 1) + [1]
    return [(dims[i], hidden_units, dims[i + 1]) for i in range(depth)]


class SigmoidalTransformer(Transformer):
    r"""Deep sigmoidal (``"dsf"``) or deep dense sigmoidal (``"ddsf"``) flow transformer.

    * DSF: ``y = σ⁻¹(wᵀ σ(a ⊙ x + b))`` with ``a > 0`` (softplus) and ``w`` on the simplex
      (softmax) over ``hidden_units`` sigmoids;
    * DDSF: ``depth`` stages ``h' = σ⁻¹(W σ(a ⊙ (U h) + b))`` with row-stochastic ``U`` and
      ``W``, widths ``1 -> K -> ... -> K -> 1``.

    Raw parameters of zero give ``a = 1``, uniform weights and fixed offsets ``b`` spread over
    ``[-1, 1]``, plus small fixed noise in the softmax logits so the sigmoid units start
    different: a fresh layer is close to ``y = initial_slope·x``. The log-slope ``log a`` is kept
    in ``[-max_log_slope, max_log_slope]`` per stage (a smooth tanh bound): a stage can
    sharpen or flatten by at most ``e^max_log_slope``, which keeps pre-activations and the
    output finite in float32 during aggressive optimization. The inverse is bisection.

    Example:
        >>> tau = SigmoidalTransformer("ddsf", hidden_units=4)
        >>> x = torch.linspace(-3, 3, 7).unsqueeze(-1)
        >>> y, _ = tau(x, torch.zeros(7, tau.num_params, 1))
        >>> bool((y[1:] > y[:-1]).all())  # increasing
        True
    """

    analytic_inverse = False

    def __init__(
        self,
        kind: Literal["dsf", "ddsf"] = "dsf",
        hidden_units: int = 8,
        depth: int = 2,
        max_log_slope: float = 7.0,
        max_offset: float = math.inf,
        max_logit: float = math.inf,
    ):
        if kind not in ("dsf", "ddsf"):
            raise ValueError(f"transformer must be 'dsf' or 'ddsf', got {kind!r}")
        if hidden_units < 1 or depth < 1:
            raise ValueError(
                f"hidden_units and depth must be at least 1, got {hidden_units} and {depth}"
            )
        if not max_log_slope > 0:
            raise ValueError(f"max_log_slope must be positive, got {max_log_slope}")
        start, stages = 0, []
        for d_in, m, d_out in sigmoidal_stage_dims(kind, hidden_units, depth):
            stages.append(_Stage(d_in, m, d_out, start))
            start += stages[-1].size
        self.num_params = start
        generator = torch.Generator().manual_seed(0)
        offset = torch.zeros(start)
        for stage in stages:
            m = stage.m
            offset[stage.start + m : stage.start + 2 * m] = torch.linspace(-1.0, 1.0, m)
            logits = slice(stage.start + 2 * m, stage.start + stage.size)
            offset[logits] = 0.1 * torch.randn(stage.size - 2 * m, generator=generator)
        super().__init__(offset)
        self.kind = kind
        self.hidden_units = hidden_units
        self.depth = depth if kind == "ddsf" else 1
        self.max_log_slope = float(max_log_slope)
        self.max_offset = float(max_offset)
        self.max_logit = float(max_logit)
        self._stages = stages
        with torch.no_grad():
            _, log_slope = self(torch.zeros(1, 1), torch.zeros(1, self.num_params, 1))
        self._initial_slope = float(log_slope.exp())

    @property
    def initial_slope(self) -> float:
        return self._initial_slope

    def _forward(self, x, params, need_log_slope):
        # layout (..., units, D): the coordinates stay in the last, contiguous axis and every
        # softmax and logsumexp runs over the units (axis -2), vectorized across coordinates
        h = x.unsqueeze(-2)  # (..., 1, D): the stage input
        log_jac = torch.zeros_like(h)  # log dh/dx, elementwise (every h_j increases with x)
        bound = self.max_log_slope
        for stage in self._stages:
            m, d_in, s = stage.m, stage.d_in, stage.start
            log_a = bound * torch.tanh(params[..., s : s + m, :] / bound)  # (..., m, D)
            b = _soft_bound(params[..., s + m : s + 2 * m, :], self.max_offset)
            w_start = s + 2 * m + stage.mixing_size
            log_w = F.log_softmax(
                _soft_bound(params[..., w_start : s + stage.size, :], self.max_logit).unflatten(
                    -2, (stage.d_out, m)
                ),
                dim=-2,
            )  # (..., d_out, m, D)
            if d_in == 1:  # U = 1: the scalar input feeds every unit
                mixed, log_mixed_jac = h, log_jac  # (..., 1, D), broadcast over the m units
            else:
                log_u = F.log_softmax(
                    _soft_bound(params[..., s + 2 * m : w_start, :], self.max_logit).unflatten(
                        -2, (m, d_in)
                    ),
                    dim=-2,
                )  # (..., m, d_in, D)
                mixed = (log_u.exp() * h.unsqueeze(-3)).sum(-2)  # U h, (..., m, D)
                log_mixed_jac = (
                    torch.logsumexp(log_u + log_jac.unsqueeze(-3), dim=-2)
                    if need_log_slope
                    else None
                )
            pre = torch.exp(log_a) * mixed + b
            log_sig, log_one_minus = F.logsigmoid(pre), F.logsigmoid(-pre)
            log_s = torch.logsumexp(log_w + log_sig.unsqueeze(-3), dim=-2)  # (..., d_out, D)
            log_1ms = torch.logsumexp(log_w + log_one_minus.unsqueeze(-3), dim=-2)
            h = log_s - log_1ms  # σ⁻¹(s) = log s - log(1 - s)
            if need_log_slope:
                log_pre_jac = log_a + log_mixed_jac
                log_ds = torch.logsumexp(
                    log_w + (log_sig + log_one_minus + log_pre_jac).unsqueeze(-3), dim=-2
                )
                log_jac = log_ds - log_s - log_1ms
        return h.squeeze(-2), (log_jac.squeeze(-2) if need_log_slope else None)

    def extra_repr(self) -> str:
        extra = f", depth={self.depth}" if self.kind == "ddsf" else ""
        return f"kind={self.kind!r}, hidden_units={self.hidden_units}{extra}"
