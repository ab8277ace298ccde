"""The base class of every pyroflows flow layer, and a layer bound to a context.

A layer is a bijection ``x = f(u; h)`` of vectors with an optional context ``h`` (zuko's
pattern): the same class serves a guide (no context) and an amortized posterior or conditional
density (a context per data point). It is both a Pyro ``TransformModule`` (use it directly when
it has no context) and a ``ConditionalTransformModule`` (``layer.condition(h)`` binds a context;
a layer without context returns itself, since it ignores the context).

Subclasses implement two methods, each returning the log-determinant of the *forward* map:

* ``forward_with_log_det(u, context) -> (x, log|det ∂x/∂u|)``
* ``inverse_with_log_det(x, context) -> (u, log|det ∂x/∂u| at u)``

and everything else is shared: the identity-keyed cache that lets a flow distribution score its
own samples for free (``log_abs_det_jacobian(u, x)`` of the last ``u`` passed either way), the
``Transform`` plumbing, context checks, and :attr:`initial_scale`.
"""

from __future__ import annotations

import torch
from pyro.distributions import ConditionalTransformModule, constraints
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import Transform

__all__ = ["ConditionedLayer", "FlowLayer", "check_context"]


def check_context(context: torch.Tensor | None, context_dim: int) -> None:
    """Raises a ``ValueError`` that names the problem when ``context`` does not fit."""
    if context_dim == 0:
        if context is not None:
            raise ValueError(
                "this layer was built with context_dim=0 but got a context; build it with "
                "context_dim=<size of h> to condition on h"
            )
        return
    if context is None:
        raise ValueError(
            f"this layer needs a context of size {context_dim}: call layer.condition(h) and use "
            "the transform it returns"
        )
    if context.shape[-1] != context_dim:
        raise ValueError(
            f"context has size {context.shape[-1]} in its last dimension, expected {context_dim}"
        )


class _LogDetCache:
    """Shared by layers and bound layers: forward and inverse through ``self._layer`` with
    ``self._context``, keeping ``(u, log|det ∂x/∂u|)`` of the last call either way."""

    _layer: FlowLayer
    _context: torch.Tensor | None
    _cached_log_det: tuple[torch.Tensor, torch.Tensor] | None

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        x, log_det = self._layer.forward_with_log_det(u, self._context)
        self._cached_log_det = (u, log_det)
        return x

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        u, log_det = self._layer.inverse_with_log_det(x, self._context)
        self._cached_log_det = (u, log_det)
        return u

    def log_abs_det_jacobian(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cached = self._cached_log_det
        if cached is not None and cached[0] is u:
            return cached[1]
        return self._layer.forward_with_log_det(u, self._context)[1]

    def forward_without_log_det(self, u: torch.Tensor) -> torch.Tensor:
        """The forward map alone, skipping the log-determinant where that saves work
        (:meth:`FlowDistribution.sample` uses it)."""
        return self._layer.forward_with_log_det(u, self._context, need_log_det=False)[0]


class FlowLayer(_LogDetCache, TransformModule, ConditionalTransformModule):
    """Base class of pyroflows' flow layers (see the module docstring).

    Args:
        input_dim: the size ``D`` of ``u`` and ``x``.
        context_dim: the size of the context ``h`` (0: none).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, input_dim: int, context_dim: int = 0):
        if input_dim < 1:
            raise ValueError(f"input_dim must be at least 1, got {input_dim}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be 0 (no context) or more, got {context_dim}")
        super().__init__(cache_size=1)
        self.input_dim = int(input_dim)
        self.context_dim = int(context_dim)
        self._cached_log_det = None

    # ---- what a subclass provides ------------------------------------------------------------

    def forward_with_log_det(
        self, u: torch.Tensor, context: torch.Tensor | None = None, need_log_det: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, log|det ∂x/∂u|)``; the second may be None when ``need_log_det`` is False."""
        raise NotImplementedError

    def inverse_with_log_det(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log|det ∂x/∂u| at u)`` with ``f(u) = x``."""
        raise NotImplementedError

    @property
    def initial_scale(self) -> float:
        """The factor ``c`` with ``x ≈ c·u`` for a freshly built layer (1: the identity)."""
        return 1.0

    # ---- shared ------------------------------------------------------------------------------

    @property
    def _layer(self) -> FlowLayer:
        return self

    @property
    def _context(self) -> None:
        return None

    def condition(self, context: torch.Tensor) -> Transform:
        """The layer bound to ``context`` (a layer without context ignores it: returns self)."""
        if self.context_dim == 0:
            return self
        return ConditionedLayer(self, context)

    def inverse_uncached(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """The inverse of any point (no cache involved)."""
        return self.inverse_with_log_det(x, context)[0]

    def __hash__(self):
        return TransformModule.__hash__(self)


class ConditionedLayer(_LogDetCache, Transform):
    """A :class:`FlowLayer` bound to one context: what ``layer.condition(h)`` returns.

    ``h`` has shape ``batch + (context_dim,)`` and broadcasts against the inputs, so
    ``(num_samples, batch, D)`` inputs work with a ``(batch, context_dim)`` context.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, layer: FlowLayer, context: torch.Tensor):
        check_context(context, layer.context_dim)
        super().__init__(cache_size=1)
        self.layer = self._layer = layer
        self.context = self._context = context
        self._cached_log_det = None
