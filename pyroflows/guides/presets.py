"""The named flow guides: :class:`AutoFlow` with the family fixed and its options spelled out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pyro.infer.autoguide.initialization import init_to_median

from pyroflows.guides.flow import AutoFlow
from pyroflows.guides.registry import register_guide

__all__ = ["AutoIAF", "AutoNAF", "AutoNICE", "AutoNSF", "AutoPlanar", "AutoRealNVP"]

Permutation = Literal["reverse", "random"]


@register_guide("iaf")
class AutoIAF(AutoFlow):
    """Inverse autoregressive flow guide (Kingma et al. 2016) over all continuous latents.

    A drop-in replacement for :class:`~pyro.infer.autoguide.AutoIAFNormal` and AutoNormal: the
    posterior is ``loc + scale * IAF_K(… IAF_1(u))`` with ``u ~ Normal(0, I)``, alternating
    autoregressive orderings, and ``loc``, ``scale`` started at the model's ``init_loc_fn``
    values and ``init_scale`` (Pyro's AutoIAFNormal starts every latent at 0 with scale 1).
    Sampling and log q of the guide's own samples cost one MADE pass per layer.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: number of IAF layers (default 2).
        hidden_dims: hidden widths of each layer's MADE (default one layer of ``3 D + 1``,
            kept in [16, 1024]).
        update: ``"affine"`` (default) or ``"gated"``, the numerically stable update of
            Kingma et al. (2016).
        permutation: ``"reverse"`` (default) or ``"random"``: the autoregressive orderings of
            consecutive layers (buffers, saved in ``state_dict()``).
        init_loc_fn: per-site initialization (default ``init_to_median``).
        init_scale: initial posterior scale in unconstrained space (default 0.1).
        skip_connection: a direct masked linear path in each MADE (default False: the guide's
            full-rank affine stage represents linear dependencies; measured, the path only
            added noise and cost).
        log_scale_bounds: the smooth bounds of each layer's log-scale (default ``(-4, 1)``).

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
        update: Literal["affine", "gated"] = "affine",
        permutation: Permutation = "reverse",
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        init: Literal["laplace", "median"] = "laplace",
        skip_connection: bool | str = False,
        log_scale_bounds: tuple[float, float] = (-4.0, 1.0),
    ):
        super().__init__(
            model, flow="iaf", num_transforms=num_transforms, init_loc_fn=init_loc_fn,
            init_scale=init_scale, init=init,
            hidden_dims=None if hidden_dims is None else list(hidden_dims),
            update=update, permutation=permutation, skip_connection=skip_connection,
            log_scale_bounds=tuple(log_scale_bounds),
        )


