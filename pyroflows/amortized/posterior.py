"""Encoder-conditioned flow posteriors q(z | x) for variational autoencoders."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import ConditionalTransform
from torch import nn
from torch.nn import functional as F

from pyroflows.distributions import FlowDistribution
from pyroflows.transforms.conditional import (
    ConditionalInverseAutoregressiveFlow,
    ConditionalNeuralAutoregressiveFlow,
    ConditionalPlanarFlow,
)
from pyroflows.transforms.permute import interleave_permutations

__all__ = ["AmortizedFlowPosterior", "POSTERIOR_FLOWS", "check_same_device"]

#: the built-in choices of ``flow=`` and their default number of layers
POSTERIOR_FLOWS: dict[str, int] = {"diag": 0, "planar": 8, "iaf": 2, "naf": 2}


def check_same_device(x: torch.Tensor, module: nn.Module, what: str) -> None:
    """Raises a ``ValueError`` naming both devices when ``x`` is not where ``module`` lives."""
    parameter = next(module.parameters(), None)
    if parameter is not None and x.device != parameter.device:
        raise ValueError(
            f"{what} is on {x.device} but the module's parameters are on {parameter.device}; "
            f"move one of them, e.g. x.to({str(parameter.device)!r})"
        )


class AmortizedFlowPosterior(nn.Module):
    """``q(z | x)``: a diagonal Gaussian from an encoder, pushed through conditional flow layers.

    The encoder maps a batch ``x`` to features ``f`` of size ``feature_dim``; linear heads give the
    base ``N(loc(f), scale(f))`` and the flow layers read ``h = f`` as their context (every MADE of
    an IAF or NAF layer, the ``u, w, b`` of a planar layer). Calling the module returns a
    :class:`~pyroflows.distributions.FlowDistribution` with batch shape ``x.shape[:-1]``; its
    ``rsample`` computes log q in the same pass, so scoring its own samples (what ``Trace_ELBO``
    does) costs nothing extra.

    Args:
        encoder: a module from data to features, ``(..., *data) -> (..., feature_dim)``.
        feature_dim: the encoder's output size.
        latent_dim: the size of ``z``.
        flow: ``"diag"`` (no flow), ``"planar"``, ``"iaf"`` or ``"naf"``; or a sequence of
            modules to use as the layers, conditional ones (Pyro's
            ``ConditionalTransformModule``, e.g. ``ConditionalAffineAutoregressive``) receiving
            the context and others applied as they are.
        num_transforms: number of flow layers (defaults: planar 8, IAF 2, NAF 2).
        hidden_dims: MADE hidden widths for IAF and NAF (default ``[max(4 * latent_dim, 64)]``).
        **flow_kwargs: passed to each layer (e.g. ``update="gated"``, ``transformer="ddsf"``).

    Example:
        >>> import pyro
        >>> encoder = nn.Sequential(nn.Linear(784, 128), nn.ELU())
        >>> posterior = AmortizedFlowPosterior(encoder, 128, latent_dim=16, flow="iaf")
        >>> def guide(x):
        ...     pyro.module("posterior", posterior)
        ...     with pyro.plate("data", x.shape[0]):
        ...         return pyro.sample("z", posterior(x))
        >>> guide(torch.rand(5, 784).bernoulli()).shape
        torch.Size([5, 16])
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        latent_dim: int,
        flow: str | Sequence[nn.Module] = "iaf",
        num_transforms: int | None = None,
        hidden_dims: Sequence[int] | None = None,
        min_scale: float = 1e-4,
        **flow_kwargs,
    ):
        super().__init__()
        if feature_dim < 1 or latent_dim < 1:
            raise ValueError("feature_dim and latent_dim must be at least 1")
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.latent_dim = latent_dim
        self.min_scale = float(min_scale)
        self.loc_head = nn.Linear(feature_dim, latent_dim)
        self.scale_head = nn.Linear(feature_dim, latent_dim)
        if isinstance(flow, str):
            if flow not in POSTERIOR_FLOWS:
                raise ValueError(
                    f"unknown flow {flow!r}; choose one of {sorted(POSTERIOR_FLOWS)} "
                    "or pass a sequence of transform modules"
                )
            self.flow_name = flow
            if num_transforms is None:
                num_transforms = POSTERIOR_FLOWS[flow]
            layers = self._build_layers(flow, num_transforms, hidden_dims, flow_kwargs)
        else:
            layers = list(flow)
            self.flow_name = "custom"
            for layer in layers:
                if not isinstance(layer, nn.Module):
                    raise TypeError(f"flow layers must be nn.Modules, got {type(layer).__name__}")
        self.transforms = nn.ModuleList(layers)

    def _build_layers(self, flow, num_transforms, hidden_dims, flow_kwargs) -> list[nn.Module]:
        D, C = self.latent_dim, self.feature_dim
        if flow == "diag":
            if num_transforms:
                raise ValueError("flow='diag' has no layers; num_transforms must be 0")
            return []
        if num_transforms < 1:
            raise ValueError(f"num_transforms must be at least 1 for flow={flow!r}")
        if flow == "planar":
            return [ConditionalPlanarFlow(D, C, **flow_kwargs) for _ in range(num_transforms)]
        if hidden_dims is None:
            hidden_dims = [max(4 * D, 64)]
        layer_class = (
            ConditionalInverseAutoregressiveFlow if flow == "iaf"
            else ConditionalNeuralAutoregressiveFlow
        )
        layers = [layer_class(D, C, hidden_dims, **flow_kwargs) for _ in range(num_transforms)]
        return interleave_permutations(layers, D, "reverse")

    def forward(self, x: torch.Tensor) -> FlowDistribution:
        check_same_device(x, self, "the batch x")
        features = self.encoder(x)
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"the encoder returned features of size {features.shape[-1]}, "
                f"but the posterior was built with feature_dim={self.feature_dim}"
            )
        loc = self.loc_head(features)
        scale = F.softplus(self.scale_head(features)) + self.min_scale
        transforms = [
            layer.condition(features) if isinstance(layer, ConditionalTransform) else layer
            for layer in self.transforms
        ]
        return FlowDistribution(dist.Normal(loc, scale).to_event(1), transforms)
