"""Flow priors p(z) for VAEs: any registered family in the density direction."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyroflows.distributions import FlowDistribution
from pyroflows.transforms.registry import flow_family, make_flow

__all__ = ["FlowPrior", "MAFPrior"]


class FlowPrior(nn.Module):
    """``p(z)``: standard normal noise through a flow of any registered family.

    A VAE's ELBO scores the posterior's samples under the prior, so what matters is the cost of
    ``log p(z)`` for any ``z``: the default family ``"maf"`` (and ``"naf"``/``"nsf"`` with
    ``direction="maf"``, or the coupling families) cost one network pass per layer; drawing from
    the prior (generating images) is then sequential in the latent dimension for the
    autoregressive ones. A fresh prior is exactly ``N(0, I)`` for families that start at the
    identity. Calling the module returns a distribution for ``pyro.sample``; inside a data
    plate it broadcasts to the batch.

    Args:
        latent_dim: the size of ``z``.
        flow: the family (default ``"maf"``).
        num_transforms: layers (default 2).
        hidden_dims: conditioner widths (default: ``pyroflows.nn.default_hidden_dims``).
        **options: passed to the family's builder (``direction="maf"`` is the default for the
            autoregressive families that take a direction).

    Example:
        >>> prior = FlowPrior(8, flow="nsf")
        >>> prior().log_prob(torch.randn(5, 8)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        latent_dim: int,
        flow: str = "maf",
        num_transforms: int = 2,
        hidden_dims: Sequence[int] | None = None,
        **options,
    ):
        super().__init__()
        if num_transforms < 1:
            raise ValueError(f"num_transforms must be at least 1, got {num_transforms}")
        family = flow_family(flow)
        if flow in ("naf", "nsf") and options.get("structure", "autoregressive") != "coupling":
            options.setdefault("direction", "maf")
        if hidden_dims is not None and flow != "planar":
            options["hidden_dims"] = list(hidden_dims)
        self.latent_dim = latent_dim
        self.flow_name = family.name
        self.flow = make_flow(flow, latent_dim, num_transforms=num_transforms, **options)
        self.register_buffer("base_loc", torch.zeros(latent_dim))

    def forward(self) -> FlowDistribution:
        base = dist.Normal(self.base_loc, torch.ones_like(self.base_loc)).to_event(1)
        return FlowDistribution(base, [self.flow])


class MAFPrior(FlowPrior):
    """The masked autoregressive flow prior (Papamakarios et al. 2017): ``log p(z)`` of any
    point costs one MADE pass per layer; sampling is sequential.

    Example:
        >>> prior = MAFPrior(8)
        >>> prior().log_prob(torch.randn(5, 8)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        latent_dim: int,
        num_transforms: int = 2,
        hidden_dims: Sequence[int] | None = None,
        **layer_kwargs,
    ):
        super().__init__(latent_dim, "maf", num_transforms, hidden_dims, **layer_kwargs)