@register_guide("naf")
class AutoNAF(AutoFlow):
    """Neural autoregressive flow guide (Huang et al. 2018) over all continuous latents.

    Each layer transforms every coordinate by a monotone neural network (``"dsf"``: one layer of
    ``hidden_units`` sigmoids; ``"ddsf"``: ``depth`` dense sigmoidal stages) whose weights come
    from a MADE reading the earlier coordinates. Unlike affine flows, a NAF layer can bend a
    Gaussian into skewed and multimodal shapes. Started near ``Normal(init_loc, init_scale)``.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: number of NAF layers (default 2).
        transformer: ``"dsf"`` (default) or ``"ddsf"``.
        hidden_units: sigmoid units per transformer stage (default 8).
        depth: stages of a DDSF transformer (default 2; ignored for DSF).
        hidden_dims: hidden widths of each MADE (default one layer of ``3 D + 1``, in [16, 1024]).
        permutation: ``"reverse"`` (default) or ``"random"`` orderings between layers.
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
        permutation: Permutation = "reverse",
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        init: Literal["laplace", "median"] = "laplace",
    ):
        super().__init__(
            model, flow="naf", num_transforms=num_transforms, init_loc_fn=init_loc_fn,
            init_scale=init_scale, init=init, transformer=transformer, hidden_units=hidden_units,
            depth=depth, hidden_dims=None if hidden_dims is None else list(hidden_dims),
            permutation=permutation,
        )


@register_guide("planar")
class AutoPlanar(AutoFlow):
    """Planar flow guide (Rezende & Mohamed 2015) over all continuous latents.

    Layers ``f(z) = z + û tanh(wᵀz + b)``, each constrained to be invertible and started as the
    identity. Each layer bends space along one direction only, so planar flows need many
    layers: the default is 16 (each costs O(D) per sample). log q of external points (MCMC
    draws) is exact: each layer inverts by a scalar root solve.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: number of planar layers (default 16).
        init_loc_fn: per-site initialization (default ``init_to_median``).
        init_scale: initial posterior scale in unconstrained space (default 0.1).

    Example:
        >>> guide = AutoPlanar(model, num_transforms=32)  # doctest: +SKIP
    """

    def __init__(
        self, model, *, num_transforms: int = 16, init_loc_fn=init_to_median,
        init_scale: float = 0.1, init: Literal["laplace", "median"] = "laplace",
    ):
        super().__init__(
            model, flow="planar", num_transforms=num_transforms, init_loc_fn=init_loc_fn,
            init_scale=init_scale, init=init,
        )


@register_guide("realnvp")
class AutoRealNVP(AutoFlow):
    """RealNVP guide (Dinh et al. 2017): affine coupling layers with alternating halves.

    Sampling and the density of any point both cost one MLP pass per layer.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: coupling layers (default 4: each transforms half the coordinates).
        hidden_dims: hidden widths of each coupling MLP (default one layer of ``3 D + 1``).
        log_scale_bounds: the smooth bounds of each layer's log-scale (default ``(-4, 1)``).
        init_loc_fn, init_scale: as for every pyroflows guide.

    Example:
        >>> guide = AutoRealNVP(model, num_transforms=6)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        num_transforms: int = 4,
        hidden_dims: Sequence[int] | None = None,
        log_scale_bounds: tuple[float, float] = (-4.0, 1.0),
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        init: Literal["laplace", "median"] = "laplace",
    ):
        super().__init__(
            model, flow="realnvp", num_transforms=num_transforms, init_loc_fn=init_loc_fn,
            init_scale=init_scale, init=init,
            hidden_dims=None if hidden_dims is None else list(hidden_dims),
            log_scale_bounds=tuple(log_scale_bounds),
        )


@register_guide("nice")
class AutoNICE(AutoFlow):
    """NICE guide (Dinh et al. 2015): additive (volume-preserving) coupling layers and a final
    diagonal scaling. Cheap per layer; it changes volume only through the scaling.

    Example:
        >>> guide = AutoNICE(model)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        num_transforms: int = 4,
        hidden_dims: Sequence[int] | None = None,
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        init: Literal["laplace", "median"] = "laplace",
    ):
        super().__init__(
            model, flow="nice", num_transforms=num_transforms, init_loc_fn=init_loc_fn,
            init_scale=init_scale, init=init,
            hidden_dims=None if hidden_dims is None else list(hidden_dims),
        )


@register_guide("nsf")
class AutoNSF(AutoFlow):
    """Neural spline flow guide (Durkan et al. 2019): monotone rational-quadratic splines with
    linear tails, in autoregressive layers (sampling direction, one MADE pass per layer) or
    coupling layers (``structure="coupling"``).

    Splines bend one coordinate at a time into skewed and multimodal shapes; outside
    ``[-bound, bound]`` (in the guide's standardized coordinates) each layer is the identity.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: spline layers (default 2).
        num_bins: spline bins per coordinate (default 8).
        bound: half-width of the spline's interval (default 4).
        structure: ``"autoregressive"`` (default) or ``"coupling"``.
        hidden_dims: hidden widths of each conditioner (default one layer of ``3 D + 1``).
        permutation: orderings between autoregressive layers.
        init_loc_fn, init_scale: as for every pyroflows guide.

    Example:
        >>> guide = AutoNSF(model, num_bins=12)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        num_transforms: int = 2,
        num_bins: int = 8,
        bound: float = 4.0,
        structure: Literal["autoregressive", "coupling"] = "autoregressive",
        hidden_dims: Sequence[int] | None = None,
        permutation: Permutation = "reverse",
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        init: Literal["laplace", "median"] = "laplace",
    ):
        options = {"num_bins": num_bins, "bound": bound, "structure": structure}
        if structure == "autoregressive":
            options["permutation"] = permutation
        super().__init__(
            model, flow="nsf", num_transforms=num_transforms, init_loc_fn=init_loc_fn,
            init_scale=init_scale, init=init,
            hidden_dims=None if hidden_dims is None else list(hidden_dims),
            **options,
        )
