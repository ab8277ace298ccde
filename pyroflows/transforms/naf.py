"""``NeuralAutoregressiveFlow``: the sigmoidal autoregressive layer (Huang et al. 2018) as one
class, the preset behind the ``naf`` family."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from pyroflows.transforms.autoregressive import AutoregressiveTransform, Direction, made_for
from pyroflows.transforms.transformers import SigmoidalTransformer, sigmoidal_stage_dims

__all__ = ["NeuralAutoregressiveFlow", "sigmoidal_stage_dims"]


class NeuralAutoregressiveFlow(AutoregressiveTransform):
    r"""One NAF layer: a MADE and a DSF or DDSF transformer
    (:class:`~pyroflows.transforms.transformers.SigmoidalTransformer`).

    Each ``z_i`` is a strictly increasing function of ``u_i`` whose weights come from ``u_<i``.
    Sampling costs one MADE pass; the inverse of an external point ``D`` passes, each solving
    the monotone scalar equations by bracketed bisection. A fresh layer is close to
    ``z = initial_scale·u``.

    Example:
        >>> naf = NeuralAutoregressiveFlow(3, transformer="ddsf")
        >>> u = torch.randn(5, 3)
        >>> torch.allclose(naf.inverse_uncached(naf(u)), u, atol=1e-4)
        True
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] | None = None,
        transformer: Literal["dsf", "ddsf"] = "dsf",
        hidden_units: int = 8,
        depth: int = 2,
        context_dim: int = 0,
        activation: nn.Module | None = None,
        ordering: torch.Tensor | Sequence[int] | None = None,
        skip_connection: bool | str = "auto",
        direction: Direction = "iaf",
    ):
        sigmoidal = SigmoidalTransformer(transformer, hidden_units, depth)
        made = made_for(
            sigmoidal, input_dim, hidden_dims, ordering, context_dim, skip_connection, activation
        )
        super().__init__(made, sigmoidal, direction)
