"""A fitted density as a Pyro distribution: the flow, the standardization, save and load."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalDistribution
from torch import nn
from torch.distributions import Transform

from pyroflows.distributions import FlowDistribution
from pyroflows.transforms.layer import FlowLayer, check_context
from pyroflows.transforms.registry import make_flow
from pyroflows.transforms.stack import FlowStack

__all__ = [
    "ConditionalFittedDensity",
    "DensityModel",
    "FitHistory",
    "FittedDensity",
    "Standardization",
    "load_density",
]

#: what :meth:`FittedDensity.save` writes in ``"format"``, checked by :func:`load_density`
FILE_FORMAT = "pyroflows.density"
FILE_VERSION = 1


class Standardization(FlowLayer):
    r"""``x = shift + scale ⊙ z``: the map from standardized coordinates back to the data's.

    ``log|det ∂x/∂z| = Σ_i log scale_i``, so a density of ``z`` pushed through it is a density
    of the original ``x``. ``shift`` and ``scale`` are buffers (saved, moved with the module,
    not trained).

    Example:
        >>> layer = Standardization(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5]))
        >>> x, log_det = layer.forward_with_log_det(torch.zeros(3, 2))
        >>> x[0].tolist(), round(float(log_det[0]), 6)
        ([1.0, -2.0], 0.0)
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        super().__init__(shift.shape[-1], 0)
        if not bool((scale > 0).all()):
            raise ValueError("every scale of a Standardization must be positive")
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def _log_det(self, batch_shape: torch.Size) -> torch.Tensor:
        return torch.log(self.scale).sum(-1).expand(batch_shape)

    def forward_with_log_det(self, u, context=None, need_log_det=True):
        check_context(context, 0)
        x = self.shift + self.scale * u
        return x, (self._log_det(u.shape[:-1]) if need_log_det else None)

    def inverse_with_log_det(self, x, context=None):
        check_context(context, 0)
        return (x - self.shift) / self.scale, self._log_det(x.shape[:-1])


@dataclass
class FitHistory:
    """How a density (or a distilled student) was trained.

    Attributes:
        train_loss: mean negative log-likelihood per row of the training batches, per epoch
            (nats, of the original data).
        validation_loss: the same on the validation rows after each epoch (empty without a
            validation split).
        best_epoch: the epoch whose parameters were kept (the lowest validation loss; the last
            epoch without a validation split).
        stopped_by: why training stopped.
        epochs, steps: epochs and optimizer steps done.
        wall_seconds, thread_seconds: time in the training loop, wall clock and CPU time of the
            calling thread.
        settings: the optimizer and stopping settings used.
    """

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_by: str = ""
    epochs: int = 0
    steps: int = 0
    wall_seconds: float = 0.0
    thread_seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def best_validation_loss(self) -> float:
        """The validation loss of the kept parameters (nan without a validation split)."""
        if not self.validation_loss or self.best_epoch < 1:
            return math.nan
        return self.validation_loss[self.best_epoch - 1]


