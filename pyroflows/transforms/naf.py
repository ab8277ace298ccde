"""Neural autoregressive flow (Huang et al. 2018): DSF and DDSF transformers on a MADE.

Each output ``z_i`` is a strictly increasing scalar function of ``u_i`` (the *transformer*) whose
pseudo-parameters come from a MADE reading ``u_<i`` (the *conditioner*). Every stage of the
transformer is increasing in its scalar input, so all intermediate derivatives are positive and
log|dz_i/du_i| is carried through the stages in log space (logsumexp, logsigmoid), never as a
product of small numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.nn import functional as F

from pyroflows.nn.made import MADE

__all__ = ["NeuralAutoregressiveFlow", "sigmoidal_stage_dims"]

_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1


@dataclass(frozen=True)
class _Stage:
    """One dense sigmoidal stage ``d_in -> m -> d_out`` and where its pseudo-parameters sit."""

    d_in: int
    m: int
    d_out: int
    start: int

    @property
    def size(self) -> int:
        return 2 * self.m + self.m * self.d_in + self.d_out * self.m


def sigmoidal_stage_dims(kind: str, hidden_units: int, depth: int) -> list[tuple[int, int, int]]:
    """``(d_in, m, d_out)`` of each stage: DSF is one stage ``1 -> K -> 1``; DDSF stacks
    ``depth`` stages ``1 -> K -> K -> ... -> K -> 1``."""
    if kind == "dsf":
        return [(1, hidden_units, 1)]
    dims = [1] + [hidden_units] * (depth - 1) + [1]
    return [(dims[i], hidden_units, dims[i + 1]) for i in range(depth)]


class NeuralAutoregressiveFlow(TransformModule):
    r"""One NAF layer in the sampling direction ``u -> z`` (like IAF), a ``TransformModule``.

    Transformers (``transformer=``):

    * ``"dsf"``, deep sigmoidal flow: ``z = σ⁻¹(wᵀ σ(a ⊙ u + b))`` with ``a > 0`` (softplus) and
      ``w`` on the simplex (softmax), ``hidden_units`` sigmoids;
    * ``"ddsf"``, deep dense sigmoidal flow: ``depth`` stages
      ``h' = σ⁻¹(W σ(a ⊙ (U h) + b))`` with row-stochastic ``U`` and ``W``, widths
      ``1 -> K -> ... -> K -> 1`` (Pyro's ``NeuralAutoregressive`` offers DSF only).

    Sampling costs one MADE pass. The inverse of the layer's own output comes from the cache;
    the inverse of any other point takes ``D`` sequential MADE passes, each solving the
    monotone scalar equations by bracketed bisection.

    A fresh layer is close to the identity: zero MADE outputs give ``a = 1``, uniform weights and
    fixed, spread offsets ``b`` (which also break the symmetry between sigmoid units); its
    slope at 0 is :attr:`initial_scale`.

    Example:
        >>> naf = NeuralAutoregressiveFlow(3, transformer="ddsf")
        >>> u = torch.randn(5, 3)
        >>> torch.allclose(naf.inverse_uncached(naf(u)), u, atol=1e-4)
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
        transformer: Literal["dsf", "ddsf"] = "dsf",
        hidden_units: int = 8,
        depth: int = 2,
        context_dim: int = 0,
        activation: nn.Module | None = None,
    ):
        super().__init__(cache_size=1)
        if transformer not in ("dsf", "ddsf"):
            raise ValueError(f"transformer must be 'dsf' or 'ddsf', got {transformer!r}")
        if hidden_units < 1 or depth < 1:
            raise ValueError("hidden_units and depth must be at least 1")
        self.input_dim = input_dim
        self.transformer = transformer
        start, stages = 0, []
        for d_in, m, d_out in sigmoidal_stage_dims(transformer, hidden_units, depth):
            stages.append(_Stage(d_in, m, d_out, start))
            start += stages[-1].size
        self._stages = stages
        self.num_pseudo_params = start
        if hidden_dims is None:
            hidden_dims = [max(3 * input_dim + 1, 16)]
        self.made = MADE(
            input_dim,
            hidden_dims,
            num_params=self.num_pseudo_params,
            context_dim=context_dim,
            activation=activation,
        )
        # offsets added to the MADE output: a = 1, b spread over [-1, 1], small fixed noise
        # in the softmax logits so that the sigmoid units start different
        generator = torch.Generator().manual_seed(0)
        offset = torch.zeros(self.num_pseudo_params)
        for stage in stages:
            m = stage.m
            offset[stage.start : stage.start + m] = _SOFTPLUS_ONE
            offset[stage.start + m : stage.start + 2 * m] = torch.linspace(-1.0, 1.0, m)
            logits = slice(stage.start + 2 * m, stage.start + stage.size)
            offset[logits] = 0.1 * torch.randn(stage.size - 2 * m, generator=generator)
        self.register_buffer("pseudo_param_offset", offset.unsqueeze(-1))
        self._cached_log_det: tuple[torch.Tensor, torch.Tensor] | None = None
        with torch.no_grad():
            zero = torch.zeros(1, input_dim)
            zero_context = torch.zeros(1, context_dim) if context_dim > 0 else None
            _, log_slope = self._transform(zero, self._pseudo_params(zero, zero_context))
        self.initial_scale = float(log_slope.mean().exp())

    # ---- the transformer -------------------------------------------------------------------

    def _pseudo_params(self, u: torch.Tensor, context: torch.Tensor | None = None):
        """MADE output plus offsets, shape ``u.shape[:-1] + (num_pseudo_params, D)``."""
        return self.made(u, context) + self.pseudo_param_offset

    def _transform(self, x: torch.Tensor, params: torch.Tensor):
        """Applies every dimension's transformer to ``x`` (shape ``(..., D)``); returns the
        output and ``log dz_i/dx_i``, both ``(..., D)``."""
        params = params.movedim(-1, -2)  # (..., D, P)
        h = x.unsqueeze(-1)  # (..., D, 1): the stage input
        log_jac = torch.zeros_like(h)  # log dh/dx, elementwise (every h_j increases with x)
        for stage in self._stages:
            m, d_in, d_out, s = stage.m, stage.d_in, stage.d_out, stage.start
            a = F.softplus(params[..., s : s + m])
            b = params[..., s + m : s + 2 * m]
            log_u = F.log_softmax(
                params[..., s + 2 * m : s + 2 * m + m * d_in].unflatten(-1, (m, d_in)), dim=-1
            )
            log_w = F.log_softmax(
                params[..., s + 2 * m + m * d_in : s + stage.size].unflatten(-1, (d_out, m)),
                dim=-1,
            )
            mixed = (log_u.exp() * h.unsqueeze(-2)).sum(-1)  # U h, (..., D, m)
            pre = a * mixed + b
            log_pre_jac = torch.log(a) + torch.logsumexp(log_u + log_jac.unsqueeze(-2), dim=-1)
            log_sig, log_one_minus = F.logsigmoid(pre), F.logsigmoid(-pre)
            log_s = torch.logsumexp(log_w + log_sig.unsqueeze(-2), dim=-1)  # (..., D, d_out)
            log_1ms = torch.logsumexp(log_w + log_one_minus.unsqueeze(-2), dim=-1)
            h = log_s - log_1ms  # σ⁻¹(s) = log s - log(1 - s)
            log_ds = torch.logsumexp(
                log_w + (log_sig + log_one_minus + log_pre_jac).unsqueeze(-2), dim=-1
            )
            log_jac = log_ds - log_s - log_1ms
        return h.squeeze(-1), log_jac.squeeze(-1)

    # ---- Transform interface ---------------------------------------------------------------

    def _forward_with_log_det(
        self, u: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_jac = self._transform(u, self._pseudo_params(u, context))
        return z, log_jac.sum(-1)

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        z, log_det = self._forward_with_log_det(u)
        self._cached_log_det = (u, log_det)
        return z

    def log_abs_det_jacobian(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cached = self._cached_log_det
        if cached is not None and cached[0] is u:
            return cached[1]
        return self._transform(u, self._pseudo_params(u))[1].sum(-1)

    def _inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.inverse_uncached(z)

    def inverse_uncached(
        self, z: torch.Tensor, context: torch.Tensor | None = None, iterations: int | None = None
    ) -> torch.Tensor:
        """Exact inverse of any point: ``D`` MADE passes, each a vectorized bisection."""
        if iterations is None:
            iterations = 64 if z.dtype == torch.float64 else 40
        u = torch.zeros_like(z)
        with torch.no_grad():
            for _ in range(self.input_dim):
                params = self._pseudo_params(u, context)
                u = self._solve(z, params, iterations)
        # one Newton step from the root gives the gradient of the implicit function
        params = self._pseudo_params(u, context)
        value, log_jac = self._transform(u, params)
        return u - (value - z) * torch.exp(-log_jac)

    def _solve(self, z: torch.Tensor, params: torch.Tensor, iterations: int) -> torch.Tensor:
        """Solves ``transform(x) = z`` per dimension, bracketing the root first."""
        low = torch.full_like(z, -1.0)
        high = torch.full_like(z, 1.0)
        for _ in range(64):  # widen the bracket until it holds the root
            too_high = self._transform(low, params)[0] > z
            too_low = self._transform(high, params)[0] < z
            if not bool(too_high.any() or too_low.any()):
                break
            low = torch.where(too_high, 2.0 * low, low)
            high = torch.where(too_low, 2.0 * high, high)
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            above = self._transform(mid, params)[0] > z
            high = torch.where(above, mid, high)
            low = torch.where(above, low, mid)
        return 0.5 * (low + high)
