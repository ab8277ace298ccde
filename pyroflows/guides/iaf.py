"""AutoIAF: an inverse autoregressive flow autoguide."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pyro.distributions.torch_transform import TransformModule
from pyro.infer.autoguide.initialization import init_to_median

from pyroflows.guides.base import AutoFlowGuide
from pyroflows.guides.registry import register_guide
from pyroflows.transforms.iaf import IAFUpdate, InverseAutoregressiveFlow
from pyroflows.transforms.permute import interleave_permutations

__all__ = ["AutoIAF", "default_iaf_hidden_dims"]


def default_iaf_hidden_dims(latent_dim: int) -> list[int]:
    """One hidden layer of ``3 D + 1`` units (Pyro's AutoIAFNormal default), kept in [16, 1024]."""
    return [min(max(3 * latent_dim + 1, 16), 1024)]


@register_guide("iaf")
class AutoIAF(AutoFlowGuide):
    """Inverse autoregressive flow guide over all continuous latents of a model.

    A drop-in replacement for :class:`~pyro.infer.autoguide.AutoIAFNormal` and AutoNormal: the
    posterior is ``loc + scale * IAF_K(... P IAF_1(u))`` with ``u ~ Normal(0, I)``, fixed
    permutations ``P`` between layers, and ``loc``, ``scale`` started at the model's
    ``init_loc_fn`` values and ``init_scale`` (Pyro's AutoIAFNormal starts every latent at 0
    with scale 1). Sampling and log q of the guide's own samples cost one MADE pass per layer.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: number of IAF layers (default 2).
        hidden_dims: hidden widths of each layer's MADE (default one layer of ``3 D + 1``).
        update: ``"affine"`` (default) or ``"gated"``, the numerically stable update of
            Kingma et al. (2016).
        permutation: ``"reverse"`` (default) or ``"random"``, the fixed permutation between
            layers; it is a buffer, saved in ``state_dict()``.
        init_loc_fn: per-site initialization (default ``init_to_median``).
        init_scale: initial posterior scale in unconstrained space (default 0.1).
        skip_connection: give each MADE a direct masked linear path (default True), so
            Gaussian dependencies are represented exactly.

    Example:
        >>> guide = AutoIAF(model)  # doctest: +SKIP
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    """

    def __init__(
        self,
        model,
        *,
        num_transforms: int = 2,
        hidden_dims: Sequence[int] | None = None,
        update: IAFUpdate = "affine",
        permutation: Literal["reverse", "random"] = "reverse",
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        skip_connection: bool = True,
    ):
        if num_transforms < 1:
            raise ValueError(f"num_transforms must be at least 1, got {num_transforms}")
        if update not in ("affine", "gated"):
            raise ValueError(f"update must be 'affine' or 'gated', got {update!r}")
        if permutation not in ("reverse", "random"):
            raise ValueError(f"permutation must be 'reverse' or 'random', got {permutation!r}")
        self.num_transforms = num_transforms
        self.hidden_dims = None if hidden_dims is None else list(hidden_dims)
        self.update = update
        self.permutation = permutation
        self.skip_connection = skip_connection
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=init_scale)

    def settings(self) -> dict[str, object]:
        return {
            **super().settings(),
            "num_transforms": self.num_transforms,
            "hidden_dims": self.hidden_dims,
            "update": self.update,
            "permutation": self.permutation,
        }

    def build_flow_layers(self, latent_dim: int) -> list[TransformModule]:
        hidden_dims = (
            default_iaf_hidden_dims(latent_dim) if self.hidden_dims is None else self.hidden_dims
        )
        layers = [
            InverseAutoregressiveFlow(
                latent_dim, hidden_dims, update=self.update, skip_connection=self.skip_connection
            )
            for _ in range(self.num_transforms)
        ]
        return interleave_permutations(layers, latent_dim, self.permutation)
