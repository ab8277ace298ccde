"""``InverseAutoregressiveFlow``: the affine (or gated) autoregressive layer as one class, the
preset behind the ``iaf`` and ``maf`` families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from pyroflows.transforms.autoregressive import AutoregressiveTransform, Direction, made_for
from pyroflows.transforms.transformers import affine_update

__all__ = ["IAFUpdate", "InverseAutoregressiveFlow"]

IAFUpdate = Literal["affine", "gated"]


class InverseAutoregressiveFlow(AutoregressiveTransform):
    r"""One IAF layer (Kingma et al. 2016): a MADE and an affine or gated transformer.

    With ``(m, s)`` from the MADE (so ``m_i, s_i`` depend on ``u_<i`` only):

    * ``"affine"``: ``x = u·exp(l) + m`` with ``l`` smoothly bounded in ``log_scale_bounds``
      (:class:`~pyroflows.transforms.transformers.AffineTransformer`); a fresh layer is the
      identity;
    * ``"gated"`` (eq. 14): ``x = g·u + (1 - g)·m``, ``g = σ(s + gate_bias)``; a fresh layer is
      ``σ(gate_bias)·u``.

    Sampling costs one MADE pass; the inverse of an external point ``D`` passes. ``.inv`` of this
    layer is a masked autoregressive flow; ``direction="maf"`` builds that directly.

    Example:
        >>> iaf = InverseAutoregressiveFlow(4, hidden_dims=[16])
        >>> u = torch.randn(10, 4)
        >>> torch.allclose(iaf.inverse_uncached(iaf(u)), u, atol=1e-5)
        True
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] | None = None,
        update: IAFUpdate = "affine",
        ordering: torch.Tensor | Sequence[int] | None = None,
        context_dim: int = 0,
        gate_bias: float = 2.0,
        log_scale_bounds: tuple[float, float] = (-4.0, 1.0),
        skip_connection: bool | str = "auto",
        activation: nn.Module | None = None,
        direction: Direction = "iaf",
    ):
        transformer = affine_update(update, log_scale_bounds, gate_bias)
        made = made_for(
            transformer, input_dim, hidden_dims, ordering, context_dim, skip_connection, activation
        )
        super().__init__(made, transformer, direction)
        self.update = update
