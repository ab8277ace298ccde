"""``fit_density``: a flow fitted to data by maximum likelihood, with early stopping."""

from __future__ import annotations

import copy
import math
import numbers
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch.distributions import Transform
from tqdm.auto import tqdm

from pyroflows._validation import check_count, check_flag, check_positive
from pyroflows.density.data import as_matrix, check_context_rows, constant_columns, split_rows
from pyroflows.density.model import (
    ConditionalFittedDensity,
    DensityModel,
    FitHistory,
    FittedDensity,
    build_flow,
)
from pyroflows.infer.fit import NonFiniteLossError
from pyroflows.transforms.layer import FlowLayer
from pyroflows.transforms.registry import flow_family
from pyroflows.transforms.stack import FlowStack

__all__ = ["DEFAULT_NUM_TRANSFORMS", "NonFiniteDensityLossError", "fit_density"]

#: layers of a density when the caller does not say: the MAF paper's 5 (a family whose own
#: default is larger, planar's 16, keeps its own)
DEFAULT_NUM_TRANSFORMS = 5

#: rows per chunk when scoring the validation set (memory, not results)
_CHUNK = 8192


class NonFiniteDensityLossError(NonFiniteLossError):
    """The loss (or a gradient) became NaN or infinite in :func:`fit_density` or
    :func:`~pyroflows.density.distill`.

    That update was not applied, and the parameters were set back to the best ones so far
    (the lowest validation loss; the last finite step's where there is no validation split).
    ``error.result`` is the density with those parameters, ``error.result.history`` the
    history up to the failed step.
    """

    def __init__(self, step: int, epoch: int, loss: float, what: str, result, where: str):
        self.step = step
        self.epoch = epoch
        self.loss = loss
        self.result = result
        FloatingPointError.__init__(
            self,
            f"{what} at step {step} (epoch {epoch}) of {where} (loss {loss}); that update was "
            f"not applied and the parameters are the best ones so far ({result.history.stopped_by}"
            "); error.result is that density. Try a smaller lr, standardize=True, or check the "
            "data for extreme values.",
        )


def _thread_clock() -> float:
    return time.thread_time()


@contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Runs the block with torch's random state seeded by ``seed`` and restored afterwards
    (the caller's random state is left alone); ``seed=None`` uses the current state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _has_batch_norm(flow: FlowStack) -> bool:
    return any(type(layer).__name__ == "BatchNorm" for layer in flow.modules())


def _spec_and_flow(
    flow: str | Sequence[Transform],
    dim: int,
    context_dim: int,
    num_transforms: int | None,
    options: dict,
) -> tuple[dict, FlowStack]:
    """The flow to fit and the spec that rebuilds it (``family`` None for a list of layers)."""
    if isinstance(flow, str):
        family = flow_family(flow)
        if num_transforms is None:
            num_transforms = max(DEFAULT_NUM_TRANSFORMS, family.default_num_transforms)
        spec = {
            "family": family.name,
            "dim": dim,
            "context_dim": context_dim,
            "num_transforms": num_transforms,
            "options": dict(options),
        }
        if "direction" not in options:
            # the density direction (one pass per layer) wherever the family has a direction
            try:
                stack = build_flow({**spec, "options": {**options, "direction": "maf"}})
                spec["options"]["direction"] = "maf"
                stack.family = family.name
                return spec, stack
            except TypeError as error:
                if "direction" not in str(error):
                    raise
        stack = build_flow(spec)
        stack.family = family.name
        return spec, stack
    if isinstance(flow, Transform):
        flow = [flow]
    if not isinstance(flow, Sequence) or not all(isinstance(t, Transform) for t in flow):
        raise TypeError(
            "flow must be a registered family name (pyroflows.available_flows()) or a list of "
            f"transforms, got {type(flow).__name__}"
        )
    if num_transforms is not None or options:
        raise TypeError(
            "num_transforms and family options apply to a family name, not to a list of layers: "
            f"got {sorted(options) + (['num_transforms'] if num_transforms is not None else [])}"
        )
    for layer in flow:
        if not isinstance(layer, FlowLayer) and hasattr(layer, "condition") and context_dim:
            raise TypeError(
                f"{type(layer).__name__} is a conditional transform that is not a pyroflows "
                "layer: fit_density passes the context to pyroflows layers only (build it with "
                "pyroflows.make_flow(..., context_dim=...))"
            )
    for layer in flow:
        if isinstance(layer, FlowLayer) and layer.input_dim != dim:
            raise ValueError(
                f"a layer of the flow has input_dim={layer.input_dim}, but the data have {dim} "
                "columns"
            )
    stack = FlowStack(list(flow), dim, context_dim)
    spec = {
        "family": None,
        "dim": dim,
        "context_dim": context_dim,
        "num_transforms": len(flow),
        "options": {},
    }
    return spec, stack


def _held_out(validation, context_given: bool, like: torch.Tensor, context_like):
    """Explicit validation data: ``(x, context)``, or None when ``validation`` is a size."""
    if isinstance(validation, numbers.Real):  # a fraction or a count (NumPy scalars too)
        return None
    if isinstance(validation, tuple) and context_given:
        if len(validation) != 2:
            raise ValueError("validation must be (data, context) for a conditional density")
        x = as_matrix("validation data", validation[0], like)
        h = as_matrix("validation context", validation[1], context_like)
        check_context_rows(x, h, " (validation)")
        return x, h
    if (
        isinstance(validation, torch.Tensor)
        or hasattr(validation, "__array__")
        or isinstance(validation, list | tuple)
    ):
        if context_given:
            raise ValueError(
                "held-out validation data of a conditional density must be a pair (data, context)"
            )
        return as_matrix("validation data", validation, like), None
    return None


def fit_density(
    flow: str | Sequence[Transform],
    data: torch.Tensor,
    *,
    context: torch.Tensor | None = None,
    validation: float | int | torch.Tensor | tuple = 0.1,
    num_transforms: int | None = None,
    standardize: bool = True,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_epochs: int = 1000,
    patience: int = 30,
    clip_value: float = 10.0,
    seed: int | None = 0,
    progress: bool | None = None,
    **options,
) -> FittedDensity | ConditionalFittedDensity:
    r"""Fits a normalizing flow to the rows of ``data`` by maximum likelihood.

    The model is ``x = μ + σ ⊙ f(u; h)``, ``u ~ N(0, I)``, with ``μ, σ`` the training rows' mean
    and standard deviation per column (``standardize=True``) and ``f`` the flow, so

    .. math::

        \log p(x \mid h) = \log \mathcal N(u; 0, I) + \log\left|\det \frac{\partial u}
        {\partial z}\right| - \sum_i \log σ_i, \qquad z = (x - μ) / σ,\; u = f^{-1}(z; h),

    a density of the *original* data. Adam minimizes the mean negative log-likelihood of
    shuffled minibatches; after each epoch the validation rows are scored and the parameters
    with the lowest validation loss are kept; training stops when it has not improved for
    ``patience`` epochs (or after ``max_epochs``).

    Why standardize: the flows' parameterizations assume data of unit scale (an affine layer's
    log-scale is bounded to (-4, 1) per layer, a spline's knots lie in [-4, 4], the networks
    start at the identity), so raw data in kilograms or in [0, 1e-3] would need layers that
    first learn to rescale; standardizing makes the fit invariant to units and costs nothing in
    the density, whose Jacobian includes ``σ``.

    Args:
        flow: a registered family name (``pyroflows.available_flows()``; autoregressive
            families are built in the density direction, ``direction="maf"``, unless
            ``direction`` is given) or a list of layers (transforms from ``u`` to ``z``).
        data: ``(N, D)`` rows to fit; a torch tensor keeps its device and floating dtype, an
            array becomes torch's default dtype. Every tensor of the result follows them.
        context: ``(N, C)`` conditioning values, one row per data row: fits ``p(x | h)`` and
            returns a :class:`ConditionalFittedDensity`.
        validation: the held-out rows for early stopping: a fraction in ``[0, 1)`` of the
            rows (drawn with ``seed``), a number of rows, or held-out data (``(data, context)``
            when conditional). ``0`` trains ``max_epochs`` epochs without early stopping.
        num_transforms: layers of a family (default 5, as in the MAF paper).
        standardize: see above; ``False`` fits the data as they are.
        batch_size: rows per step (the rows are split into equal batches of at most this).
        lr, weight_decay: Adam's.
        max_epochs, patience: the stopping rule.
        clip_value: each gradient element is clipped to ``[-clip_value, clip_value]``.
        seed: seeds the flow's initialization, the split and the shuffling (torch's global
            random state is left as it was); ``None`` draws from the global state.
        progress: a tqdm bar over epochs (default: only when stderr is a terminal).
        **options: passed to the family's builder (``hidden_dims``, ``batch_norm``,
            ``num_bins``, ...).

    Returns:
        A :class:`FittedDensity` (a Pyro distribution: ``log_prob``, ``sample``, ``save``), or a
        :class:`ConditionalFittedDensity` (``.condition(h)``) when ``context`` is given, in
        evaluation mode (a ``BatchNorm`` layer uses its running averages); ``.history`` holds
        the losses per epoch and the epoch kept.

    Raises:
        ValueError, TypeError: data that are not 2-D, hold NaN or infinite values (the rows and
            columns are named), have a constant column (a degenerate density), a context with
            another number of rows, too few rows for the split; an argument outside its range.
        NonFiniteDensityLossError: the loss or a gradient became NaN or infinite; it names the
            step, the update is not applied, and ``error.result`` is the density with the best
            parameters so far.

    Example:
        >>> x2 = 2 * torch.randn(2000)
        >>> data = torch.stack([x2**2 / 4 + torch.randn(2000), x2], -1)
        >>> density = fit_density("maf", data)
        >>> density.log_prob(data[:3]).shape, density.sample((5,)).shape
        (torch.Size([3]), torch.Size([5, 2]))
    """
    data = as_matrix("data", data)
    num_rows, dim = data.shape
    context_tensor = None
    if context is not None:
        context_tensor = as_matrix("context", context, data)
        check_context_rows(data, context_tensor)
    context_dim = 0 if context_tensor is None else context_tensor.shape[1]
    batch_size = check_count("batch_size", batch_size, minimum=1)
    lr = check_positive("lr", lr, why=" (Adam's step size, e.g. 1e-3)")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, int | float)
        or not (weight_decay >= 0)
    ):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    max_epochs = check_count("max_epochs", max_epochs, minimum=1)
    patience = check_count("patience", patience, minimum=1)
    clip_value = check_positive("clip_value", clip_value, allow_inf=True)
    standardize = check_flag("standardize", standardize)
    if progress is not None:
        progress = check_flag("progress", progress)
    if seed is not None:
        seed = check_count("seed", seed, minimum=0)

    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    held_out = _held_out(validation, context_tensor is not None, data, context_tensor)
    if held_out is not None:
        train_x, train_h = data, context_tensor
        val_x, val_h = held_out
        if val_x.shape[1] != dim:
            raise ValueError(f"validation data have {val_x.shape[1]} columns but data have {dim}")
        if val_h is not None and val_h.shape[1] != context_dim:
            raise ValueError(
                f"validation context has {val_h.shape[1]} columns but context has {context_dim}"
            )
        if num_rows < 2:
            raise ValueError(f"too few rows: data has {num_rows}, and fitting needs at least 2")
    else:
        train_rows, val_rows = split_rows(num_rows, validation, generator)
        train_rows, val_rows = train_rows.to(data.device), val_rows.to(data.device)
        train_x, val_x = data[train_rows], data[val_rows]
        train_h = val_h = None
        if context_tensor is not None:
            train_h, val_h = context_tensor[train_rows], context_tensor[val_rows]
    constant = constant_columns(train_x)
    if constant:
        raise ValueError(
            f"data columns {constant} are constant over the training rows: a density over them "
            "is degenerate (its likelihood grows without bound). Drop them, or dequantize "
            "(add noise of the data's resolution)"
        )

    if standardize:
        shift, scale = train_x.mean(0), train_x.std(0)
    else:
        shift, scale = torch.zeros_like(train_x[0]), torch.ones_like(train_x[0])
    context_shift = context_scale = None
    if train_h is not None:
        context_shift, context_scale = train_h.mean(0), train_h.std(0)
        if train_h.shape[0] < 2 or not standardize:
            context_shift, context_scale = torch.zeros_like(train_h[0]), torch.ones_like(train_h[0])
        context_scale = torch.where(
            context_scale > 0, context_scale, torch.ones_like(context_scale)
        )

    with _seeded(seed, data.device):
        spec, stack = _spec_and_flow(flow, dim, context_dim, num_transforms, options)
        model = DensityModel(stack, shift, scale, context_shift, context_scale)
        model.to(device=data.device, dtype=data.dtype)
        history = _train(
            model,
            spec,
            train_x,
            train_h,
            val_x,
            val_h,
            generator,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            patience=patience,
            clip_value=clip_value,
            progress=progress,
        )
    if context_tensor is not None:
        return ConditionalFittedDensity(model, spec, history)
    return FittedDensity(model, spec, history)


