"""One registry of flow families: ``make_flow(name, dim, context_dim=0, **options)``.

Every family is a builder function plus what a user needs to choose it (paper, cost of a draw,
cost of a density evaluation, how the inverse is computed). Guides, amortized posteriors, flow
priors, density estimation and the CLI all build their flows here, so a new family is one
transformer (or conditioner) class and one :func:`register_flow` call:

    >>> from pyroflows.transforms.registry import register_flow, autoregressive_stack
    >>> from pyroflows.transforms.transformers import AdditiveTransformer
    >>> @register_flow("additive-ar", paper="(example)", one_pass_sampling=True,
    ...                sampling_cost="1 pass", density_cost="D passes", inverse="closed form")
    ... def build_additive_ar(dim, context_dim, num_transforms, **options):
    ...     return autoregressive_stack(dim, context_dim, num_transforms,
    ...                                 lambda: AdditiveTransformer(), **options)
    >>> make_flow("additive-ar", 3)(torch.zeros(3)).shape
    torch.Size([3])
    >>> unregister_flow("additive-ar")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.distributions import Transform

from pyroflows.nn.conditioner_mlp import ConditionerMLP
from pyroflows.nn.made import default_hidden_dims
from pyroflows.transforms.autoregressive import AutoregressiveTransform, Direction, made_for
from pyroflows.transforms.batchnorm import BatchNorm
from pyroflows.transforms.coupling import CouplingTransform, alternating_mask
from pyroflows.transforms.layer import FlowLayer
from pyroflows.transforms.planar import PlanarFlow
from pyroflows.transforms.stack import FlowStack
from pyroflows.transforms.transformers import (
    AdditiveTransformer,
    AffineTransformer,
    SigmoidalTransformer,
    SplineTransformer,
    Transformer,
    affine_update,
)

__all__ = [
    "FlowFamily",
    "autoregressive_stack",
    "available_flows",
    "coupling_stack",
    "flow_family",
    "make_flow",
    "orderings",
    "register_flow",
    "unregister_flow",
]

Permutation = Literal["reverse", "random"]


@dataclass(frozen=True)
class FlowFamily:
    """A registered flow family.

    Attributes:
        name: the registry name (``make_flow(name, ...)``).
        build: ``build(dim, context_dim, num_transforms, **options) -> list of layers``.
        default_num_transforms: layers when the caller does not say.
        one_pass_sampling: a draw (with its log-density) costs one pass: usable as a guide.
        paper: where the family comes from.
        sampling_cost, density_cost: the cost of a draw, and of the density of any point.
        inverse: how the inverse of an external point is computed.
        identity_at_init: a fresh flow is exactly the identity (else ``x ≈ c·u`` near 0).
        multimodal: its layers bend a Gaussian into several modes (NAF, splines): ``fit``
            tempers such guides by default.
        guide_defaults: options a guide of this family uses unless told otherwise (e.g. no
            MADE skip path: a guide's affine stage already carries linear dependencies).
    """

    name: str
    build: Callable[..., list[Transform]]
    default_num_transforms: int
    one_pass_sampling: bool
    paper: str
    sampling_cost: str
    density_cost: str
    inverse: str
    identity_at_init: bool = True
    multimodal: bool = False
    guide_defaults: dict = field(default_factory=dict)


_FLOWS: dict[str, FlowFamily] = {}


def register_flow(name: str, **fields):
    """Decorator registering a builder ``(dim, context_dim, num_transforms, **options)`` that
    returns the list of layers of one flow (see the module docstring for an example).

    ``fields`` are those of :class:`FlowFamily` after ``name`` and ``build``: ``paper``,
    ``one_pass_sampling``, ``sampling_cost``, ``density_cost`` and ``inverse`` are required;
    ``default_num_transforms`` (2), ``identity_at_init``, ``multimodal`` and ``guide_defaults``
    are optional.
    """

    def decorate(build):
        if name in _FLOWS:
            raise ValueError(f"a flow family is already registered as {name!r}")
        options = {"default_num_transforms": 2, **fields}
        options["guide_defaults"] = dict(options.get("guide_defaults") or {})
        _FLOWS[name] = FlowFamily(name, build, **options)
        return build

    return decorate


def unregister_flow(name: str) -> None:
    """Removes a family (for tests and examples)."""
    _FLOWS.pop(name, None)


def available_flows(one_pass_sampling: bool | None = None) -> list[str]:
    """The registered family names, sorted; ``one_pass_sampling=True`` keeps those usable as
    guides.

    Example:
        >>> available_flows()
        ['iaf', 'maf', 'naf', 'nice', 'nsf', 'planar', 'realnvp']
    """
    return sorted(
        name
        for name, family in _FLOWS.items()
        if one_pass_sampling is None or family.one_pass_sampling == one_pass_sampling
    )


def flow_family(name: str) -> FlowFamily:
    """The :class:`FlowFamily` registered as ``name``."""
    try:
        return _FLOWS[name]
    except KeyError:
        raise KeyError(f"no flow family {name!r}; available: {available_flows()}") from None


def make_flow(
    name: str, dim: int, context_dim: int = 0, num_transforms: int | None = None, **options
) -> FlowStack:
    """Builds a flow of family ``name`` over vectors of size ``dim``.

    Returns a :class:`~pyroflows.transforms.FlowStack`: a Pyro ``TransformModule`` when
    ``context_dim = 0``, and a ``ConditionalTransformModule`` (``flow.condition(h)``) otherwise.
    ``options`` go to the family's builder (e.g. ``hidden_dims``, ``log_scale_bounds``,
    ``num_bins``, ``direction``); an option the family does not know raises a ``TypeError``
    naming it.

    Example:
        >>> flow = make_flow("nsf", 3, context_dim=2, num_transforms=2, num_bins=6)
        >>> flow.condition(torch.randn(5, 2))(torch.randn(5, 3)).shape
        torch.Size([5, 3])
    """
    family = flow_family(name)
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not (isinstance(context_dim, int) and context_dim >= 0):
        raise ValueError(f"context_dim must be an integer >= 0, got {context_dim!r}")
    if num_transforms is None:
        num_transforms = family.default_num_transforms
    if not (isinstance(num_transforms, int) and num_transforms >= 1):
        raise ValueError(f"num_transforms must be a positive integer, got {num_transforms!r}")
    try:
        layers = family.build(dim, context_dim, num_transforms, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"flow family {name!r}: {error}") from None
        raise
    stack = FlowStack(layers, dim, context_dim)
    stack.family = name
    return stack


# ---- shared builders ------------------------------------------------------------------------


def orderings(dim: int, count: int, permutation: Permutation = "reverse") -> list[torch.Tensor]:
    """Autoregressive orderings of ``count`` layers: alternately natural and reversed, or
    uniformly random from a fixed seed (the same flow is built every time)."""
    if permutation == "reverse":
        natural = torch.arange(dim)
        return [natural if k % 2 == 0 else natural.flip(0) for k in range(count)]
    if permutation == "random":
        generator = torch.Generator().manual_seed(0)
        return [torch.randperm(dim, generator=generator) for _ in range(count)]
    raise ValueError(f"permutation must be 'reverse' or 'random', got {permutation!r}")


def _check_hidden_dims(hidden_dims: Sequence[int] | None, dim: int, context_dim: int):
    if hidden_dims is None:
        return default_hidden_dims(dim, context_dim)
    hidden_dims = list(hidden_dims)
    if not all(isinstance(h, int) and h >= 1 for h in hidden_dims):
        raise ValueError(f"hidden_dims must be positive integers, got {hidden_dims}")
    return hidden_dims


def _with_batch_norm(layers: list[Transform], dim: int, batch_norm: bool) -> list[Transform]:
    if not batch_norm:
        return layers
    result: list[Transform] = []
    for index, layer in enumerate(layers):
        if index > 0:
            result.append(BatchNorm(dim))
        result.append(layer)
    return result


def autoregressive_stack(
    dim: int,
    context_dim: int,
    num_transforms: int,
    make_transformer: Callable[[], Transformer],
    *,
    hidden_dims: Sequence[int] | None = None,
    direction: Direction = "iaf",
    permutation: Permutation = "reverse",
    skip_connection: bool | str = "auto",
    activation: nn.Module | None = None,
    batch_norm: bool = False,
    output_fan_in_cap: int | None = None,
    output_step_scale: float = 1.0,
) -> list[Transform]:
    """``num_transforms`` autoregressive layers with alternating (or random) orderings."""
    hidden_dims = _check_hidden_dims(hidden_dims, dim, context_dim)
    layers: list[Transform] = []
    for ordering in orderings(dim, num_transforms, permutation):
        transformer = make_transformer()
        made = made_for(
            transformer,
            dim,
            hidden_dims,
            ordering,
            context_dim,
            skip_connection,
            activation,
            output_fan_in_cap,
            output_step_scale,
        )
        layers.append(AutoregressiveTransform(made, transformer, direction))
    return _with_batch_norm(layers, dim, batch_norm)


def coupling_stack(
    dim: int,
    context_dim: int,
    num_transforms: int,
    make_transformer: Callable[[], Transformer],
    *,
    hidden_dims: Sequence[int] | None = None,
    activation: nn.Module | None = None,
    batch_norm: bool = False,
    output_fan_in_cap: int | None = None,
    output_step_scale: float = 1.0,
) -> list[Transform]:
    """``num_transforms`` coupling layers with alternating masks."""
    hidden_dims = _check_hidden_dims(hidden_dims, dim, context_dim)
    layers: list[Transform] = []
    for index in range(num_transforms):
        mask = alternating_mask(dim, flip=index % 2 == 1)
        transformer = make_transformer()
        conditioner = ConditionerMLP(
            int(mask.sum()),
            transformer.num_params,
            int((~mask).sum()),
            hidden_dims,
            context_dim=context_dim,
            activation=activation,
            output_fan_in_cap=output_fan_in_cap,
            output_step_scale=output_step_scale,
        )
        layers.append(CouplingTransform(mask, conditioner, transformer))
    return _with_batch_norm(layers, dim, batch_norm)


# ---- the families ---------------------------------------------------------------------------

_AR_DENSITY = "1 pass (MADE)"
_AR_SEQUENTIAL = "D sequential passes"

#: the output step scale (pyroflows.nn.MADE's output_step_scale) of the guides of the
#: sampling-direction autoregressive families (iaf, naf, nsf): in a user's own Adam loop their
#: transformers' parameters move a tenth as far per step; fit gives those outputs lr / 0.1 and
#: so trains them as before. Chosen on the development targets of
#: benchmarks/bench_plain_loop.py (the README's loop, Adam 1e-2, 2000 steps, 2 seeds;
#: F - F(AutoNormal), 1 -> 0.3 -> 0.1): AutoNSF on the 5-D funnel +0.52/+0.98 -> -0.19/+0.28 ->
#: -0.26/-0.004, on the two two-mode targets +0.09..+0.26 -> +0.02..+0.07 -> -0.004..+0.04;
#: AutoNAF on the funnel -0.51/+11.3 (a blow-up) -> -0.16/-0.62 -> -0.67/-0.74; both better on
#: the regressions, AutoNAF slightly worse on the banana (-0.47/-0.49 -> -0.39/-0.49). AutoIAF
#: kept 1 until the path starts (pyroflows.guides.start): from them its loop blew up on the
#: horseshoe_42 stress model (seed 0, step 1868) and ended 64 and 299 nats above AutoNormal on
#: horseshoe_102; with 0.3 -2.2/-3.1 and -6.6/+4.3, with 0.1 -4.1/-4.8 and -8.3/-7.3, its 5-D
#: funnel -0.47/-0.61 -> -0.69/-0.65, at a cost on the 2-D banana (-0.58/-0.54 -> -0.25/-0.21)
#: (benchmarks/results/plain_loop_dev_iaf_step_scale_cpu.txt)
AUTOREGRESSIVE_OUTPUT_STEP_SCALE = 0.1

#: what the families with a sampling (IAF) direction share. A guide's affine stage is full rank
#: (see pyroflows.transforms.AffineStage): the MADE's direct linear path would duplicate it;
#: measured on the development targets, dropping it lowered the KL (10-D regression 0.031 ->
#: 0.013, banana 0.35 -> 0.10 for AutoIAF) and saves ~15% a step. Output rows capped at an
#: effective fan-in of 16 (pyroflows.nn.MADE's output_fan_in_cap, the narrowest default width):
#: the default widths grow with D, and with plain weights the README's plain SVI loop (Adam
#: 1e-2) turned AutoNAF NaN on a horseshoe regression with D = 102 at steps 29-45 (3 of 3
#: seeds; benchmarks/results/plain_loop_horseshoe_cpu_before.txt); outputs scaled by
#: AUTOREGRESSIVE_OUTPUT_STEP_SCALE
_SAMPLING_AUTOREGRESSIVE = {
    "one_pass_sampling": True,
    "guide_defaults": {
        "skip_connection": False,
        "output_fan_in_cap": 16,
        "output_step_scale": AUTOREGRESSIVE_OUTPUT_STEP_SCALE,
    },
}

#: the same for the coupling guides (realnvp, nice); 0.3 chosen the same way: AutoRealNVP's
#: funnel -0.23/+0.51 -> -0.18/-0.27 (0.1: -0.09/-0.40), its banana -0.65/-0.55 -> -0.48/-0.48;
#: AutoNICE, which lost nowhere on these targets, within 0.1 either way
COUPLING_OUTPUT_STEP_SCALE = 0.3

#: what the coupling families share: one MLP pass per layer both ways. A guide's conditioner
#: output rows are capped at an effective fan-in of 16, as for the sampling-direction families
#: above: without it the README's plain SVI loop (Adam 1e-2) turned AutoRealNVP NaN on the
#: horseshoe_42 stress model (seed 0; F 348 against AutoNormal's 130 on seed 1), with it
#: F 135 and 139 (benchmarks/bench_plain_loop.py's model, 2 seeds); and its outputs are scaled
#: by COUPLING_OUTPUT_STEP_SCALE
_COUPLING = {
    "one_pass_sampling": True,
    "sampling_cost": "1 pass (MLP per layer)",
    "density_cost": "1 pass (MLP per layer)",
    "inverse": "closed form",
    "default_num_transforms": 4,
    "guide_defaults": {"output_fan_in_cap": 16, "output_step_scale": COUPLING_OUTPUT_STEP_SCALE},
}


def _affine_autoregressive(direction: Direction):
    """The builder of the ``iaf`` and ``maf`` families: affine (or gated) autoregressive layers
    whose default direction is ``direction``."""

    def build(
        dim,
        context_dim,
        num_transforms,
        *,
        update="affine",
        log_scale_bounds=(-4.0, 1.0),
        gate_bias=2.0,
        **options,
    ):
        make = partial(affine_update, update, log_scale_bounds, gate_bias)
        make()  # validates the update and its options once, here
        options.setdefault("direction", direction)
        return autoregressive_stack(dim, context_dim, num_transforms, make, **options)

    return build


register_flow(
    "iaf",
    paper="Kingma et al. 2016, Improved variational inference with inverse autoregressive flow",
    sampling_cost=_AR_DENSITY,
    density_cost=_AR_SEQUENTIAL,
    inverse="closed form per pass",
    **_SAMPLING_AUTOREGRESSIVE,
)(_affine_autoregressive("iaf"))
register_flow(
    "maf",
    paper="Papamakarios et al. 2017, Masked autoregressive flow for density estimation",
    one_pass_sampling=False,
    sampling_cost=_AR_SEQUENTIAL,
    density_cost=_AR_DENSITY,
    inverse="closed form per pass",
)(_affine_autoregressive("maf"))


@register_flow(
    "naf",
    paper="Huang et al. 2018, Neural autoregressive flows",
    sampling_cost=_AR_DENSITY + " (direction='iaf', the default)",
    density_cost=_AR_SEQUENTIAL + " (direction='iaf'); 1 pass with direction='maf'",
    inverse="bisection per pass",
    identity_at_init=False,
    multimodal=True,
    **_SAMPLING_AUTOREGRESSIVE,
)
def _build_naf(
    dim,
    context_dim,
    num_transforms,
    *,
    transformer="dsf",
    hidden_units=8,
    depth=2,
    max_log_slope=7.0,
    max_offset=math.inf,
    max_logit=math.inf,
    **options,
):
    make = partial(
        SigmoidalTransformer, transformer, hidden_units, depth, max_log_slope, max_offset, max_logit
    )
    make()  # validates
    return autoregressive_stack(dim, context_dim, num_transforms, make, **options)


#: the spline guides' bins and interval half-width (the builder's own defaults, 8 and 4, stay
#: for density estimation and amortized flows). In the guide's standardized coordinates a
#: spline on [-4, 4] leaves any tail beyond 4 sds to the affine stage: on the noncentered_8
#: stress model (bench_plain_loop.py; a development analog of the held-out non-centered eight
#: schools, where AutoNSF's plain loop ended 4.9 nats above AutoNormal) its loop widened the
#: affine scale, the spline squeezed the bulk back, and q missed the left tail of the log group
#: scale. With 16 bins on [-8, 8], F - F(AutoNormal) per seed (plain loop, 4 seeds):
#: noncentered_8 +0.69/+1.46/+0.58/+0.06 -> +0.13/+0.07/+0.28/+0.05, funnel_5
#: -0.26/-0.00/-0.04/-0.17 -> -0.36/-0.26/-0.44/-0.50, bimodal_2 -0.00/+0.04/+0.02/+0.06 ->
#: +0.00/+0.02/-0.00/+0.03, banana_2 -0.42/-0.50/-0.45/-0.53 -> +0.02/-0.57/-0.40/-0.51 (the
#: +0.02 within the 0.02 standard error of F). The price, 2 seeds: gaussian_illcond_5's F
#: 0.09 -> 0.17 (log Z = 0), synthetic_logistic_5 -0.55 -> -0.45 and horseshoe_42 -3.2 -> -2.2
#: against AutoNormal: still below it everywhere
#: (benchmarks/results/plain_loop_dev_nsf_bins_cpu.txt)
NSF_GUIDE_NUM_BINS = 16
NSF_GUIDE_BOUND = 8.0


@register_flow(
    "nsf",
    paper="Durkan et al. 2019, Neural spline flows",
    sampling_cost="1 pass (direction='iaf', the default, or structure='coupling')",
    density_cost=_AR_SEQUENTIAL + " (direction='iaf'); 1 pass with direction='maf' or coupling",
    inverse="closed form (quadratic root) per pass",
    multimodal=True,
    **{
        **_SAMPLING_AUTOREGRESSIVE,
        "guide_defaults": {
            **_SAMPLING_AUTOREGRESSIVE["guide_defaults"],
            "num_bins": NSF_GUIDE_NUM_BINS,
            "bound": NSF_GUIDE_BOUND,
        },
    },
)
def _build_nsf(
    dim,
    context_dim,
    num_transforms,
    *,
    num_bins=8,
    bound=4.0,
    structure: Literal["autoregressive", "coupling"] = "autoregressive",
    skip_connection: bool | str = "auto",
    **options,
):
    make = partial(SplineTransformer, num_bins, bound)
    make()  # validates
    if structure == "autoregressive":
        return autoregressive_stack(
            dim, context_dim, num_transforms, make, skip_connection=skip_connection, **options
        )
    if structure == "coupling":
        if skip_connection is True:
            raise ValueError("skip_connection is a MADE option: coupling layers have no MADE")
        return coupling_stack(dim, context_dim, num_transforms, make, **options)
    raise ValueError(f"structure must be 'autoregressive' or 'coupling', got {structure!r}")


@register_flow("realnvp", paper="Dinh et al. 2017, Density estimation using Real NVP", **_COUPLING)
def _build_realnvp(dim, context_dim, num_transforms, *, log_scale_bounds=(-4.0, 1.0), **options):
    make = partial(AffineTransformer, log_scale_bounds)
    make()  # validates the bounds once, here
    return coupling_stack(dim, context_dim, num_transforms, make, **options)


@register_flow(
    "nice",
    paper="Dinh et al. 2015, NICE: non-linear independent components estimation",
    **_COUPLING,
)
def _build_nice(dim, context_dim, num_transforms, *, scaling: bool = True, **options):
    layers = coupling_stack(dim, context_dim, num_transforms, AdditiveTransformer, **options)
    if scaling:  # NICE's final diagonal scaling: the only volume change of the model
        layers.append(_DiagonalScaling(dim))
    return layers


@register_flow(
    "planar",
    paper="Rezende & Mohamed 2015, Variational inference with normalizing flows",
    one_pass_sampling=True,
    sampling_cost="1 pass (O(D) per layer)",
    density_cost="1 scalar root solve per layer",
    inverse="bisection on a bracket, then Newton",
    default_num_transforms=16,
)
def _build_planar(dim, context_dim, num_transforms, *, init_w_scale=None):
    return [PlanarFlow(dim, init_w_scale, context_dim) for _ in range(num_transforms)]


class _DiagonalScaling(FlowLayer):
    """``x = u·exp(s)``, learnable ``s`` starting at 0 (NICE's scaling layer)."""

    def __init__(self, dim: int):
        super().__init__(dim, 0)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward_with_log_det(self, u, context=None, need_log_det=True):
        x = u * torch.exp(self.log_scale)
        return x, self.log_scale.sum(-1).expand(u.shape[:-1]) if need_log_det else None

    def inverse_with_log_det(self, x, context=None):
        return x * torch.exp(-self.log_scale), self.log_scale.sum(-1).expand(x.shape[:-1])
