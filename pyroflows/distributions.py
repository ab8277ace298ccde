"""A flow-transformed distribution that remembers log q of its own samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions import Transform

__all__ = ["FlowDistribution"]

_EMPTY = torch.Size()


class FlowDistribution(TorchDistribution):
    """``x = T_K(... T_1(u))`` with ``u`` from a base distribution over vectors.

    Like :class:`pyro.distributions.TransformedDistribution`, but ``rsample`` computes
    ``log q(x) = log p(u) - sum_k log|det J_k|`` in the same pass and keeps it, so ``log_prob`` of
    the distribution's own most recent sample costs nothing (for an inverse autoregressive flow
    this is what makes it fast to train). ``log_prob`` of any other point inverts the layers
    (sequentially, for inverse autoregressive ones). With ``validate_args`` (or Pyro's
    validation switched on), ``log_prob`` of an external point checks that it is a finite vector
    of the right shape.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyroflows.transforms import InverseAutoregressiveFlow
        >>> base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
        >>> q = FlowDistribution(base, [InverseAutoregressiveFlow(3)])
        >>> x = q.rsample((5,))
        >>> q.log_prob(x).shape
        torch.Size([5])
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        base_dist: TorchDistribution,
        transforms: Sequence[Transform],
        validate_args: bool | None = None,
        sticking_the_landing: bool = False,
    ):
        if len(base_dist.event_shape) != 1:
            raise ValueError("FlowDistribution needs a base distribution over vectors")
        self.base_dist = base_dist
        self.transforms = list(transforms)
        self.sticking_the_landing = bool(sticking_the_landing)
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> FlowDistribution:
        return FlowDistribution(
            self.base_dist.expand(batch_shape),
            self.transforms,
            validate_args=self._validate_args,
            sticking_the_landing=self.sticking_the_landing,
        )

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        u = self.base_dist.rsample(sample_shape)
        x, log_q = self._push_forward(u)
        if self.sticking_the_landing and x.requires_grad and torch.is_grad_enabled():
            score_x, solved = self._score_at_detached_parameters(u)
            # a draw whose Jacobian float64 cannot solve keeps its plain log q gradient
            log_q = torch.where(solved, _path_log_q(log_q, x, score_x), log_q)
        self._cached = (x, log_q)
        return x

    def _push_forward(
        self, u: torch.Tensor, bypass_cache: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = T_K(... T_1(u))`` and ``log q(x) = log p(u) - sum_k log|det J_k|``. With
        ``bypass_cache``, layers that offer ``forward_with_log_det`` compute through it, leaving
        their cache (which keeps the main pass's draws, for ``log_prob``) alone."""
        log_q, x = self.base_dist.log_prob(u), u
        for transform in self.transforms:
            forward = getattr(transform, "forward_with_log_det", None) if bypass_cache else None
            if forward is None:
                y = transform(x)
                log_det = transform.log_abs_det_jacobian(x, y)
            else:
                y, log_det = forward(x)
            log_q = log_q - log_det
            x = y
        return x, log_q

    def _score_at_detached_parameters(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∇_x log q_φ̄(x), solved)`` at ``x = f(u)``: the score is
        ``J⁻ᵀ ∇_u [log p(u) - log|det J(u)|]``, from one backward pass through ``D + 1`` copies
        of the draws ``u`` (copy ``i < D`` gives row ``i`` of ``J``, the last one the
        ``u``-gradient), with no gradient to the parameters; ``solved`` is False for a draw
        whose ``J`` is singular in float64, or whose score overflows ``u``'s dtype (its score
        is then 0)."""
        if torch.jit.is_tracing():
            raise RuntimeError(
                "sticking_the_landing cannot be traced by torch.jit (JitTrace_ELBO): its "
                "Jacobian comes from torch.autograd.grad inside the draw; use Trace_ELBO, or set "
                "the guide's sticking_the_landing = False"
            )
        dim = u.shape[-1]
        batch_shape = u.shape[:-1]
        copies = u.detach().expand((dim + 1,) + u.shape).clone().requires_grad_(True)
        with torch.enable_grad():
            x, log_q = self._push_forward(copies, bypass_cache=True)
            rows = torch.eye(dim, dtype=u.dtype, device=u.device)
            rows = rows.reshape((dim,) + (1,) * len(batch_shape) + (dim,)).expand(x[:dim].shape)
            x_seed = torch.cat([rows, torch.zeros_like(x[dim:])])
            log_q_seed = torch.zeros_like(log_q)
            log_q_seed[dim] = 1.0
            (gradients,) = torch.autograd.grad((x, log_q), (copies,), (x_seed, log_q_seed))
        jacobian = gradients[:dim].movedim(0, -2)  # [..., i, j] = ∂x_i/∂u_j
        score_u = gradients[dim]
        score_x, info = torch.linalg.solve_ex(
            jacobian.transpose(-1, -2).double(), score_u.double().unsqueeze(-1)
        )
        score_x = score_x.squeeze(-1).to(u.dtype)
        solved = (info == 0) & torch.isfinite(score_x).all(-1)  # not overflowed in u's dtype
        return torch.where(solved.unsqueeze(-1), score_x, torch.zeros_like(score_x)), solved

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        """Draws without gradients and without computing log q (use ``rsample`` for that)."""
        with torch.no_grad():
            x = self.base_dist.sample(sample_shape)
            for transform in self.transforms:
                skip_log_det = getattr(transform, "forward_without_log_det", None)
                x = transform(x) if skip_log_det is None else skip_log_det(x)
            return x

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log q of ``value``: free for the distribution's own most recent ``rsample`` (and, with
        ``sticking_the_landing``, with only the path gradient), by inverting the layers
        otherwise."""
        cached = self._cached
        if cached is not None and cached[0] is value:
            return cached[1]
        if self._validate_args:
            self._validate_sample(value)
        log_det = 0.0
        y = value
        for transform in reversed(self.transforms):
            x = transform.inv(y)
            log_det = log_det + transform.log_abs_det_jacobian(x, y)
            y = x
        return self.base_dist.log_prob(y) - log_det


def _path_log_q(log_q: torch.Tensor, x: torch.Tensor, score_x: torch.Tensor) -> torch.Tensor:
    """``log_q``'s value with the gradient ``score_xᵀ ∂x/∂φ`` (the path term) instead of its own:
    ``log_q`` detached plus (``score_x · x`` minus its own value)."""
    path = (score_x.detach() * x).sum(-1)
    return log_q.detach() + (path - path.detach())  # exactly log_q's value: path - path is 0
