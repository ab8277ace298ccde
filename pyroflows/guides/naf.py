"""AutoNAF: a neural autoregressive flow autoguide (DSF or DDSF transformers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pyro.distributions.torch_transform import TransformModule
from pyro.infer.autoguide.initialization import init_to_median

from pyroflows.guides.base import AutoFlowGuide
from pyroflows.guides.iaf import default_iaf_hidden_dims
from pyroflows.guides.registry import register_guide
from pyroflows.transforms.naf import NeuralAutoregressiveFlow
from pyroflows.transforms.permute import interleave_permutations

__all__ = ["AutoNAF"]


@register_guide("naf")
class AutoNAF(AutoFlowGuide):
    """Neural autoregressive flow guide (Huang et al. 2018) over all continuous latents.

    Each layer transforms every coordinate by a monotone neural network (``"dsf"``: one layer of
    ``hidden_units`` sigmoids; ``"ddsf"``: ``depth`` dense sigmoidal stages) whose weights come
    from a MADE reading the earlier coordinates. Unlike affine flows, a NAF layer can bend a
    Gaussian into skewed and multimodal shapes. The posterior is
    ``loc + scale * NAF_K(... P NAF_1(u))``, started near ``Normal(init_loc, init_scale)``.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: number of NAF layers (default 2).
        transformer: ``"dsf"`` (default) or ``"ddsf"``.
        hidden_units: sigmoid units per transformer stage (default 8).
        depth: stages of a DDSF transformer (default 2; ignored for DSF).
        hidden_dims: hidden widths of each MADE (default one layer of ``3 D + 1``, in [16, 1024]).
        permutation: ``"reverse"`` (default) or ``"random"`` between layers.
        init_loc_fn: per-site initialization (default ``init_to_median``).
        init_scale: initial posterior scale in unconstrained space (default 0.1).

    Example:
        >>> guide = AutoNAF(model, transformer="ddsf")  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        num_transforms: int = 2,
        transformer: Literal["dsf", "ddsf"] = "dsf",
        hidden_units: int = 8,
        depth: int = 2,
        hidden_dims: Sequence[int] | None = None,
        permutation: Literal["reverse", "random"] = "reverse",
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
    ):
        if num_transforms < 1:
            raise ValueError(f"num_transforms must be at least 1, got {num_transforms}")
        if transformer not in ("dsf", "ddsf"):
            raise ValueError(f"transformer must be 'dsf' or 'ddsf', got {transformer!r}")
        if permutation not in ("reverse", "random"):
            raise ValueError(f"permutation must be 'reverse' or 'random', got {permutation!r}")
        self.num_transforms = num_transforms
        self.transformer = transformer
        self.hidden_units = hidden_units
        self.depth = depth
        self.hidden_dims = None if hidden_dims is None else list(hidden_dims)
        self.permutation = permutation
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=init_scale)

    def settings(self) -> dict[str, object]:
        return {
            **super().settings(),
            "num_transforms": self.num_transforms,
            "transformer": self.transformer,
            "hidden_units": self.hidden_units,
            "depth": self.depth,
            "hidden_dims": self.hidden_dims,
            "permutation": self.permutation,
        }

    def build_flow_layers(self, latent_dim: int) -> list[TransformModule]:
        hidden_dims = (
            default_iaf_hidden_dims(latent_dim) if self.hidden_dims is None else self.hidden_dims
        )
        layers = [
            NeuralAutoregressiveFlow(
                latent_dim,
                hidden_dims,
                transformer=self.transformer,
                hidden_units=self.hidden_units,
                depth=self.depth,
            )
            for _ in range(self.num_transforms)
        ]
        return interleave_permutations(layers, latent_dim, self.permutation)
