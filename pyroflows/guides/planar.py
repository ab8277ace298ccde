"""AutoPlanar: a planar-flow autoguide."""

from __future__ import annotations

from pyro.distributions.torch_transform import TransformModule
from pyro.infer.autoguide.initialization import init_to_median

from pyroflows.guides.base import AutoFlowGuide
from pyroflows.guides.registry import register_guide
from pyroflows.transforms.planar import PlanarFlow

__all__ = ["AutoPlanar"]


@register_guide("planar")
class AutoPlanar(AutoFlowGuide):
    """Planar flow guide (Rezende & Mohamed 2015) over all continuous latents of a model.

    The posterior is ``loc + scale * f_K(... f_1(u))`` with ``u ~ Normal(0, I)`` and planar layers
    ``f(z) = z + û tanh(wᵀz + b)``, each constrained to be invertible; ``loc`` and ``scale`` start
    at the model's ``init_loc_fn`` values and ``init_scale``, and every layer starts as the
    identity. Each layer bends space along one direction only, so planar flows need many layers:
    the default is 16 (each costs O(D) per sample); raise ``num_transforms`` for sharper
    posteriors. log q of external points (MCMC draws, data) is exact: each layer inverts by a
    scalar root solve.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: number of planar layers (default 16).
        init_loc_fn: per-site initialization (default ``init_to_median``).
        init_scale: initial posterior scale in unconstrained space (default 0.1).

    Example:
        >>> guide = AutoPlanar(model, num_transforms=32)  # doctest: +SKIP
        >>> result = pyroflows.fit(model, guide, data)
    """

    def __init__(
        self,
        model,
        *,
        num_transforms: int = 16,
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
    ):
        if num_transforms < 1:
            raise ValueError(f"num_transforms must be at least 1, got {num_transforms}")
        self.num_transforms = num_transforms
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=init_scale)

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "num_transforms": self.num_transforms}

    def build_flow_layers(self, latent_dim: int) -> list[TransformModule]:
        return [PlanarFlow(latent_dim) for _ in range(self.num_transforms)]
