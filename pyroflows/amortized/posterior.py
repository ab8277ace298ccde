"""Encoder-conditioned flow posteriors q(z | x) for variational autoencoders."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import ConditionalTransform
from torch import nn
from torch.nn import functional as F

from pyroflows.distributions import FlowDistribution
from pyroflows.transforms.registry import available_flows, flow_family, make_flow

__all__ = ["AmortizedFlowPosterior", "POSTERIOR_FLOWS", "check_same_device", "default_layers"]

#: planar layers are cheap and weak, but an amortized planar layer per data point is costly to
#: predict; 8 (van den Berg et al. 2018 use 16 on MNIST) rather than the guides' 16
_AMORTIZED_NUM_TRANSFORMS = {"planar": 8}


def default_layers(flow: str) -> int:
    """The default number of layers of an amortized posterior of family ``flow``."""
    if flow == "diag":
        return 0
    return _AMORTIZED_NUM_TRANSFORMS.get(flow, flow_family(flow).default_num_transforms)


#: the choices of ``flow=`` at import time (``"diag"`` and every one-pass family) and their
#: default number of layers; families registered later work too
POSTERIOR_FLOWS: dict[str, int] = {
    name: default_layers(name) for name in ["diag", *available_flows(one_pass_sampling=True)]
}


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
        flow: ``"diag"`` (no flow) or any flow family that samples in one pass
            (``pyroflows.transforms.available_flows(one_pass_sampling=True)``: ``"iaf"``,
            ``"naf"``, ``"nsf"``, ``"planar"``, ``"realnvp"``, ...); or a sequence of modules to
            use as the layers, conditional ones (Pyro's ``ConditionalTransformModule``, e.g.
            ``ConditionalAffineAutoregressive``) receiving the context and others applied as
            they are.
        num_transforms: number of flow layers (default: the family's; planar 8).
        hidden_dims: conditioner hidden widths (default ``[4 * latent_dim]`` kept in
            [64, 1024]).
        **flow_kwargs: passed to the family's builder (e.g. ``update="gated"``,
            ``transformer="ddsf"``, ``num_bins=12``).

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
            choices = ["diag", *available_flows(one_pass_sampling=True)]
            if flow in available_flows() and flow not in choices:
                raise ValueError(
                    f"flow {flow!r} samples in {flow_family(flow).sampling_cost}: a posterior "
                    f"draws at every step, so it needs a one-pass family, one of {choices}"
                )
            if flow not in choices:
                raise ValueError(
                    f"unknown flow {flow!r}; choose one of {choices} "
                    "or pass a sequence of transform modules"
                )
            self.flow_name = flow
            if num_transforms is None:
                num_transforms = default_layers(flow)
            layers = self._build_layers(flow, num_transforms, hidden_dims, flow_kwargs)
        else:
            layers = list(flow)
            self.flow_name = "custom"
            for layer in layers:
                if not isinstance(layer, nn.Module):
                    raise TypeError(f"flow layers must be nn.Modules, got {type(layer).__name__}")
        self.transforms = nn.ModuleList(layers)

    def _build_layers(self, flow, num_transforms, hidden_dims, flow_kwargs) -> list[nn.Module]:
        if flow == "diag":
            if num_transforms:
                raise ValueError("flow='diag' has no layers; num_transforms must be 0")
            return []
        if hidden_dims is not None:
            flow_kwargs = {**flow_kwargs, "hidden_dims": list(hidden_dims)}
        return [
            make_flow(
                flow,
                self.latent_dim,
                context_dim=self.feature_dim,
                num_transforms=num_transforms,
                **flow_kwargs,
            )
        ]

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
