"""The conditional names of earlier versions: every pyroflows layer takes an optional context
(``context_dim``), so these are the same classes with a context required."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from pyroflows.transforms.iaf import IAFUpdate, InverseAutoregressiveFlow
from pyroflows.transforms.layer import ConditionedLayer, FlowLayer
from pyroflows.transforms.naf import NeuralAutoregressiveFlow
from pyroflows.transforms.planar import ConditionalPlanarFlow

__all__ = [
    "ConditionalFlow",
    "ConditionalInverseAutoregressiveFlow",
    "ConditionalNeuralAutoregressiveFlow",
    "ConditionalPlanarFlow",
    "ConditionedFlow",
]

#: earlier names of :class:`FlowLayer` and :class:`ConditionedLayer`
ConditionalFlow = FlowLayer
ConditionedFlow = ConditionedLayer


def _require_context(context_dim: int) -> None:
    if context_dim < 1:
        raise ValueError(f"context_dim must be at least 1, got {context_dim}")


class ConditionalInverseAutoregressiveFlow(InverseAutoregressiveFlow):
    """An IAF layer whose MADE reads a context ``h`` beside ``u`` (Kingma et al. 2016, sec. 4).

    Example:
        >>> layer = ConditionalInverseAutoregressiveFlow(4, context_dim=6)
        >>> h, u = torch.randn(10, 6), torch.randn(10, 4)
        >>> layer.condition(h)(u).shape
        torch.Size([10, 4])
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: Sequence[int] | None = None,
        update: IAFUpdate = "affine",
        ordering: torch.Tensor | Sequence[int] | None = None,
        **kwargs,
    ):
        _require_context(context_dim)
        super().__init__(
            input_dim,
            hidden_dims,
            update=update,
            ordering=ordering,
            context_dim=context_dim,
            **kwargs,
        )


class ConditionalNeuralAutoregressiveFlow(NeuralAutoregressiveFlow):
    """A NAF layer (DSF or DDSF transformer) whose MADE reads a context ``h``.

    Example:
        >>> layer = ConditionalNeuralAutoregressiveFlow(3, context_dim=5, transformer="ddsf")
        >>> h, u = torch.randn(7, 5), torch.randn(7, 3)
        >>> torch.allclose(layer.inverse_uncached(layer.condition(h)(u), h), u, atol=1e-4)
        True
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        hidden_dims: Sequence[int] | None = None,
        transformer: Literal["dsf", "ddsf"] = "dsf",
        hidden_units: int = 8,
        depth: int = 2,
        **kwargs,
    ):
        _require_context(context_dim)
        super().__init__(
            input_dim,
            hidden_dims,
            transformer=transformer,
            hidden_units=hidden_units,
            depth=depth,
            context_dim=context_dim,
            **kwargs,
        )
