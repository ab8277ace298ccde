"""The named flow guides: :class:`AutoFlow` with the family fixed and its options spelled out."""

from __future__ import annotations

import inspect
from typing import ClassVar

from pyro.infer.autoguide.initialization import init_to_median

from pyroflows.guides.flow import AutoFlow
from pyroflows.guides.registry import register_guide
from pyroflows.transforms.registry import NSF_GUIDE_BOUND, NSF_GUIDE_NUM_BINS

__all__ = ["AutoIAF", "AutoNAF", "AutoNICE", "AutoNSF", "AutoPlanar", "AutoRealNVP"]

#: the keywords of every guide's start (see :class:`AutoFlow`), with their defaults
_START = {"init_loc_fn": init_to_median, "init_scale": 0.1, "init": "laplace"}


class _Preset(AutoFlow):
    """:class:`AutoFlow` for the flow family :attr:`family`, taking exactly the keywords in
    :attr:`options` (with their defaults) and those of the start.

    Every keyword is passed on to the family's builder in the order of :attr:`options`, so the
    guide's ``settings()`` list each one; sequences are stored as lists (``hidden_dims``) and
    tuples (``log_scale_bounds``).
    """

    #: the registered flow family (``pyroflows.transforms.available_flows()``)
    family: ClassVar[str]
    #: the preset's flow keywords and their defaults (``num_transforms`` first)
    options: ClassVar[dict[str, object]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):  # a subclass with its own __init__: inspect reads that
            cls.__signature__ = None
            return
        keyword = inspect.Parameter.KEYWORD_ONLY
        parameters = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        parameters += [
            inspect.Parameter(name, keyword, default=default)
            for name, default in {**cls.options, **_START}.items()
        ]
        cls.__signature__ = inspect.Signature(parameters)  # what help() and inspect show

    def __init__(self, model, **keywords):
        for name in keywords:
            if name not in self.options and name not in _START:
                raise TypeError(
                    f"{type(self).__name__}.__init__() got an unexpected keyword argument {name!r}"
                )
        options = {name: keywords.get(name, default) for name, default in self.options.items()}
        start = {name: keywords.get(name, default) for name, default in _START.items()}
        num_transforms = options.pop("num_transforms")
        if options.get("hidden_dims") is not None:
            options["hidden_dims"] = list(options["hidden_dims"])
        if "log_scale_bounds" in options:
            options["log_scale_bounds"] = tuple(options["log_scale_bounds"])
        super().__init__(
            model,
            flow=self.family,
            num_transforms=num_transforms,
            **start,
            **self._flow_options(options),
        )

    def _flow_options(self, options: dict[str, object]) -> dict[str, object]:
        """The options passed to the family's builder (a preset may drop those that do not
        apply)."""
        return options


@register_guide("iaf")
class AutoIAF(_Preset):
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

    family = "iaf"
    options = {
        "num_transforms": 2,
        "hidden_dims": None,
        "update": "affine",
        "permutation": "reverse",
        "skip_connection": False,
        "log_scale_bounds": (-4.0, 1.0),
    }


@register_guide("naf")
class AutoNAF(_Preset):
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

    family = "naf"
    options = {
        "num_transforms": 2,
        "transformer": "dsf",
        "hidden_units": 8,
        "depth": 2,
        "hidden_dims": None,
        "permutation": "reverse",
    }


@register_guide("planar")
class AutoPlanar(_Preset):
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

    family = "planar"
    options = {"num_transforms": 16}


@register_guide("realnvp")
class AutoRealNVP(_Preset):
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

    family = "realnvp"
    options = {"num_transforms": 4, "hidden_dims": None, "log_scale_bounds": (-4.0, 1.0)}


@register_guide("nice")
class AutoNICE(_Preset):
    """NICE guide (Dinh et al. 2015): additive (volume-preserving) coupling layers and a final
    diagonal scaling. Cheap per layer; it changes volume only through the scaling.

    Example:
        >>> guide = AutoNICE(model)  # doctest: +SKIP
    """

    family = "nice"
    options = {"num_transforms": 4, "hidden_dims": None}


@register_guide("nsf")
class AutoNSF(_Preset):
    """Neural spline flow guide (Durkan et al. 2019): monotone rational-quadratic splines with
    linear tails, in autoregressive layers (sampling direction, one MADE pass per layer) or
    coupling layers (``structure="coupling"``).

    Splines bend one coordinate at a time into skewed and multimodal shapes; outside
    ``[-bound, bound]`` (in the guide's standardized coordinates) each layer is the identity.

    Args:
        model: a Pyro model with continuous latent sites.
        num_transforms: spline layers (default 2).
        num_bins: spline bins per coordinate (default 16).
        bound: half-width of the spline's interval (default 8: the affine stage's scale is
            the posterior's, so the spline shapes up to 8 of its sds either side; with 8 bins
            on ``[-4, 4]``, pyroflows 0.1's defaults, a plain SVI loop missed the left tail of a
            hierarchy's log scale, see ``pyroflows.transforms.registry.NSF_GUIDE_BOUND``).
        structure: ``"autoregressive"`` (default) or ``"coupling"``.
        hidden_dims: hidden widths of each conditioner (default one layer of ``3 D + 1``).
        permutation: orderings between autoregressive layers.
        init_loc_fn, init_scale: as for every pyroflows guide.

    Example:
        >>> guide = AutoNSF(model, num_bins=12)  # doctest: +SKIP
    """

    family = "nsf"
    options = {
        "num_transforms": 2,
        "hidden_dims": None,
        "num_bins": NSF_GUIDE_NUM_BINS,
        "bound": NSF_GUIDE_BOUND,
        "structure": "autoregressive",
        "permutation": "reverse",
    }

    def _flow_options(self, options):
        if options["structure"] != "autoregressive":
            del options["permutation"]  # coupling layers have no orderings
        return options
