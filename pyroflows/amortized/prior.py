"""A masked autoregressive flow prior p(z) for VAEs (the density direction of IAF layers)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyroflows.distributions import FlowDistribution
from pyroflows.transforms.iaf import InverseAutoregressiveFlow
from pyroflows.transforms.permute import interleave_permutations

__all__ = ["MAFPrior"]


class MAFPrior(nn.Module):
    """``p(z)``: standard normal noise through masked autoregressive flow (MAF) layers.

    Each MAF layer is the inverse of an :class:`~pyroflows.transforms.InverseAutoregressiveFlow`
    layer, so ``log p(z)`` of any point (the posterior's samples, in a VAE's ELBO) costs one MADE
    pass per layer, while drawing from the prior (generating images) is sequential in the latent
    dimension. A fresh prior is exactly ``N(0, I)``. Calling the module returns a distribution for
    ``pyro.sample``; inside a data plate it broadcasts to the batch.

    Example:
        >>> import pyro
        >>> prior = MAFPrior(8)
        >>> z = torch.randn(5, 8)
        >>> prior().log_prob(z).shape
        torch.Size([5])
    """

    def __init__(
        self,
        latent_dim: int,
        num_transforms: int = 2,
        hidden_dims: Sequence[int] | None = None,
        **layer_kwargs,
    ):
        super().__init__()
        if num_transforms < 1:
            raise ValueError(f"num_transforms must be at least 1, got {num_transforms}")
        if hidden_dims is None:
            hidden_dims = [max(4 * latent_dim, 64)]
        self.latent_dim = latent_dim
        layers = [
            InverseAutoregressiveFlow(latent_dim, hidden_dims, **layer_kwargs)
            for _ in range(num_transforms)
        ]
        self.layers = nn.ModuleList(interleave_permutations(layers, latent_dim, "reverse"))
        self.register_buffer("base_loc", torch.zeros(latent_dim))

    def forward(self) -> FlowDistribution:
        base = dist.Normal(self.base_loc, torch.ones_like(self.base_loc)).to_event(1)
        # the density direction: z = inv(L_1)(... inv(L_K)(u)); log p(z) runs each L_k forward
        return FlowDistribution(base, [layer.inv for layer in reversed(self.layers)])
