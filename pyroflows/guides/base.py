"""The base class of every pyroflows autoguide.

A flow guide is a Pyro :class:`~pyro.infer.autoguide.AutoContinuous` guide whose posterior over
the packed unconstrained latent vector is

    u ~ Normal(0, I)  ->  flow layers  ->  loc + scale * (.)

The flow layers work in standardized coordinates; the last, elementwise affine layer carries the
posterior location and scale and starts at the model's ``init_loc_fn`` values and ``init_scale``,
so the guide starts where AutoNormal starts, not at zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import biject_to

from pyroflows._pyro_internals import init_loc as init_loc_of
from pyroflows._pyro_internals import (
    param_name,
    prototype_hide_fn,
    pyro_name,
    unpack_latent,
)
from pyroflows.distributions import FlowDistribution
from pyroflows.guides.path_gradients import (
    STL_MAX_DIM,
    calling_elbo,
    path_gradient_problem,
    suits_path_gradients,
)
from pyroflows.guides.start import (
    FULL_HESSIAN_MAX_DIM,
    Start,
    laplace_start,
    points_log_joint,
)
from pyroflows.transforms.affine_stage import AffineStage

__all__ = ["AutoFlowGuide", "GuideSetupError", "LargeGuideWarning", "NoLatentSitesError"]

#: up to this many latent dimensions the affine stage is full rank (a lower-triangular
#: matrix of D² numbers); above it, diagonal
FULL_AFFINE_MAX_DIM = 1000
#: draws from which the candidate starts' ELBOs are compared
START_DRAWS = 64
#: the Laplace scale is also tried shrunk by these factors
LAPLACE_SHRINK_FACTORS = (0.5, 0.25)
#: a guide with more parameters than this warns when it is built: with gradients and Adam's
#: two moments, training holds about four float32 copies (1.6 GB at 100M parameters) plus
#: the activations of every particle
LARGE_GUIDE_PARAMETERS = 100_000_000
#: what a guide's ``state_dict()`` records as its ``_extra_state`` and ``load_state_dict``
#: checks: the same stored numbers must mean the same distribution. Bump it whenever they
#: stop doing so (as a conditioner's ``output_step_scale`` did: AutoIAF's 0.1, pyroflows 0.2,
#: puts a tenth of each stored output weight into the flow). 1: the first versioned format
STATE_FORMAT = 1


class LargeGuideWarning(UserWarning):
    """A guide's default size is large for its latent dimension (memory and time per step)."""


class GuideSetupError(RuntimeError):
    """Raised when a guide cannot discover the model's latent sites, or is used before it has."""


class NoLatentSitesError(RuntimeError, ValueError):
    """The model has no latent site. A ``RuntimeError``, as Pyro's autoguides raise (and a
    ``ValueError``, as pyroflows raised before 0.2)."""


_ENUMERATION_LINK = "https://pyro.ai/examples/enumeration.html"


def _discrete_sites_message(guide_name: str, discrete: list[str]) -> str:
    """Pyro's message for a discrete site (with its enumeration link), then pyroflows' advice."""
    return (
        f"Continuous inference cannot handle discrete sample site '{discrete[0]}'. Consider "
        f"enumerating that variable as documented in {_ENUMERATION_LINK} . {guide_name} "
        f"handles continuous latent sites only, but the model has discrete latent site(s) "
        f"{discrete}. Enumerate them out (TraceEnum_ELBO with infer={{'enumerate': "
        f"'parallel'}}) and hide them from the guide with poutine.block(model, "
        f"hide={discrete}), or marginalize them in the model."
    )


def _describe_args(args: tuple, kwargs: dict) -> str:
    def describe(value: object) -> str:
        if isinstance(value, torch.Tensor):
            return f"Tensor{tuple(value.shape)}"
        return type(value).__name__

    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


