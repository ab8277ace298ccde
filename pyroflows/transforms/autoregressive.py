"""Autoregressive flow layers: a MADE conditioner and an elementwise transformer, in the
sampling (IAF) or the density (MAF) direction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from pyroflows.nn.made import MADE, default_hidden_dims
from pyroflows.transforms.layer import FlowLayer, check_context
from pyroflows.transforms.transformers.base import Transformer

__all__ = ["AutoregressiveTransform", "Direction", "made_for"]

Direction = Literal["iaf", "maf"]


def made_for(
    transformer: Transformer,
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    ordering: torch.Tensor | Sequence[int] | None = None,
    context_dim: int = 0,
    skip_connection: bool | str = "auto",
    activation: nn.Module | None = None,
    output_fan_in_cap: int | None = None,
    output_step_scale: float = 1.0,
) -> MADE:
    """A fresh MADE that emits ``transformer.num_params`` numbers per coordinate (default
    widths: :func:`pyroflows.nn.default_hidden_dims`)."""
    if hidden_dims is None:
        hidden_dims = default_hidden_dims(input_dim, context_dim)
    return MADE(
        input_dim,
        hidden_dims,
        num_params=transformer.num_params,
        ordering=ordering,
        context_dim=context_dim,
        skip_connection=skip_connection,
        activation=activation,
        output_fan_in_cap=output_fan_in_cap,
        output_step_scale=output_step_scale,
    )


class AutoregressiveTransform(FlowLayer):
    r"""An autoregressive layer ``x = f(u)`` built from a MADE conditioner and a transformer.

    Both directions rest on one map ``g``: ``g(v)_i = τ(v_i; θ_i(v_<i, h))``, where the MADE
    computes every ``θ_i`` in one pass because output ``i`` reads only the inputs before ``i``
    in its ordering. ``g`` costs one pass; ``g⁻¹`` costs ``D`` sequential passes (after pass
    ``k`` the first ``k`` coordinates in the ordering are exact), written once here for every
    transformer (closed-form inverses, or bisection for sigmoidal ones).

    * ``direction="iaf"`` (Kingma et al. 2016): ``f = g``. Sampling and log q of the layer's own
      samples cost one pass; the density of an external point costs ``D`` passes.
    * ``direction="maf"`` (Papamakarios et al. 2017): ``f = g⁻¹``. The density of any point costs
      one pass; sampling costs ``D`` passes.

    ``log|det ∂x/∂u| = ± Σ_i log τ'(·)`` (the Jacobian of ``g`` is triangular in the ordering).

    Example:
        >>> from pyroflows.transforms.transformers import AffineTransformer
        >>> layer = AutoregressiveTransform(MADE(3, [16], num_params=2), AffineTransformer())
        >>> u = torch.randn(5, 3)
        >>> torch.allclose(layer(u), u)  # a fresh layer is the identity
        True
    """

    def __init__(self, conditioner: MADE, transformer: Transformer, direction: Direction = "iaf"):
        if direction not in ("iaf", "maf"):
            raise ValueError(f"direction must be 'iaf' or 'maf', got {direction!r}")
        if conditioner.num_params != transformer.num_params:
            raise ValueError(
                f"the conditioner emits {conditioner.num_params} numbers per coordinate but the "
                f"{type(transformer).__name__} needs {transformer.num_params}"
            )
        super().__init__(conditioner.input_dim, conditioner.context_dim)
        self.conditioner = conditioner
        self.transformer = transformer
        self.direction = direction

    @property
    def made(self) -> MADE:
        """The conditioner (the name earlier versions used)."""
        return self.conditioner

    @property
    def initial_scale(self) -> float:
        slope = self.transformer.initial_slope
        return slope if self.direction == "iaf" else 1.0 / slope

    # ---- g and its inverse -------------------------------------------------------------------

    def _g(self, v, context, need_log_det: bool = True):
        """``(g(v), Σ log τ'(v))`` in one conditioner pass."""
        y, log_slope = self.transformer(v, self.conditioner(v, context), need_log_det)
        return y, (log_slope.sum(-1) if need_log_det else None)

    def _g_inverse(self, y, context):
        """``(g⁻¹(y), Σ log τ'(g⁻¹(y)))`` in ``D`` sequential conditioner passes, pass ``k``
        solving only the ``k``-th coordinate in the ordering (its parameters read only the
        coordinates already solved), then one full pass for the log slopes."""
        v = torch.zeros_like(y)
        columns = torch.arange(self.input_dim, device=y.device)
        for coordinate in self.conditioner.ordering.tolist():
            params = self.conditioner.forward_coordinate(v, coordinate, context)
            solved, _ = self.transformer.inverse(
                y[..., coordinate : coordinate + 1], params, need_log_slope=False
            )
            v = torch.where(columns == coordinate, solved, v)
        _, log_slope = self.transformer(v, self.conditioner(v, context))
        return v, log_slope.sum(-1)

    # ---- FlowLayer ---------------------------------------------------------------------------

    def forward_with_log_det(self, u, context=None, need_log_det=True):
        check_context(context, self.context_dim)
        if self.direction == "iaf":
            return self._g(u, context, need_log_det)
        x, log_det = self._g_inverse(u, context)
        return x, -log_det

    def inverse_with_log_det(self, x, context=None):
        check_context(context, self.context_dim)
        if self.direction == "iaf":
            return self._g_inverse(x, context)
        u, log_det = self._g(x, context)
        return u, -log_det

    def extra_repr(self) -> str:
        return f"direction={self.direction!r}"