class DensityModel(nn.Module):
    """The trainable part of a fitted density: a flow over standardized coordinates, the
    :class:`Standardization` back to the data's, and the context's standardization.

    ``log p(x | h) = log N(u; 0, I) + log|det ∂u/∂z| - Σ log scale`` with ``z = (x - shift) /
    scale`` and ``u = f⁻¹(z; h̃)``, ``h̃`` the standardized context: one pass per layer for
    families in the density (MAF) direction.

    Args:
        flow: a :class:`~pyroflows.transforms.FlowStack` over ``dim`` coordinates.
        shift, scale: the data's standardization (``x = shift + scale ⊙ z``).
        context_shift, context_scale: the context's (``h̃ = (h - shift) / scale``); empty
            tensors for an unconditional density.
    """

    def __init__(
        self,
        flow: FlowStack,
        shift: torch.Tensor,
        scale: torch.Tensor,
        context_shift: torch.Tensor | None = None,
        context_scale: torch.Tensor | None = None,
    ):
        super().__init__()
        self.flow = flow
        self.standardization = Standardization(shift, scale)
        empty = shift.new_zeros(0)
        self.register_buffer(
            "context_shift", empty if context_shift is None else context_shift.detach().clone()
        )
        self.register_buffer(
            "context_scale", empty if context_scale is None else context_scale.detach().clone()
        )

    @property
    def dim(self) -> int:
        return self.flow.input_dim

    @property
    def context_dim(self) -> int:
        return self.flow.context_dim

    def standardize_context(self, context: torch.Tensor) -> torch.Tensor:
        return (context - self.context_shift) / self.context_scale

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x | h)`` of the original data, one value per row (the training loss's)."""
        z, log_det_scale = self.standardization.inverse_with_log_det(x)
        h = None if context is None else self.standardize_context(context)
        u, log_det = self.flow.inverse_with_log_det(z, h)
        log_base = -0.5 * (u * u).sum(-1) - 0.5 * self.dim * math.log(2.0 * math.pi)
        return log_base - log_det - log_det_scale


def _base(model: DensityModel, batch_shape: torch.Size) -> dist.TorchDistribution:
    loc = model.standardization.shift.new_zeros(model.dim)
    base = dist.Normal(loc, torch.ones_like(loc)).to_event(1)
    return base.expand(batch_shape) if batch_shape else base


class _SaveLoad:
    """``save`` and ``load`` shared by the unconditional and the conditional density."""

    model: DensityModel
    spec: dict
    history: FitHistory

    def save(self, path: str | os.PathLike) -> None:
        """Writes the family, its options and the ``state_dict`` (and the training history)
        to ``path``; :func:`load_density` rebuilds the density from it.

        Raises:
            TypeError: an option of the family is not a plain value (number, string, bool,
                None, or a list, tuple or dict of them), so the file could not be loaded safely.
        """
        for name, value in self.spec.get("options", {}).items():
            if not _is_plain(value):
                raise TypeError(
                    f"option {name}={value!r} of this density is not a plain value (number, "
                    "string, bool, None, list, tuple, dict), so save cannot write it; build "
                    "the flow with plain options, or save density.model.state_dict() yourself"
                )
        torch.save(
            {
                "format": FILE_FORMAT,
                "version": FILE_VERSION,
                "spec": self.spec,
                "state_dict": self.model.state_dict(),
                "history": asdict(self.history),
            },
            os.fspath(path),
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        flow: Sequence[Transform] | None = None,
        map_location: str | torch.device | None = None,
    ) -> FittedDensity | ConditionalFittedDensity:
        """:func:`load_density` (either class loads either kind)."""
        return load_density(path, flow=flow, map_location=map_location)


def _is_plain(value: object) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


class FittedDensity(_SaveLoad, FlowDistribution):
    """A flow fitted to data, as a Pyro distribution over vectors: ``x = shift + scale ⊙ f(u)``,
    ``u ~ N(0, I)``.

    ``log_prob`` is the density of the *original* data (the standardization's Jacobian
    included); ``sample``/``rsample`` draw from it (``D`` sequential passes per layer for a
    MAF-direction autoregressive flow, one pass for coupling flows and IAF-direction students).
    Use it anywhere Pyro takes a distribution, e.g. ``pyro.sample("x", density, obs=x)`` as a
    likelihood or ``pyro.sample("z", density)`` as a prior. ``density.model`` holds the
    parameters (``density.model.eval()`` is already set), ``density.history`` how it was
    trained, ``density.save(path)`` / :func:`load_density` store and rebuild it.

    A density bound to a context (from :meth:`ConditionalFittedDensity.condition`) has the
    context's batch shape: one conditional density per context row.
    """

    def __init__(
        self,
        model: DensityModel,
        spec: dict,
        history: FitHistory | None = None,
        context: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ):
        if (context is None) != (model.context_dim == 0):
            raise ValueError(
                "a conditional density needs a context (use ConditionalFittedDensity.condition)"
                if context is None
                else "an unconditional density takes no context"
            )
        batch_shape = torch.Size() if context is None else context.shape[:-1]
        flow: Transform = model.flow
        if context is not None:
            flow = model.flow.condition(model.standardize_context(context))
        super().__init__(_base(model, batch_shape), [flow, model.standardization], validate_args)
        self.model = model
        self.spec = spec
        self.history = history if history is not None else FitHistory()
        self.context = context

    @property
    def flow(self) -> FlowStack:
        """The flow over standardized coordinates."""
        return self.model.flow

    def expand(self, batch_shape, _instance=None) -> FlowDistribution:
        return FlowDistribution(
            self.base_dist.expand(batch_shape), self.transforms, validate_args=self._validate_args
        )

    def __repr__(self) -> str:
        name = self.spec.get("family") or "layers"
        return f"FittedDensity({name}, dim={self.model.dim}, batch_shape={tuple(self.batch_shape)})"


class ConditionalFittedDensity(_SaveLoad, ConditionalDistribution):
    """A conditional density ``p(x | h)`` fitted to data: ``condition(h)`` returns the
    :class:`FittedDensity` of ``x`` given each row of ``h``.

    Example:
        >>> density = fit_density("maf", x, context=y)  # doctest: +SKIP
        >>> density.condition(y_new).sample()            # one x per row of y_new
        >>> density.log_prob(x, y)                       # log p(x_i | y_i) per row
    """

    def __init__(self, model: DensityModel, spec: dict, history: FitHistory | None = None):
        self.model = model
        self.spec = spec
        self.history = history if history is not None else FitHistory()

    @property
    def flow(self) -> FlowStack:
        return self.model.flow

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.model.dim])

    def condition(self, context: torch.Tensor) -> FittedDensity:
        """The density of ``x`` given ``context`` (shape ``batch + (context_dim,)``)."""
        reference = self.model.standardization.shift
        if not isinstance(context, torch.Tensor):
            context = torch.as_tensor(context, dtype=reference.dtype, device=reference.device)
        if context.dim() == 0 or context.shape[-1] != self.model.context_dim:
            raise ValueError(
                f"context must have {self.model.context_dim} entries in its last dimension, got "
                f"shape {tuple(context.shape)}"
            )
        if context.device != reference.device:
            raise ValueError(
                f"context is on {context.device} but the density is on {reference.device}: "
                "move one of them (density.model.to(device))"
            )
        return FittedDensity(self.model, self.spec, self.history, context.to(reference.dtype))

    def log_prob(self, value: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``log p(value_i | context_i)``."""
        return self.condition(context).log_prob(value)

    def __repr__(self) -> str:
        name = self.spec.get("family") or "layers"
        return (
            f"ConditionalFittedDensity({name}, dim={self.model.dim}, "
            f"context_dim={self.model.context_dim})"
        )


def build_flow(spec: dict) -> FlowStack:
    """The flow a spec describes (``family``, ``dim``, ``context_dim``, ``num_transforms``,
    ``options``), freshly initialized."""
    return make_flow(
        spec["family"],
        spec["dim"],
        spec["context_dim"],
        spec["num_transforms"],
        **spec["options"],
    )


def load_density(
    path: str | os.PathLike,
    flow: Sequence[Transform] | None = None,
    map_location: str | torch.device | None = None,
) -> FittedDensity | ConditionalFittedDensity:
    """Rebuilds a density written by :meth:`FittedDensity.save`.

    A density of a registered family is rebuilt with ``make_flow`` from the saved family and
    options, then its ``state_dict`` is loaded (strictly). A density fitted to a list of layers
    needs the same layers again (``flow=``, freshly built), since the file holds their
    parameters, not their code. The file is read with ``torch.load(weights_only=True)``.

    Example:
        >>> density.save("digits.pt")  # doctest: +SKIP
        >>> again = load_density("digits.pt")
        >>> torch.equal(again.log_prob(x), density.log_prob(x))
        True
    """
    saved = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FILE_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a density saved by pyroflows")
    if saved.get("version", 0) > FILE_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} was written by a newer pyroflows (format version "
            f"{saved['version']}, this one reads up to {FILE_VERSION})"
        )
    spec = saved["spec"]
    if spec.get("family") is None:
        if flow is None:
            raise ValueError(
                "this density was fitted to a list of layers: pass the same layers, freshly "
                "built, as load_density(path, flow=layers)"
            )
        stack = FlowStack(list(flow), spec["dim"], spec["context_dim"])
    else:
        if flow is not None:
            raise ValueError(
                f"this density is of the registered family {spec['family']!r}, which load "
                "rebuilds itself: leave flow= out"
            )
        stack = build_flow(spec)
        stack.family = spec["family"]
    state = saved["state_dict"]
    shift = state["standardization.shift"]
    model = DensityModel(
        stack,
        shift,
        state["standardization.scale"],
        state["context_shift"],
        state["context_scale"],
    )
    model.to(device=shift.device, dtype=shift.dtype)
    model.load_state_dict(state)
    model.eval()
    history = FitHistory(**saved.get("history", {}))
    if spec["context_dim"] > 0:
        return ConditionalFittedDensity(model, spec, history)
    return FittedDensity(model, spec, history)