class AutoFlowGuide(AutoContinuous):
    """Base class: a normalizing flow over the packed unconstrained latents of a model.

    Subclasses implement :meth:`build_flow_layers`. Everything else (initialization, Monte Carlo
    :meth:`median` and :meth:`quantiles`, device and dtype handling, error messages) lives here.

    Args:
        model: a Pyro model with continuous latent sites and a fixed structure.
        init_loc_fn: per-site initialization, as for AutoNormal (default ``init_to_median``).
        init_scale: initial posterior scale of every unconstrained latent (default 0.1).
    """

    #: the name under which the guide is registered (set by :func:`register_guide`)
    registry_name: str = ""

    def __init__(
        self,
        model,
        *,
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        init: Literal["laplace", "median"] = "laplace",
    ):
        if not (isinstance(init_scale, int | float) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        if init not in ("laplace", "median"):
            raise ValueError(
                f"init must be 'laplace' (a MAP and Laplace covariance start) or 'median' (the "
                f"init_loc_fn values with init_scale), got {init!r}"
            )
        self.init_scale = float(init_scale)
        self.init = init
        super().__init__(model, init_loc_fn=init_loc_fn)
        self._model_without_init = (model,)  # a tuple: not registered as a submodule
        self.flow: ComposeTransformModule | None = None
        #: the start the affine stage was built at (set up with the model)
        self.start: Start | None = None
        self.sticking_the_landing = "auto"

    @property
    def sticking_the_landing(self) -> bool | str:
        """Whether log q of the guide's own draws carries only the path gradient (Roeder, Wu &
        Duvenaud 2017; :class:`~pyroflows.distributions.FlowDistribution`): ``True``, ``False``,
        or ``"auto"`` (the default): on for a guide that is not ``multimodal`` (NAF and spline
        flows keep the plain gradients) with at most
        :data:`~pyroflows.guides.path_gradients.STL_MAX_DIM` latent dimensions, when a plain
        ELBO (``Trace_ELBO`` and kin, not JIT-compiled) is training it
        (:mod:`pyroflows.guides.path_gradients`). ``fit`` sets it for its own steps
        (``gradients=``). In a plain SVI loop (Adam 1e-2, ``Trace_ELBO()``, 2000 steps) on the
        development targets it took AutoIAF's free energy from 0.10-0.13 to 0.001-0.003 on
        an ill-conditioned Gaussian, 0.54-0.60 to 0.37-0.46 on a banana, and below AutoNormal's
        on both one-mode targets, where the plain gradients ended above it."""
        return self._sticking_the_landing

    @sticking_the_landing.setter
    def sticking_the_landing(self, value: bool | str) -> None:
        if not (isinstance(value, bool) or (isinstance(value, str) and value == "auto")):
            raise ValueError(
                f'sticking_the_landing must be True, False or "auto" (path gradients under a '
                f"plain ELBO, for unimodal guides of at most {STL_MAX_DIM} dimensions), got "
                f"{value!r}"
            )
        self._sticking_the_landing = value

    def _draws_stick_the_landing(self) -> bool:
        """What ``sticking_the_landing`` means for the draw about to be made."""
        setting = self._sticking_the_landing
        if setting != "auto":
            return bool(setting)
        if not suits_path_gradients(self):
            return False
        if torch.jit.is_tracing() or not torch.is_grad_enabled():
            return False
        elbo = calling_elbo()
        return elbo is not None and path_gradient_problem(elbo) is None

    # ---- a versioned state_dict ---------------------------------------------------------------

    def get_extra_state(self) -> torch.Tensor:
        """What ``state_dict()`` stores beside the parameters (as ``_extra_state``): the
        :data:`STATE_FORMAT` of the numbers, as a tensor, so that code which treats every
        entry of a ``state_dict`` as a tensor (``.cpu()``, broadcasting) keeps working."""
        return torch.tensor(STATE_FORMAT)

    def set_extra_state(self, state: object) -> None:
        """Refuses a ``state_dict`` whose numbers would mean another distribution here."""
        found = state
        if isinstance(state, torch.Tensor) and state.numel() == 1:
            found = int(state)
        if found != STATE_FORMAT:
            raise ValueError(
                f"this state_dict has pyroflows state format {found!r}, and "
                f"{type(self).__name__} reads format {STATE_FORMAT}: its stored numbers would "
                "load into another distribution. Refit the guide, or load the state with the "
                "pyroflows version that saved it"
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, refusing (with ``strict``) a ``state_dict`` without a
        pyroflows state format: one saved before 0.2, whose numbers can mean another
        distribution here. (Inside another module's ``state_dict``, e.g. a Lightning
        checkpoint, torch reports the missing ``_extra_state`` entry itself.)"""
        if strict and "_extra_state" not in state_dict:
            raise ValueError(
                f"this state_dict has no pyroflows state format (no '_extra_state' entry): it "
                f"was saved by a pyroflows before 0.2, whose stored numbers can mean another "
                f"distribution in this {type(self).__name__} (AutoIAF's conditioner outputs "
                "are now scaled by 0.1). Refit the guide, or pass strict=False to load it "
                "anyway, at your own risk"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __getstate__(self):
        # like Pyro's AutoGuide, which drops its (init-wrapped) model: models need not pickle
        self._model_without_init = None
        return super().__getstate__()

    # ---- what a subclass provides -------------------------------------------------------------

    def build_flow_layers(self, latent_dim: int) -> Sequence[TransformModule]:
        """The flow layers applied to standard normal noise, before the final affine layer."""
        raise NotImplementedError

    def settings(self) -> dict[str, object]:
        """The guide's hyperparameters, for reports and export (with the start used, once the
        guide has seen the model)."""
        settings: dict[str, object] = {"init": self.init, "init_scale": self.init_scale}
        if self.start is not None:
            settings["start"] = self.start.describe()
        return settings

    # ---- set-up --------------------------------------------------------------------------------

    def _setup_prototype(self, *args, **kwargs) -> None:
        self.prototype_trace = None
        try:
            self._build_from_model(*args, **kwargs)
        except Exception:
            self.prototype_trace = None  # a later call tries again instead of half set up
            raise

    def _build_from_model(self, *args, **kwargs) -> None:
        try:
            super()._setup_prototype(*args, **kwargs)
        except Exception as error:
            if self.prototype_trace is None:
                # an init_loc_fn fails on a discrete site before the check below can run
                discrete = self._discrete_latent_sites(args, kwargs)
                if discrete:
                    raise ValueError(_discrete_sites_message(type(self).__name__, discrete)) from (
                        error
                    )
                first_line = str(error).splitlines()[0] if str(error) else ""
                raise GuideSetupError(
                    f"{type(self).__name__} runs the model once to find its latent sites, and "
                    f"that run, with arguments {_describe_args(args, kwargs)}, failed: "
                    f"{type(error).__name__}: {first_line}. If these are not the model's "
                    "arguments, call the guide (or fit/SVI) with the model's arguments."
                ) from error
            self._check_latent_sites()
            raise
        self._check_latent_sites()
        init_loc = init_loc_of(self)
        layers = list(self.build_flow_layers(self.latent_dim))
        # the flow layers start at x ≈ c·u: the affine stage divides its start's scale by c
        initial_scale = math.prod(float(getattr(layer, "initial_scale", 1.0)) for layer in layers)
        median_start = Start(
            "init_loc_fn",
            init_loc,
            torch.full_like(init_loc, self.init_scale),
            "the model's init_loc_fn values and init_scale",
        )
        candidates = [median_start]
        if self.init == "laplace":
            with torch.enable_grad():
                candidates = laplace_start(
                    self,
                    init_loc,
                    median_start.scale,
                    args,
                    kwargs,
                    full_hessian_max_dim=FULL_HESSIAN_MAX_DIM,
                )
            # a curved or skewed posterior is poorly covered by its Laplace approximation;
            # narrower versions of it compete too (the ELBO, being mode seeking, decides)
            candidates = [
                shrunk
                for candidate in candidates[:-1]
                for shrunk in (candidate, *_shrunk(candidate, LAPLACE_SHRINK_FACTORS))
            ] + candidates[-1:]
        structure = "full" if self.latent_dim <= FULL_AFFINE_MAX_DIM else "diagonal"
        first = candidates[0]
        scale = (
            first.scale.diagonal()
            if structure == "diagonal" and first.scale.dim() == 2
            else first.scale
        )
        stage = AffineStage(first.loc, scale / initial_scale, structure, first.whiten)
        # a local name: reading self.flow inside a Pyro call registers its parameters
        flow = ComposeTransformModule(layers + [stage]).to(
            device=init_loc.device, dtype=init_loc.dtype
        )
        _warn_if_large(type(self).__name__, flow, self.latent_dim)
        self.start = self._choose_start(candidates, flow, stage, initial_scale, args, kwargs)
        self.flow = flow
        self._share_parameters_with_param_store()

    @torch.no_grad()
    def _choose_start(self, candidates, flow, stage, initial_scale, args, kwargs) -> Start:
        """Keeps the candidate start with the highest ELBO (from ``START_DRAWS`` draws of a
        generator of its own, so the global random state is untouched and the choice is the
        same every time the guide is built)."""
        if len(candidates) == 1:
            return candidates[0]
        elbos = []
        for candidate in candidates:
            scale = candidate.scale
            if stage.structure == "diagonal" and scale.dim() == 2:
                scale = scale.diagonal()
            stage.restart(candidate.loc, scale / initial_scale, candidate.whiten)
            elbos.append(_elbo_estimate(self, flow, args, kwargs, START_DRAWS))
        best = max(range(len(candidates)), key=lambda k: elbos[k])
        chosen = candidates[best]
        for candidate, elbo in zip(candidates, elbos, strict=True):
            chosen.details[f"elbo_{candidate.method}"] = elbo
        ranking = ", ".join(
            f"{candidate.method} {elbo:.4g}"
            for candidate, elbo in zip(candidates, elbos, strict=True)
        )
        chosen.reason = f"{chosen.reason}; the best ELBO of the candidate starts ({ranking})"
        scale = chosen.scale
        if stage.structure == "diagonal" and scale.dim() == 2:
            scale = scale.diagonal()
        stage.restart(chosen.loc, scale / initial_scale, chosen.whiten)
        return chosen

    def _share_parameters_with_param_store(self) -> None:
        """Makes the flow and Pyro's param store hold the very same parameter tensors.

        As for Pyro's own autoguides, values already in the param store under this guide's
        names (from ``pyro.get_param_store().load(...)``, or an earlier guide of the same name)
        are adopted; without this, the optimizer would update the stored tensors while the guide
        samples from its own, and training would silently do nothing.
        """
        store = pyro.get_param_store()
        name = pyro_name(self)
        prefix = f"{name}.flow" if name else "flow"
        for name, value in self.flow.named_parameters():
            full_name = param_name(prefix, name)
            if full_name in store and store[full_name].shape != value.shape:
                raise ValueError(
                    f"the param store already holds '{full_name}' with shape "
                    f"{tuple(store[full_name].shape)}, but this {type(self).__name__} needs "
                    f"{tuple(value.shape)}: it belongs to another guide of the same name. Call "
                    "pyro.clear_param_store() or give the guides different names."
                )
        pyro.module(prefix, self.flow, update_module_params=True)

    def _discrete_latent_sites(self, args: tuple, kwargs: dict) -> list[str]:
        """The discrete latent sites of a plain run of the model, without the init_loc_fn (none
        if that run fails)."""
        if self._model_without_init is None:  # unpickled: the model is gone
            return []
        try:
            with torch.no_grad(), poutine.block():
                trace = poutine.trace(
                    poutine.block(self._model_without_init[0], prototype_hide_fn(self))
                ).get_trace(*args, **kwargs)
        except Exception:
            return []
        return [
            site["name"]
            for _, site in trace.iter_stochastic_nodes()
            if site["fn"].support.is_discrete
        ]

    def _check_latent_sites(self) -> None:
        name = type(self).__name__
        sites = [site for _, site in self.prototype_trace.iter_stochastic_nodes()]
        discrete = [site["name"] for site in sites if site["fn"].support.is_discrete]
        if discrete:
            raise ValueError(_discrete_sites_message(name, discrete))
        if not sites:
            raise NoLatentSitesError(
                f"{name} found no latent variables; Use an empty guide instead. Every "
                "pyro.sample in the model is observed (or the model samples nothing), so there is "
                "no posterior to approximate."
            )
        for site in sites:
            for frame in site["cond_indep_stack"]:
                full_size = getattr(frame, "full_size", None)
                if frame.vectorized and full_size is not None and full_size != frame.size:
                    raise ValueError(
                        f"{name} cannot fit the local latent site '{site['name']}' inside the "
                        f"subsampled plate '{frame.name}' ({frame.size} of {full_size}): a "
                        "joint guide needs every latent at every step. Use a full plate, or an "
                        "amortized guide for local latents."
                    )

    def _require_setup(self, what: str, args: tuple = (), kwargs: dict | None = None) -> None:
        """Sets the guide up from ``args`` if it has not seen the model yet."""
        # prototype_trace is a plain attribute; reading self.flow would cost a pyro.module call
        if self.prototype_trace is not None:
            return
        kwargs = kwargs or {}
        if not args and not kwargs:
            try:
                self._setup_prototype()
            except GuideSetupError as error:
                raise GuideSetupError(
                    f"{type(self).__name__}.{what} was called before the guide has seen the "
                    "model: run the guide (or one SVI step / fit) with the model's arguments "
                    f"first, or pass them to {what}. ({error.__cause__})"
                ) from error
        else:
            self._setup_prototype(*args, **kwargs)

    # ---- the AutoContinuous interface -----------------------------------------------------------

    def get_base_dist(self) -> dist.Distribution:
        self._require_setup("get_base_dist")
        return _standard_normal_like(self.flow[-1].loc0)

    def get_transform(self, *args, **kwargs) -> ComposeTransformModule:
        self._require_setup("get_transform", args, kwargs)
        return self.flow

    def get_posterior(self, *args, **kwargs) -> FlowDistribution:
        """``FlowDistribution(Normal(0, I), flow)``: log q of its own samples comes for free."""
        self._require_setup("get_posterior", args, kwargs)
        flow = self.flow  # one attribute access: each one registers the parameters with Pyro
        return FlowDistribution(
            _standard_normal_like(flow[-1].loc0),
            list(flow),
            sticking_the_landing=self._draws_stick_the_landing(),
        )

    # ---- summaries ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_unconstrained(self, num_samples: int, *args, **kwargs) -> torch.Tensor:
        """``num_samples`` draws of the packed unconstrained latent vector, shape ``(S, D)``."""
        self._require_setup("sample_unconstrained", args, kwargs)
        return self.get_posterior(*args, **kwargs).sample((num_samples,))

    @torch.no_grad()
    def _summary_draws(self, num_samples: int, seed: int) -> torch.Tensor:
        """``num_samples`` draws of the packed latent from their own generator seeded with
        ``seed``: the same draws for a fixed guide, and the global random state untouched."""
        flow = self.flow
        loc = flow[-1].loc
        generator = torch.Generator(device=loc.device).manual_seed(seed)
        noise = torch.randn(
            (num_samples,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype
        )
        return flow(noise)

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 4000, seed: int = 0, **kwargs) -> dict:
        """Monte Carlo posterior quantiles of each latent site.

        Quantiles are taken per coordinate of the unconstrained latent and mapped through each
        site's bijection. For sites whose bijection acts elementwise and monotonically (real,
        positive, interval supports) these are exactly the constrained marginal quantiles; for
        simplex or correlation sites they are points of the support, as in Pyro's own guides.
        The ``num_samples`` draws come from a generator of their own seeded with ``seed``, so the
        result is the same on every call for a fixed guide and the global random state is left
        alone (as Pyro's closed-form quantiles are).

        Example:
            >>> guide.quantiles([0.05, 0.5, 0.95])["scale"].shape  # doctest: +SKIP
            torch.Size([3])
        """
        self._require_setup("quantiles", args, kwargs)
        latent = self._summary_draws(num_samples, seed)
        probs = torch.as_tensor(quantiles, dtype=latent.dtype, device=latent.device).reshape(-1)
        if bool(((probs < 0) | (probs > 1)).any()):
            raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
        rows = _sorted_quantiles(latent, probs)
        result: dict[str, list[torch.Tensor]] = {}
        for row in rows:
            for site, unconstrained in unpack_latent(self, row):
                value = biject_to(site["fn"].support)(unconstrained)
                result.setdefault(site["name"], []).append(value)
        return {name: torch.stack(values) for name, values in result.items()}

    @torch.no_grad()
    def median(self, *args, num_samples: int = 4000, seed: int = 0, **kwargs) -> dict:
        """Monte Carlo posterior median of each latent site (see :meth:`quantiles`):
        deterministic for a fixed guide, without touching the global random state."""
        self._require_setup("median", args, kwargs)
        quantiles = self.quantiles([0.5], *args, num_samples=num_samples, seed=seed, **kwargs)
        return {name: value[0] for name, value in quantiles.items()}


def _warn_if_large(guide_name: str, flow: torch.nn.Module, latent_dim: int) -> None:
    """Warns (:class:`LargeGuideWarning`) when ``flow`` holds more than
    :data:`LARGE_GUIDE_PARAMETERS` numbers, naming its size and the options that shrink it."""
    count = sum(parameter.numel() for parameter in flow.parameters())
    if count <= LARGE_GUIDE_PARAMETERS:
        return
    gigabytes = count * 4 * 4 / 1e9  # parameters, gradients, Adam's two moments in float32
    warnings.warn(
        f"{guide_name} has {count / 1e6:.0f}M parameters for {latent_dim} latent dimensions: "
        f"training with Adam holds about {gigabytes:.1f} GB in float32 before activations, and "
        "each step is slow. Its conditioners' widths grow with the dimension; to shrink it, pass "
        "smaller hidden_dims (e.g. hidden_dims=[256]), fewer num_transforms, or use a family "
        "with fewer parameters per dimension (AutoIAF: 2 per dimension and layer).",
        LargeGuideWarning,
        stacklevel=4,
    )


def _shrunk(start: Start, factors) -> list[Start]:
    return [
        Start(
            f"{start.method}×{factor:g}",
            start.loc,
            start.scale * factor,
            f"{start.reason}; scale × {factor:g}",
            dict(start.details),
        )
        for factor in factors
    ]


def _elbo_estimate(guide, flow, args: tuple, kwargs: dict, num_draws: int) -> float:
    """The ELBO of ``flow``'s distribution from ``num_draws`` draws of a generator seeded with
    0 (the model scores them in one vectorized run, or one by one if it is not
    vectorization-safe; -inf where the model's density is not finite)."""
    loc = flow[-1].loc0
    generator = torch.Generator(device=loc.device).manual_seed(0)
    noise = torch.randn(
        (num_draws,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype
    )
    latent = flow(noise)
    log_q = _standard_normal_like(loc).log_prob(noise) - flow.log_abs_det_jacobian(noise, latent)
    log_p = points_log_joint(guide, latent, args, kwargs)
    if log_p is None:
        return -math.inf
    elbo = float((log_p - log_q).mean())
    return elbo if math.isfinite(elbo) else -math.inf


def _standard_normal_like(loc: torch.Tensor) -> dist.Distribution:
    zeros = torch.zeros_like(loc, requires_grad=False)
    return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)


def _sorted_quantiles(samples: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Quantiles along dim 0 by sorting and linear interpolation (no size limit)."""
    ordered = samples.sort(dim=0).values
    position = probs * (samples.shape[0] - 1)
    lower = position.floor().long()
    upper = position.ceil().long()
    weight = (position - lower).unsqueeze(-1)
    return ordered[lower] * (1 - weight) + ordered[upper] * weight
