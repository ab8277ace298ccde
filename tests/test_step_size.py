"""One Adam step of size ``lr`` moves a guide's distribution by ``O(lr)`` whatever the number of
latent dimensions, so the README's plain SVI loop (``Adam({"lr": 1e-2})``, ``Trace_ELBO``) is
stable at every ``D`` (issue #12, item 7).

Adam's first step moves every parameter by exactly ``lr`` (its update is ``lr · m̂/√v̂`` with
``m̂/√v̂ = sign(g)`` at step 1), which makes the bounds below exact rather than statistical."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyroflows
from pyroflows.models import horseshoe_regression
from pyroflows.nn import MADE
from pyroflows.transforms.affine_stage import AffineStage

LR = 1e-2


def _one_adam_step(parameters, loss: torch.Tensor) -> None:
    optimizer = torch.optim.Adam(parameters, lr=LR)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("dim", [5, 60])
def test_one_step_moves_every_row_of_the_affine_stage_by_lr(dim):
    """Row ``i`` of ``N`` (the extra sd coordinate ``i`` gets from its predecessors) moves by
    ``lr`` in norm: without the ``1/√i`` it would move by ``lr √i`` (0.077 at ``i = 59``)."""
    torch.manual_seed(0)
    stage = AffineStage(torch.zeros(dim), torch.ones(dim))
    w = torch.randn(64, dim)
    loss = (stage(w) * torch.randn(64, dim)).sum()  # a gradient on every entry of T
    _one_adam_step([stage.tril], loss)
    lower = stage._unit_lower()
    row_norms = lower.norm(dim=-1)[1:]
    assert torch.allclose(row_norms, torch.full_like(row_norms, LR), rtol=1e-4)
    # and the log-determinant does not depend on N: the map stays volume-exact
    assert torch.allclose(
        stage.forward_with_log_det(w)[1], torch.zeros(64, dtype=w.dtype), atol=1e-6
    )


def test_the_scaled_affine_stage_is_still_exactly_invertible():
    torch.manual_seed(1)
    stage = AffineStage(torch.randn(7), torch.rand(7) + 0.5)
    with torch.no_grad():
        stage.tril.normal_()
        stage.log_scale.normal_(0, 0.3)
    w = torch.randn(10, 7)
    x, log_det = stage.forward_with_log_det(w)
    w_back, inverse_log_det = stage.inverse_with_log_det(x)
    assert torch.allclose(w_back, w, atol=1e-5)
    jacobian = torch.autograd.functional.jacobian(lambda v: stage(v), w[0])
    assert torch.allclose(jacobian, stage.scale_tril(), atol=1e-6)
    assert torch.allclose(log_det[0], torch.linalg.slogdet(jacobian)[1], atol=1e-5)
    assert torch.allclose(inverse_log_det, log_det)


@pytest.mark.parametrize("cap, bounded", [(16, True), (None, False)])
def test_made_output_fan_in_cap_bounds_the_first_step_at_any_width(cap, bounded):
    """With ``output_fan_in_cap=16`` (the sampling-direction guides' default) one step moves
    each output by at most ``lr (16 max|h| + 1)`` (weights plus bias), whatever the width; plain
    weights (``None``) move the outputs of a width-600 MADE by ``lr`` times the sum of ``|h|``
    over a row's up to ~600 inputs."""
    torch.manual_seed(0)
    dim = 200
    made = MADE(dim, [3 * dim], num_params=2, skip_connection=False, output_fan_in_cap=cap)
    x = torch.randn(32, dim)
    with torch.no_grad():
        hidden = made.activation(made.input_layer(x))
    loss = (made(x) * torch.randn(32, 2, dim).sign()).sum()
    _one_adam_step(list(made.output_layer.parameters()), loss)  # the hidden units stay put
    with torch.no_grad():
        moved = made(x).abs().max()
    bound = LR * (16 * hidden.abs().max() + 1)
    assert bool(moved <= bound * (1 + 1e-4)) == bounded, (moved, bound)


def test_guides_cap_their_made_outputs_and_a_plain_made_does_not():
    """The cap is a guide default (families with a sampling direction), not a MADE one: a
    plain MADE's output mask is 0/1; a guide's MADE of width > 16 scales rows by 16 / fan-in."""
    assert float(MADE(30, [64]).output_layer.mask.max()) == 1.0
    model, args = _horseshoe_regression(10, 30)
    for guide_class in (pyroflows.AutoIAF, pyroflows.AutoNAF, pyroflows.AutoNSF):
        for made in _capped_conditioners(guide_class, model, args, MADE):
            fan_in = (made.output_layer.mask > 0).sum(1)
            wide = fan_in > 16
            assert bool(wide.any())
            row_max = made.output_layer.mask.max(1).values
            assert torch.allclose(row_max[wide], 16 / fan_in[wide].float())


def test_coupling_guides_cap_their_conditioner_outputs_too():
    """AutoRealNVP and AutoNICE get the same cap by default (without it AutoRealNVP's plain loop
    went NaN on a 42-D horseshoe and to F 1.2e6 on the held-out breast-cancer model); a
    conditioner of width 3 D + 1 = 91 scales its output weights by 16 / 91. A coupling flow
    built outside a guide (density estimation) keeps plain weights."""
    from pyroflows.nn import ConditionerMLP
    from pyroflows.transforms import make_flow

    model, args = _horseshoe_regression(10, 14)  # D = 30
    for guide_class in (pyroflows.AutoRealNVP, pyroflows.AutoNICE):
        for conditioner in _capped_conditioners(guide_class, model, args, ConditionerMLP):
            assert conditioner.output_layer.in_features == 91
            assert conditioner.output_weight_scale == pytest.approx(16 / 91)
    plain = make_flow("realnvp", 30)
    assert all(
        m.output_weight_scale == 1.0 for m in plain.modules() if isinstance(m, ConditionerMLP)
    )


def _capped_conditioners(guide_class, model, args: tuple, kind: type) -> list:
    """The conditioners (of type ``kind``) of a fresh ``guide_class`` guide on ``model``, after
    checking that the guide asked for the fan-in cap of 16."""
    pyro.clear_param_store()
    guide = guide_class(model)
    guide(*args)
    assert guide.flow_options["output_fan_in_cap"] == 16
    conditioners = [module for module in guide.modules() if isinstance(module, kind)]
    assert conditioners
    return conditioners


def _horseshoe_regression(num_rows: int, num_coefs: int):
    """``D = 2P + 2`` latent dimensions, 4 non-zero coefficients (the plain-loop benchmark's)."""
    return horseshoe_regression(num_rows, num_coefs, coefficients=(3.0, -2.0, 1.5, 1.0), seed=1)


@pytest.mark.parametrize(
    "guide_class, num_rows, num_coefs, steps",
    [(pyroflows.AutoNAF, 100, 50, 150), (pyroflows.AutoIAF, 50, 100, 300)],
)
def test_the_readme_plain_loop_stays_finite_on_a_wide_horseshoe(
    guide_class, num_rows, num_coefs, steps
):
    """Before, in this loop (seed 0), AutoNAF's loss turned NaN at step 41–45 with D = 102 (3 of
    3 seeds) and AutoIAF's at step 66–94 with D = 202 (2 of 2), after their MADE outputs moved by
    ~1.5 per step; Pyro's AutoIAFNormal turns NaN there too (steps 5–19). The loss must also come
    down from its start: finite but diverging would pass ``isfinite`` alone."""
    model, args = _horseshoe_regression(num_rows, num_coefs)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_class(model)
    svi = SVI(model, guide, Adam({"lr": LR}), Trace_ELBO())
    losses = [svi.step(*args) for _ in range(steps)]
    assert all(math.isfinite(loss) for loss in losses)
    start, end = sorted(losses[:20])[10], sorted(losses[-20:])[10]
    assert end < start


def test_a_coupling_conditioner_caps_its_output_rows_the_same_way():
    """``ConditionerMLP(output_fan_in_cap=c)`` is a plain one with output weights scaled by
    ``c / width``: the same outputs for those weights, and a first step bounded like MADE's."""
    from pyroflows.nn import ConditionerMLP

    torch.manual_seed(0)
    width = 256
    capped = ConditionerMLP(4, 2, 4, [width], output_fan_in_cap=16)
    plain = ConditionerMLP(4, 2, 4, [width])
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():
        capped.output_layer.weight.normal_()
        plain.output_layer.weight.copy_(capped.output_layer.weight * 16 / width)
    x = torch.randn(8, 4)
    assert torch.allclose(capped(x), plain(x), atol=1e-5)

    with torch.no_grad():
        capped.output_layer.weight.zero_()
        hidden = capped.hidden(x)
        before = capped(x)
    loss = (capped(x) * torch.randn(8, 2, 4).sign()).sum()
    _one_adam_step(list(capped.output_layer.parameters()), loss)
    with torch.no_grad():
        moved = (capped(x) - before).abs().max()
    assert moved <= LR * (16 * hidden.abs().max() + 1) * (1 + 1e-4)
    with pytest.raises(ValueError, match="output_fan_in_cap must be None or >= 1"):
        ConditionerMLP(4, 2, 4, [8], output_fan_in_cap=0)
