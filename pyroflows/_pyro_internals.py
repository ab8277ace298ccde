"""Every use of Pyro's private API in pyroflows, in one place, each with a test
(``tests/test_pyro_internals.py``) so that a Pyro release that changes one fails there, loudly,
and not as a wrong answer elsewhere.

Pyro 1.9 offers no public way to do these:

* :func:`unpack_latent`: split a packed latent vector into an ``AutoContinuous`` guide's sites
  (``AutoContinuous._unpack_latent``);
* :func:`init_loc`, :func:`prototype_hide_fn`, :func:`pyro_name`: an ``AutoContinuous``
  guide's initial packed latent, the filter its prototype trace uses, and its name in the param
  store (``_init_loc``, ``_prototype_hide_fn``, ``_pyro_name``);
* :func:`param_name`: the param-store name of a module's parameter
  (``pyro.params.param_with_module_name``);
* :func:`is_subsample_site`: whether a trace site is a plate's subsample site
  (``pyro.poutine.util.site_is_subsample``);
* :func:`torch_optimizers`: the per-parameter torch optimizers of a ``PyroOptim``
  (``PyroOptim.optim_objs``), to set their step size;
* :class:`ScaledClippedAdam`: Pyro's ``ClippedAdam`` with a step size per parameter tensor
  (it overrides ``PyroOptim._get_optim_args``: Pyro's own per-parameter arguments see only
  the parameter's name);
* :func:`give_local_param_state`: the per-module parameter state a ``PyroModule`` gets at
  construction when ``module_local_params`` is on (``PyroModule._pyro_context.param_state``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import torch
from pyro.nn import PyroModule
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam as TorchClippedAdam
from pyro.params import param_with_module_name
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

__all__ = [
    "ScaledClippedAdam",
    "give_local_param_state",
    "init_loc",
    "is_subsample_site",
    "param_name",
    "prototype_hide_fn",
    "pyro_name",
    "torch_optimizers",
    "unpack_latent",
]


def unpack_latent(guide, latent: torch.Tensor) -> Iterator[tuple[dict, torch.Tensor]]:
    """``(site, unconstrained value)`` for each latent site of an ``AutoContinuous`` guide."""
    return guide._unpack_latent(latent)


def init_loc(guide) -> torch.Tensor:
    """The packed unconstrained latent at the guide's ``init_loc_fn`` values."""
    return guide._init_loc()


def forked_devices() -> list[int]:
    """The CUDA devices whose random state ``torch.random.fork_rng`` must save and restore
    (the current one once CUDA is in use, none otherwise)."""
    return [torch.cuda.current_device()] if torch.cuda.is_initialized() else []


def prior_draws(guide, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` packed unconstrained latents, each site drawn from its prior given its
    parents' ``init_loc_fn`` values (the distributions of the guide's prototype trace), from a
    seeded random state (the global one is left as it was); shape ``(count, latent_dim)``."""
    parts = []
    with torch.no_grad(), torch.random.fork_rng(devices=forked_devices()):
        torch.manual_seed(seed)
        for _, site in guide.prototype_trace.iter_stochastic_nodes():
            value = site["fn"].sample((count,))
            unconstrained = biject_to(site["fn"].support).inv(value)
            parts.append(unconstrained.reshape(count, -1))
    return torch.cat(parts, dim=1)


def prototype_hide_fn(guide) -> Callable:
    """The filter an ``AutoGuide`` hides sites with when it traces the model's prototype."""
    return guide._prototype_hide_fn


def pyro_name(guide) -> str:
    """The guide's name in Pyro's param store (its class name unless set otherwise)."""
    return guide._pyro_name


def param_name(prefix: str, name: str) -> str:
    """The param-store name of parameter ``name`` of a module registered as ``prefix``."""
    return param_with_module_name(prefix, name)


def is_subsample_site(site: dict) -> bool:
    """Whether a trace site is the subsample site of a ``pyro.plate``."""
    return site_is_subsample(site)


def torch_optimizers(optim: PyroOptim):
    """The torch optimizers a ``PyroOptim`` has created, one per parameter, as
    ``(parameter, optimizer)`` pairs."""
    return optim.optim_objs.items()


#: Pyro's ``ClippedAdam`` defaults (``lr``, ``eps``, ``clip_norm``, ...), from its signature,
#: which :class:`ScaledClippedAdam` scales where the user gave none
_CLIPPED_ADAM_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(TorchClippedAdam).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


class ScaledClippedAdam(PyroOptim):
    """Pyro's ``ClippedAdam`` whose step size for a parameter tensor ``p`` is
    ``lr · lr_multiplier(p)`` (``optim_args`` as ``pyro.optim.ClippedAdam``'s). The multiplier
    is asked once per parameter, when its optimizer is created, and kept in
    :attr:`lr_multipliers` (parameter -> multiplier) for whoever sets the rate later.

    A multiplier ``c`` undoes a fixed scale ``s = 1/c`` by which a module multiplies ``p``
    (an ``output_step_scale``): ``p``'s gradients are ``s`` times those of the product, so its
    ``eps`` and gradient clip are also divided by ``c``. Adam's step on ``p`` is then
    ``(lr/s) · s·m / (s·√v + s·eps)``, and the product moves exactly as an unscaled parameter
    would (with ``eps`` alone kept, a parameter whose gradients are near ``eps`` moved
    differently: AutoNSF's bins far in its tails, 12% of the splines' parameters' norm after 240
    steps).

    Example:
        >>> optim = ScaledClippedAdam({"lr": 1e-2}, lambda param: 1.0)
    """

    def __init__(self, optim_args: dict, lr_multiplier: Callable[[torch.Tensor], float]):
        super().__init__(TorchClippedAdam, optim_args)
        self.lr_multiplier = lr_multiplier
        self.lr_multipliers: dict[torch.Tensor, float] = {}

    def _get_optim_args(self, param):
        optim_args = dict(super()._get_optim_args(param))
        multiplier = self.lr_multipliers[param] = self.lr_multiplier(param)
        optim_args["lr"] = optim_args.get("lr", _CLIPPED_ADAM_DEFAULTS["lr"]) * multiplier
        if multiplier != 1.0:
            for name in ("eps", "clip_norm"):
                optim_args[name] = optim_args.get(name, _CLIPPED_ADAM_DEFAULTS[name]) / multiplier
        return optim_args


def give_local_param_state(module: torch.nn.Module) -> None:
    """With ``module_local_params`` on, gives every ``PyroModule`` in ``module`` that lacks it
    the empty local parameter state Pyro gives a module built while the setting is on."""
    for submodule in module.modules():
        if isinstance(submodule, PyroModule):
            context = submodule._pyro_context
            if not hasattr(context, "param_state"):
                context.param_state = {"params": {}, "constraints": {}}
