"""``AutoFlow``: an autoguide for any registered flow family that samples in one pass."""

from __future__ import annotations

from typing import Literal

import torch
from pyro.infer.autoguide.initialization import init_to_median

from pyroflows.guides.base import AutoFlowGuide
from pyroflows.transforms.registry import available_flows, flow_family, make_flow
from pyroflows.transforms.stack import FlowStack

__all__ = ["AutoFlow"]


class AutoFlow(AutoFlowGuide):
    """A normalizing-flow guide built from the flow registry: ``flow=`` any family that samples
    in one pass (``pyroflows.transforms.available_flows(one_pass_sampling=True)``).

    The posterior over the packed unconstrained latents is ``loc + scale * f(u)``,
    ``u ~ Normal(0, I)``, with ``f = make_flow(flow, D, num_transforms=..., **flow_options)``
    starting at (or near) the identity, and ``loc``, ``scale`` at the model's ``init_loc_fn``
    values and ``init_scale``. The named presets (:class:`AutoIAF`, :class:`AutoNAF`,
    :class:`AutoNSF`, ...) are this class with the family fixed.

    Args:
        model: a Pyro model with continuous latent sites.
        flow: the family name (default ``"iaf"``).
        num_transforms: layers (default: the family's).
        init_loc_fn: per-site initialization (default ``init_to_median``).
        init_scale: initial posterior scale in unconstrained space when starting from
            ``init_loc_fn`` (default 0.1).
        init: ``"laplace"`` (default): start at a Laplace approximation ``N(MAP, H⁻¹)`` found by
            L-BFGS, when its ELBO beats the ``init_loc_fn`` start's (where the search ends at
            no usable mode, at a Gaussian on its path); ``"median"``: start at the
            ``init_loc_fn`` values with ``init_scale`` (see :mod:`pyroflows.guides.start`).
        **flow_options: passed to the family's builder (``hidden_dims``, ``num_bins``, ...).

    Example:
        >>> guide = AutoFlow(model, flow="nsf", num_transforms=3, num_bins=6)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        flow: str = "iaf",
        num_transforms: int | None = None,
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        init: Literal["laplace", "median"] = "laplace",
        **flow_options,
    ):
        if flow not in available_flows():
            raise ValueError(f"unknown flow {flow!r}; registered families: {available_flows()}")
        family = flow_family(flow)
        if not family.one_pass_sampling:
            raise ValueError(
                f"flow {flow!r} samples in {family.sampling_cost}, so every SVI step would cost "
                f"D network passes; a guide needs a family that samples in one pass: "
                f"{available_flows(one_pass_sampling=True)} (for a masked autoregressive flow, "
                "use 'iaf', its sampling-direction twin)"
            )
        if num_transforms is None:
            num_transforms = family.default_num_transforms
        if not (isinstance(num_transforms, int) and num_transforms >= 1):
            raise ValueError(f"num_transforms must be at least 1, got {num_transforms!r}")
        # build a tiny flow now, so that a bad option fails here and not at the first step
        # (with the global RNG left as it was: seeded runs build the same guide as before)
        with torch.random.fork_rng(devices=[]):
            make_flow(flow, 2, num_transforms=1, **{**family.guide_defaults, **flow_options})
        self.flow_name = flow
        #: whether the family can represent several modes (fit tempers such guides)
        self.multimodal = family.multimodal
        self.num_transforms = num_transforms
        self.flow_options = {**family.guide_defaults, **flow_options}
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=init_scale, init=init)

    def settings(self) -> dict[str, object]:
        return {
            **super().settings(),
            "flow": self.flow_name,
            "num_transforms": self.num_transforms,
            **self.flow_options,
        }

    def build_flow_layers(self, latent_dim: int) -> list[FlowStack]:
        return [
            make_flow(
                self.flow_name,
                latent_dim,
                num_transforms=self.num_transforms,
                **self.flow_options,
            )
        ]
