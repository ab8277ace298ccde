"""``SVIModule``: stochastic variational inference as a PyTorch Lightning module.

Lightning and ``torch.distributed`` do the distributed work: with ``Trainer(strategy="ddp",
devices=N)`` every process runs the ELBO on its own batches, DDP averages the gradients, and every
process applies the same update, so the guide's parameters stay identical on all processes. If
each process's loss estimates the full-data free energy (the model weighs its batch by ``N / B``,
see :mod:`pyroflows.lightning.batch_checks`), the averaged gradient is an unbiased estimate of the
full-data gradient with ``N`` times the batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import lightning.pytorch as pl
import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.optim.clipped_adam import ClippedAdam
from torch import nn

from pyroflows._pyro_internals import give_local_param_state
from pyroflows.diagnostics.free_energy import FreeEnergyReport, free_energy_report
from pyroflows.infer.fit import FitResult, NonFiniteLossError, _gradients_are_finite
from pyroflows.lightning.batch_checks import (
    batch_arguments,
    batch_size_of,
    check_batch_is_scaled,
    check_joint_guide_latents,
    check_model_uses_batch,
    trace_model_and_guide,
)

__all__ = ["SVIModule"]


class SVIModule(pl.LightningModule):
    """Trains a Pyro model and guide on batches from a ``DataLoader``, on one or many processes.

    Each training step calls ``model(*batch)`` and ``guide(*batch)`` (a tensor batch is the single
    argument), computes the ELBO with ``num_particles`` vectorized particles, and takes one step
    of Pyro's ``ClippedAdam`` (Adam with elementwise gradient clipping at ``clip_norm``), the
    learning rate falling geometrically from ``lr`` to ``lr * lr_decay`` over the trainer's
    steps, as in :func:`pyroflows.fit`. The model declares the full data size in its plate, so
    that each batch's loss estimates the full-data free energy ``F = -ELBO``::

        def model(x):
            loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
            with pyro.plate("data", N, subsample_size=len(x)):   # N data points in all
                pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    Any Pyro guide works: pyroflows' (AutoIAF, AutoNAF, ...), Pyro's autoguides, or a guide
    function; parameters created by ``pyro.param`` outside any module are trained too. The guide
    is set up on the first training batch (or ``init_batch``) when the trainer starts, before the
    optimizer and DDP see the parameters, and the batch is checked: a joint guide with a local
    latent inside a subsampled plate, a model that ignores its batch, and a model with global
    latents that weighs a batch as the whole data set each raise a ``ValueError`` that says what
    to do (see :mod:`pyroflows.lightning.batch_checks`; ``check_batch=False`` skips the last two).

    NaN protection as in :func:`pyroflows.fit`: when the loss or a gradient is NaN or infinite on
    any process, no process applies that update, and every process raises
    :class:`~pyroflows.NonFiniteLossError` naming the step (``error.result`` keeps the history).

    With several processes, each process ``r > 0`` reseeds torch with ``initial_seed + r`` when
    training starts, so that the processes draw independent particles even when a script seeds
    them all alike; the data order is the DistributedSampler's.

    Pyro's own Lightning example needs ``pyro.settings.set(module_local_params=True)``;
    SVIModule works with the setting on or off. A Pyro module built while it was off, used after
    it was switched on, gets the empty local parameter state Pyro would have given it.

    After ``Trainer.fit``: :attr:`free_energy` (the free energy per step, averaged over
    processes), :attr:`wall_time`, :meth:`report` (the free-energy report on data you pass, e.g.
    the whole data set) and :meth:`fit_result` (both, as the :class:`~pyroflows.FitResult` that
    :func:`pyroflows.fit` returns). With ``strategy="ddp"`` the script runs once per process:
    report from ``trainer.is_global_zero`` only.

    Args:
        model: a Pyro model called as ``model(*batch, **step_kwargs(step))``.
        guide: a Pyro guide with the model's signature.
        lr: Adam's initial learning rate.
        num_particles: ELBO particles per process and step (default 1: with mini-batches the
            subsampling noise dominates, and each process adds its own particles).
        vectorize_particles: draw the particles in one vectorized pass.
        lr_decay: the final learning rate as a fraction of ``lr`` (1.0: constant).
        clip_norm: elementwise gradient clipping of ``ClippedAdam``.
        elbo: an ELBO with ``differentiable_loss`` (default ``Trace_ELBO``).
        optimizer: ``parameters -> torch.optim.Optimizer``, to replace ``ClippedAdam`` (then
            ``lr``, ``lr_decay`` and ``clip_norm`` are unused), e.g.
            ``lambda params: torch.optim.Adamax(params, lr=5e-4)``.
        init_batch: a batch to set up the guide with (default: the first training batch).
        step_kwargs: ``step -> dict`` of keyword arguments for the model and guide at each
            (1-based) step, e.g. ``lambda step: {"kl_scale": min(1.0, step / 1000)}``.
        check_batch: run the batch checks that cannot be certain (the model ignores its batch;
            the batch is not weighed to the data set's size).

    Example:
        >>> import lightning
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(x), batch_size=100, shuffle=True)  # doctest: +SKIP
        >>> module = SVIModule(model, pyroflows.AutoIAF(model), lr=1e-2)
        >>> trainer = lightning.Trainer(max_epochs=20, strategy="ddp", accelerator="cpu",
        ...                             devices=2)
        >>> trainer.fit(module, loader)
        >>> if trainer.is_global_zero:
        ...     print(module.fit_result(x))  # free energy, IW bound, k-hat on the full data
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *,
        lr: float = 1e-2,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        lr_decay: float = 0.1,
        clip_norm: float = 10.0,
        elbo: ELBO | None = None,
        optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        init_batch: object | None = None,
        step_kwargs: Callable[[int], Mapping] | None = None,
        check_batch: bool = True,
    ):
        super().__init__()
        if not (isinstance(lr, int | float) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay is the final fraction of lr, in (0, 1]; got {lr_decay}")
        if not (isinstance(num_particles, int) and num_particles >= 1):
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        if elbo is None:
            elbo = Trace_ELBO(
                num_particles=num_particles,
                vectorize_particles=vectorize_particles and num_particles > 1,
            )
        if not hasattr(elbo, "differentiable_loss"):
            raise TypeError(
                f"SVIModule needs an ELBO with differentiable_loss; {type(elbo).__name__} has "
                "none. Use Trace_ELBO, TraceMeanField_ELBO or TraceEnum_ELBO."
            )
        self.automatic_optimization = False  # one step per batch, skipped when non-finite
        self.model = model  # registered as a submodule when it is one
        self.guide = guide
        owners = []
        for function in (model, guide):
            owner = getattr(function, "__self__", None)  # e.g. BernoulliVAE.model
            if isinstance(owner, nn.Module) and owner is not model and owner is not guide:
                if all(owner is not known for known in owners):
                    owners.append(owner)
        self.method_owners = nn.ModuleList(owners)
        #: parameters that ``pyro.param`` created outside any module, adopted at set-up
        self.store_parameters = nn.ParameterDict()
        self.lr = float(lr)
        self.lr_decay = float(lr_decay)
        self.clip_norm = float(clip_norm)
        self.elbo = elbo
        self.optimizer_factory = optimizer
        self.init_batch = init_batch
        self.step_kwargs = step_kwargs
        self.check_batch = check_batch
        self.history: list[float] = []
        self.wall_time = 0.0
        self._train_start: float | None = None
        self._trained: list[nn.Parameter] = []
        _give_local_param_state(self)

    # ---- results -----------------------------------------------------------------------------

    @property
    def free_energy(self) -> np.ndarray:
        """``F = -ELBO`` at each step, averaged over processes (the loss the update used)."""
        return np.asarray(self.history, dtype=float)

    def settings(self) -> dict[str, object]:
        """The optimization settings, as :func:`pyroflows.fit` records them."""
        guide = self.guide
        return {
            "steps": len(self.history),
            "lr": self.lr,
            "lr_decay": self.lr_decay,
            "clip_norm": self.clip_norm,
            "num_particles": self.elbo.num_particles,
            "elbo": type(self.elbo).__name__,
            "optimizer": "ClippedAdam" if self.optimizer_factory is None else "custom",
            "processes": self.trainer.world_size if self._trainer is not None else 1,
            "guide": guide.settings() if hasattr(guide, "settings") else type(guide).__name__,
        }

    def report(self, *args, num_samples: int = 2000, **kwargs) -> FreeEnergyReport:
        """The free-energy report (F, IW bound, PSIS k-hat) of the guide on ``model(*args)``.

        Pass the data the report is about, e.g. the whole data set; tensors are moved to the
        guide's device.
        """
        args, kwargs = self._to_parameter_device(args, kwargs)
        return free_energy_report(self.model, self.guide, *args, num_samples=num_samples, **kwargs)

    def fit_result(self, *args, report_samples: int | None = 2000, **kwargs) -> FitResult:
        """The history, wall time and report as a :class:`~pyroflows.FitResult` (``print`` it).

        ``report_samples=None`` skips the report.
        """
        report = None
        if report_samples:
            report = self.report(*args, num_samples=report_samples, **kwargs)
        return FitResult(self.guide, self.free_energy, self.wall_time, report, self.settings())

    # ---- set-up --------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Sets the guide up on one batch before the optimizer and DDP see the parameters."""
        if stage != "fit":
            return
        _give_local_param_state(self)
        loader = _training_loader(self.trainer)
        batch = self.init_batch
        if batch is None:
            if loader is None:
                raise ValueError(
                    "SVIModule sets the guide up on the first training batch, but found no "
                    "training DataLoader; pass init_batch= (one batch, as the DataLoader gives "
                    "it) to SVIModule."
                )
            batch = next(iter(loader))
        dataset = getattr(loader, "dataset", None)
        try:
            dataset_size = len(dataset) if dataset is not None else None
        except TypeError:  # an IterableDataset without a length
            dataset_size = None
        self.initialize(batch, dataset_size=dataset_size)

    def initialize(self, batch: object, dataset_size: int | None = None) -> None:
        """Runs the model and guide once on ``batch``: creates the parameters, adopts those of
        ``pyro.param`` statements outside modules, and runs the batch checks."""
        args = batch_arguments(batch)
        kwargs = self._kwargs_for_step(1)
        with poutine.trace(param_only=True) as capture:
            try:
                self.elbo.loss(self.model, self.guide, *args, **kwargs)
            except ValueError as error:
                if "Shape mismatch inside plate" not in str(error):
                    raise
                size = batch_size_of(args)
                raise ValueError(
                    f"{str(error).splitlines()[0]}: SVIModule calls model(*batch) with batches "
                    f"of {size} rows, so a plate "
                    "over the data must declare the full size and take the batch as its "
                    "subsample, e.g. pyro.plate('data', N, subsample_size=len(x)) or "
                    "subsample=indices."
                ) from error
        self._adopt_store_parameters(capture.trace)
        guide_trace, model_trace = trace_model_and_guide(self.model, self.guide, args, kwargs)
        check_joint_guide_latents(self.guide, model_trace)
        if self.check_batch:
            check_model_uses_batch(self.model, guide_trace, args, kwargs)
            check_batch_is_scaled(model_trace, batch_size_of(args), dataset_size)

    def _adopt_store_parameters(self, param_trace) -> None:
        """Parameters of ``pyro.param`` statements outside modules become this module's, so that
        the optimizer, DDP and device moves see them; the param store keeps the same tensors."""
        known = {id(p) for p in self.parameters()}
        store = pyro.get_param_store()
        strays: dict[str, torch.Tensor] = {}
        for site in param_trace.nodes.values():
            if site["type"] != "param":
                continue
            value = site["value"]
            # module-local parameters come back as they are, the store's with a weak reference
            unconstrained = value.unconstrained() if hasattr(value, "unconstrained") else value
            if id(unconstrained) in known:
                continue
            name = store.param_name(unconstrained)
            if name is None:  # a module-local parameter of a module we do not hold
                raise ValueError(
                    f"the parameter '{site['name']}' belongs to no module SVIModule holds and is "
                    "not in Pyro's param store; pass the module that owns it as the model or "
                    "guide (or as an attribute of them)."
                )
            strays[name] = unconstrained
        if not strays:
            return
        constraints = store.get_state()["constraints"]  # (get_state drops the weak references
        for name, unconstrained in strays.items():  # that .unconstrained() reads: collect first)
            parameter = nn.Parameter(unconstrained.detach())
            store.set_state({"params": {name: parameter}, "constraints": {name: constraints[name]}})
            self.store_parameters[f"p{len(self.store_parameters)}"] = parameter

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self._trained = [p for p in self.parameters() if p.requires_grad]
        if not self._trained:
            raise ValueError(
                "the model and guide have no parameters to train (SVIModule sets the guide up "
                "in its setup hook: train it with Trainer.fit)."
            )
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self._trained)
        lrd = 1.0
        if self.lr_decay < 1:
            steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(steps):
                raise ValueError(
                    "lr_decay < 1 needs a known number of steps: give the Trainer max_epochs or "
                    "max_steps, or pass lr_decay=1.0."
                )
            lrd = self.lr_decay ** (1.0 / max(steps, 1))
        return ClippedAdam(self._trained, lr=self.lr, clip_norm=self.clip_norm, lrd=lrd)

    # ---- training ------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        rank = self.trainer.global_rank
        if self.trainer.world_size > 1 and rank > 0:
            torch.manual_seed((torch.initial_seed() + rank) % 2**63)
        self._train_start = time.perf_counter()

    def on_train_end(self) -> None:
        if self._train_start is not None:
            self.wall_time += time.perf_counter() - self._train_start
            self._train_start = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        step = len(self.history) + 1
        args = batch_arguments(batch)
        kwargs = self._kwargs_for_step(step)
        optimizer = self.optimizers()
        problem = None
        try:
            loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        except ValueError as error:
            if "found invalid values" not in str(error):
                raise
            # Pyro's argument validation caught a NaN; every process must still take part in
            # the gradient all-reduce, so this one contributes zeros
            problem = f"a NaN reached a distribution ({str(error).splitlines()[0]})"
            loss = sum((p * 0).sum() for p in self._trained) + math.nan
        self.manual_backward(loss)
        local_value = loss.detach().reshape(())
        finite_here = problem is None and bool(torch.isfinite(local_value))
        # one collective: the summed loss and the number of processes whose loss was finite
        totals = self.trainer.strategy.reduce(
            torch.stack([local_value, local_value.new_tensor(float(finite_here))]),
            reduce_op="sum",
        )
        world = self.trainer.world_size
        mean_loss = float(totals[0]) / world
        if problem is None:
            if not finite_here:
                problem = f"the loss became {float(local_value)}"
            elif int(totals[1]) < world:
                problem = f"the loss became non-finite on {world - int(totals[1])} process(es)"
            elif not _gradients_are_finite(self._trained):  # gradients are averaged by now
                problem = "a gradient became non-finite"
        if problem is not None:
            optimizer.zero_grad(set_to_none=True)
            raise _non_finite_error(step, mean_loss, problem, self)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.history.append(mean_loss)
        self.log("free_energy", mean_loss, prog_bar=True, batch_size=batch_size_of(args))
        return loss.detach()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pyroflows_free_energy"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("pyroflows_free_energy", []))

    # ---- helpers -------------------------------------------------------------------------------

    def _kwargs_for_step(self, step: int) -> dict:
        return dict(self.step_kwargs(step)) if self.step_kwargs is not None else {}

    def _to_parameter_device(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        parameter = next(self.parameters(), None)
        if parameter is None:
            return args, kwargs

        def move(value):
            return value.to(parameter.device) if isinstance(value, torch.Tensor) else value

        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}


def _non_finite_error(step: int, loss: float, problem: str, module: SVIModule) -> Exception:
    result = FitResult(module.guide, module.free_energy, module.wall_time, None, module.settings())
    error = NonFiniteLossError(step, loss, problem, result)
    # fit's message speaks of "fit"; this one is SVIModule's training
    error.args = (str(error).replace(" of fit ", " of SVIModule training ", 1),)
    return error


def _training_loader(trainer: pl.Trainer):
    """The training DataLoader given to ``Trainer.fit`` (or by a datamodule), or None."""
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    if source is None or not source.is_defined():
        return None
    return source.dataloader()


def _give_local_param_state(module: nn.Module) -> None:
    """With ``module_local_params`` on, a PyroModule built while it was off lacks the local
    parameter state Pyro would have given it (and Pyro fails with ``'_Context' object has no
    attribute 'param_state'``); give it the empty one Pyro gives at construction."""
    if not pyro.settings.get("module_local_params"):
        return
    give_local_param_state(module)