def _mean_nll(model: DensityModel, x: torch.Tensor, h: torch.Tensor | None) -> float:
    """The mean negative log-likelihood of rows ``x`` (no gradient, chunked)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], _CHUNK):
            stop = start + _CHUNK
            rows = model.log_prob(x[start:stop], None if h is None else h[start:stop])
            total -= float(rows.sum())
    return total / x.shape[0]


def _gradients_are_finite(params: list[torch.Tensor]) -> bool:
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def _backward_checked(
    loss: torch.Tensor, params: list[torch.Tensor], optimizer: torch.optim.Optimizer
) -> tuple[float, str | None]:
    """Clears the gradients and backpropagates ``loss``: ``(its value, None)`` when the loss and
    every gradient are finite, else ``(value, what became non-finite)`` with the gradients
    cleared again, so that the caller's ``optimizer.step()`` is skipped without a trace."""
    optimizer.zero_grad(set_to_none=True)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value, f"the loss became {value}"
    loss.backward()
    if not _gradients_are_finite(params):
        optimizer.zero_grad(set_to_none=True)
        return value, "a gradient became non-finite"
    return value, None


def _state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(
    model: DensityModel,
    spec: dict,
    train_x,
    train_h,
    val_x,
    val_h,
    generator,
    *,
    batch_size,
    lr,
    weight_decay,
    max_epochs,
    patience,
    clip_value,
    progress,
) -> FitHistory:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    num_rows = train_x.shape[0]
    num_batches = max(1, math.ceil(num_rows / batch_size))
    validating = val_x.shape[0] > 0
    history = FitHistory(
        settings={
            "optimizer": "Adam",
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "batches_per_epoch": num_batches,
            "max_epochs": max_epochs,
            "patience": patience,
            "clip_value": clip_value,
            "train_rows": num_rows,
            "validation_rows": val_x.shape[0],
        }
    )
    if progress is None:
        progress = sys.stderr.isatty()
    name = spec.get("family") or "layers"
    bar = tqdm(total=max_epochs, disable=not progress, desc=f"fit_density({name})", leave=False)
    best_state = _state(model)
    best_loss = math.inf
    since_best = 0
    wall, clock = time.perf_counter(), _thread_clock()
    step = 0

    def finish(stopped_by: str) -> None:
        history.stopped_by = stopped_by
        history.wall_seconds = time.perf_counter() - wall
        history.thread_seconds = _thread_clock() - clock
        model.load_state_dict(best_state)
        model.eval()
        bar.close()

    stopped_by = f"max_epochs={max_epochs} reached"
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(num_rows, generator=generator).to(train_x.device)
        epoch_loss = 0.0
        for rows in order.tensor_split(num_batches):
            step += 1
            x = train_x[rows]
            h = None if train_h is None else train_h[rows]
            value, problem = _backward_checked(-model.log_prob(x, h).mean(), params, optimizer)
            if problem is not None:
                if not validating:  # the last finite step's parameters are the best we have
                    best_state = _state(model)
                history.epochs, history.steps = epoch - 1, step - 1
                finish(
                    f"kept epoch {history.best_epoch}'s parameters"
                    if history.best_epoch
                    else "kept the initial parameters"
                )
                density = (
                    ConditionalFittedDensity(model, spec, history)
                    if train_h is not None
                    else FittedDensity(model, spec, history)
                )
                raise NonFiniteDensityLossError(step, epoch, value, problem, density, "fit_density")
            if math.isfinite(clip_value):
                torch.nn.utils.clip_grad_value_(params, clip_value)
            optimizer.step()
            epoch_loss += value * rows.numel()
        history.train_loss.append(epoch_loss / num_rows)
        history.epochs, history.steps = epoch, step
        if validating:
            model.eval()
            val_loss = _mean_nll(model, val_x, val_h)
            history.validation_loss.append(val_loss)
            if val_loss < best_loss:  # a NaN never is
                best_loss, best_state, since_best = val_loss, _state(model), 0
                history.best_epoch = epoch
            else:
                since_best += 1
        else:
            history.best_epoch = epoch
            best_state = _state(model)
        bar.update(1)
        if progress:
            postfix = {"train": f"{history.train_loss[-1]:.3f}"}
            if validating:
                postfix["val"] = f"{history.validation_loss[-1]:.3f}"
                postfix["best"] = f"{best_loss:.3f}"
            bar.set_postfix(postfix, refresh=False)
        if validating and since_best >= patience:
            stopped_by = (
                f"early stopping: the validation loss has not improved for {patience} epochs "
                f"since epoch {history.best_epoch}"
            )
            break
    if validating and history.best_epoch == 0:
        stopped_by += "; no epoch had a finite validation loss, so the initial parameters were kept"
    finish(stopped_by)
    return history


def copy_density(density: FittedDensity) -> FittedDensity:
    """An independent copy (its own parameters) of an unconditional density."""
    model = copy.deepcopy(density.model)
    return FittedDensity(model, copy.deepcopy(density.spec), copy.deepcopy(density.history))
