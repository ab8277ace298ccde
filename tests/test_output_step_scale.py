"""A conditioner's ``output_step_scale = s`` multiplies its outputs by ``s``: the flow starts
at the same map, a user's own Adam loop moves the transformer's parameters ``s`` times as far
per step, and :func:`pyroflows.fit`, which picks its own step size, undoes it.

Adam's first step moves every parameter by exactly ``lr · sign(g)`` (``m̂/√v̂ = sign(g)`` at
step 1), and scaling a gradient by ``s > 0`` leaves its sign alone, so the ratio ``s`` below is
exact up to Adam's ``eps``."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.nn import MADE, ConditionerMLP

LR = 1e-2
SCALE = 0.3


def _build(kind: str, scale: float) -> torch.nn.Module:
    torch.manual_seed(0)
    builders = {
        "made": lambda: MADE(4, [12], num_params=3, output_step_scale=scale),
        "made-no-hidden": lambda: MADE(4, [], num_params=2, output_step_scale=scale),
        "made-context": lambda: MADE(4, [12], num_params=2, context_dim=3, output_step_scale=scale),
        "mlp": lambda: ConditionerMLP(2, 3, 2, [12], output_step_scale=scale),
        "mlp-context": lambda: ConditionerMLP(
            2, 3, 2, [12], context_dim=3, output_step_scale=scale
        ),
    }
    return builders[kind]()


KINDS = ["made", "made-no-hidden", "made-context", "mlp", "mlp-context"]


def _call(net: torch.nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return net(x, context) if net.context_dim > 0 else net(x)


def _inputs(net: torch.nn.Module):
    generator = torch.Generator().manual_seed(1)
    width = net.input_dim if isinstance(net, MADE) else net.in_features
    return torch.randn(16, width, generator=generator), torch.randn(16, 3, generator=generator)


@pytest.mark.parametrize("kind", KINDS)
def test_the_scale_multiplies_the_outputs_and_keeps_the_initial_map(kind):
    plain, scaled = _build(kind, 1.0), _build(kind, SCALE)
    x, context = _inputs(plain)
    assert torch.equal(_call(scaled, x, context), torch.zeros_like(_call(plain, x, context)))
    with torch.no_grad():  # the same non-zero weights in both
        for param in plain.output_parameters():
            param.normal_()
        scaled.load_state_dict(plain.state_dict())
    assert torch.allclose(_call(scaled, x, context), SCALE * _call(plain, x, context), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_one_adam_step_moves_the_outputs_s_times_as_far(kind):
    """Only the output parameters receive a gradient at the zero start, and they are exactly
    what ``output_parameters()`` lists."""
    moves = {}
    for scale in (1.0, SCALE):
        net = _build(kind, scale)
        x, context = _inputs(net)
        out = _call(net, x, context)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        loss = (out * weights).sum()
        loss.backward()
        with_gradient = {id(p) for p in net.parameters() if p.grad is not None and p.grad.any()}
        assert with_gradient <= {id(p) for p in net.output_parameters()}
        optimizer = torch.optim.Adam(net.output_parameters(), lr=LR)
        optimizer.step()
        with torch.no_grad():
            moves[scale] = _call(net, x, context)
    assert moves[1.0].abs().max() > 0
    assert torch.allclose(moves[SCALE], SCALE * moves[1.0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -0.5, float("inf"), float("nan"), True, "0.3"])
def test_a_scale_outside_the_accepted_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"output_step_scale must be a finite number > 0"):
        MADE(3, [8], output_step_scale=bad)
    with pytest.raises(ValueError, match=r"output_step_scale must be a finite number > 0"):
        ConditionerMLP(2, 2, 2, [8], output_step_scale=bad)


def _funnel():
    x = pyro.sample("x", dist.Normal(0.0, 3.0))
    pyro.sample("y", dist.Normal(0.0, torch.exp(x / 2)))


def _transformer_parameters_after(scale: float, steps: int, use_fit: bool) -> torch.Tensor:
    """What the MADEs of an NSF guide with ``output_step_scale=scale`` emit (the splines' raw
    parameters) at fixed inputs after ``steps`` steps of ``fit`` (its pilots and schedule) or of
    the README's plain loop, seed 0."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyroflows.AutoFlow(_funnel, flow="nsf", output_step_scale=scale)
    if use_fit:
        pyroflows.fit(_funnel, guide, steps=steps, progress=False, report_samples=None)
    else:
        svi = pyro.infer.SVI(_funnel, guide, pyro.optim.Adam({"lr": LR}), pyro.infer.Trace_ELBO())
        for _ in range(steps):
            svi.step()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.cat([made(x).flatten() for made in guide.modules() if isinstance(made, MADE)])


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fit_undoes_the_scale_and_the_plain_loop_keeps_it():
    """``fit`` gives the output parameters ``lr / s`` and Adam's ``eps`` and gradient clip
    times ``s``: with the same seed, its pilots and the steps after them take the splines'
    parameters where the unscaled guide's go, up to rounding: 8e-6 (relative) after 240 steps.
    With ``eps`` and the clip left alone it was 0.12 at 16 bins on [-8, 8] (bins far in the
    tails get gradients near ``eps``; 6e-4 at 8 bins on [-4, 4]); 0.49 when ``fit`` keeps the
    smaller step. The plain loop keeps it: its splines move less."""
    steps = 240  # >= 4 pilot runs: fit chooses its step size by pilots
    plain = _transformer_parameters_after(1.0, steps, use_fit=True)
    scaled = _transformer_parameters_after(SCALE, steps, use_fit=True)
    assert _relative_distance(scaled, plain) < 1e-4
    plain = _transformer_parameters_after(1.0, 100, use_fit=False)
    scaled = _transformer_parameters_after(SCALE, 100, use_fit=False)
    assert _relative_distance(scaled, plain) > 0.1
    assert scaled.norm() < plain.norm()


@pytest.mark.parametrize(
    "guide_class, scale",
    [
        (pyroflows.AutoNAF, 0.1),
        (pyroflows.AutoNSF, 0.1),
        (pyroflows.AutoRealNVP, 0.3),
        (pyroflows.AutoNICE, 0.3),
        (pyroflows.AutoIAF, 0.1),
    ],
)
def test_the_guides_default_scales_and_a_flow_outside_a_guide_keeps_the_plain_step(
    guide_class, scale
):
    """The scale is a guide default (the sampling-direction autoregressive families 0.1, the
    coupling families 0.3: see ``pyroflows.transforms.registry``); ``make_flow`` outside a
    guide (density estimation) builds conditioners without it."""
    pyro.clear_param_store()
    guide = guide_class(_funnel)
    guide()
    conditioners = [m for m in guide.modules() if isinstance(m, (MADE, ConditionerMLP))]
    assert conditioners
    assert {conditioner.output_step_scale for conditioner in conditioners} == {scale}
    flow = pyroflows.make_flow(guide.flow_name, 2)
    assert {m.output_step_scale for m in flow.modules() if hasattr(m, "output_step_scale")} == {1.0}
