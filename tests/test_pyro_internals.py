"""One test per use of Pyro's private API (``pyroflows._pyro_internals``): if a Pyro release
changes one, it fails here."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.nn import PyroModule
from pyro.optim import ClippedAdam

from pyroflows import _pyro_internals as internals


def model(data):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(data), subsample_size=3):
        pyro.sample("obs", dist.Normal(loc.sum(), scale), obs=data[:3])


def _guide():
    guide = AutoDiagonalNormal(model)
    guide(torch.randn(10))
    return guide


def test_unpack_latent_and_init_loc():
    guide = _guide()
    latent = internals.init_loc(guide)
    assert latent.shape == (3,)
    sites = [(site["name"], value.shape) for site, value in internals.unpack_latent(guide, latent)]
    assert sites == [("scale", torch.Size([])), ("loc", torch.Size([2]))]


def test_prototype_hide_fn_and_pyro_name():
    guide = _guide()
    hide = internals.prototype_hide_fn(guide)
    trace = pyro.poutine.trace(model).get_trace(torch.randn(10))
    assert hide(trace.nodes["obs"])  # observed: hidden from the prototype
    assert not hide(trace.nodes["loc"])
    assert internals.pyro_name(guide) == "AutoDiagonalNormal"


def test_param_name():
    assert internals.param_name("AutoIAF.flow", "0.weight") == "AutoIAF.flow$$$0.weight"


def test_is_subsample_site():
    trace = pyro.poutine.trace(model).get_trace(torch.randn(10))
    assert internals.is_subsample_site(trace.nodes["data"])
    assert not internals.is_subsample_site(trace.nodes["loc"])


def test_torch_optimizers_set_the_step_size():
    guide = _guide()
    optim = ClippedAdam({"lr": 0.1})
    SVI(model, guide, optim, Trace_ELBO()).step(torch.randn(10))
    pairs = list(internals.torch_optimizers(optim))
    assert pairs and all(isinstance(o, torch.optim.Optimizer) for _, o in pairs)
    assert {id(p) for p, _ in pairs} == {id(p) for p in guide.parameters()}
    assert all(group["lr"] == 0.1 for _, o in pairs for group in o.param_groups)


def test_scaled_clipped_adam_gives_each_parameter_its_step_size():
    """``_get_optim_args`` is what ``PyroOptim`` calls to build a parameter's optimizer."""
    guide = _guide()
    loc = guide.loc
    optim = internals.ScaledClippedAdam(
        {"lr": 0.1, "clip_norm": 5.0}, lambda param: 0.5 if param is loc else 1.0
    )
    SVI(model, guide, optim, Trace_ELBO()).step(torch.randn(10))
    rates = {id(p): o.param_groups[0]["lr"] for p, o in internals.torch_optimizers(optim)}
    assert rates[id(loc)] == 0.05
    assert optim.lr_multipliers[loc] == 0.5  # kept for whoever sets the rate later
    assert rates[id(guide.scale_unconstrained)] == 0.1
    # a multiplier c undoes a scale s = 1/c whose gradients are s times smaller: eps and the
    # clip follow, so the scaled product steps exactly as an unscaled parameter
    groups = {id(p): o.param_groups[0] for p, o in internals.torch_optimizers(optim)}
    assert groups[id(loc)]["clip_norm"] == 10.0 and groups[id(loc)]["eps"] == 2e-8
    other = groups[id(guide.scale_unconstrained)]
    assert other["clip_norm"] == 5.0 and other["eps"] == 1e-8


def test_give_local_param_state():
    module = PyroModule()  # built with module_local_params off: no local state
    assert not hasattr(module._pyro_context, "param_state")
    internals.give_local_param_state(torch.nn.Sequential(module))
    assert module._pyro_context.param_state == {"params": {}, "constraints": {}}
