"""Planar flow: log|det J| against autograd, the invertibility constraint, the exact inverse."""

import pytest
import torch
from torch.autograd.functional import jacobian

from pyroflows.transforms.planar import PlanarFlow


def _random_planar(dim=4, seed=0, u_scale=2.0, w_dot_u=None):
    torch.manual_seed(seed)
    layer = PlanarFlow(dim).double()
    with torch.no_grad():
        layer.u.normal_(0.0, u_scale)
        layer.w.normal_()
        layer.b.normal_()
        if w_dot_u is not None:  # force wᵀu, e.g. far below -1, where û must be corrected
            layer.u.add_((w_dot_u - layer.w @ layer.u) * layer.w / (layer.w @ layer.w))
    return layer


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("w_dot_u", [None, -30.0, -1.5, 5.0])
def test_log_det_matches_autograd_jacobian(seed, w_dot_u):
    layer = _random_planar(seed=seed, w_dot_u=w_dot_u)
    for z in torch.randn(5, 4, dtype=torch.float64):
        jac = jacobian(layer._call, z)
        sign, expected = torch.linalg.slogdet(jac)
        assert sign > 0  # orientation preserving: the constraint holds
        assert torch.allclose(layer.log_abs_det_jacobian(z, layer(z)), expected, atol=1e-9)


def test_constraint_keeps_w_dot_u_hat_above_minus_one():
    for w_dot_u in (-30.0, -1.0, 0.0, 3.0):
        layer = _random_planar(w_dot_u=w_dot_u)
        _, w_dot_u_hat, _ = layer._parameters_for(None)[:3]
        assert w_dot_u_hat > -1.0
    # far below, softplus underflows: wᵀû reaches -1 in floating point, never below
    _, w_dot_u_hat, _ = _random_planar(w_dot_u=-1e3)._parameters_for(None)[:3]
    assert w_dot_u_hat >= -1.0


def test_log_det_is_finite_where_the_map_nearly_folds():
    """wᵀû close to -1 and a = 0: the determinant is tiny but its log stays finite."""
    layer = _random_planar(w_dot_u=-60.0)
    with torch.no_grad():
        layer.b.zero_()
    z = torch.zeros(3, 4, dtype=torch.float64)  # a = wᵀz + b = 0
    log_det = layer.log_abs_det_jacobian(z, layer(z))
    assert torch.all(torch.isfinite(log_det)) and torch.all(log_det < -50)


@pytest.mark.parametrize(
    "dtype,atol,w_dot_u",
    [(torch.float64, 1e-9, w) for w in (None, -30.0, -1.2, 8.0)]
    # in float32, wᵀu = -30 makes wᵀû = -1 to machine precision: a folded, non-invertible map
    + [(torch.float32, 1e-4, w) for w in (None, -1.2, 8.0)],
)
def test_inverse_of_external_points(dtype, atol, w_dot_u):
    layer = _random_planar(w_dot_u=w_dot_u).to(dtype)
    z = 3.0 * torch.randn(200, 4, dtype=dtype)
    y = layer._call(z)  # not through the cache
    assert torch.allclose(layer._inverse(y), z, atol=atol)
    assert layer.inv(layer(z)) is not None and layer.inv(y.clone()).shape == z.shape


def test_inverse_is_differentiable_with_the_implicit_gradient():
    layer = _random_planar()
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)
    jac_inverse = jacobian(layer._inverse, y)
    jac_forward = jacobian(layer._call, layer._inverse(y).detach())
    assert torch.allclose(jac_inverse @ jac_forward, torch.eye(4, dtype=torch.float64), atol=1e-8)


def test_fresh_layer_is_the_identity():
    layer = PlanarFlow(6)
    z = torch.randn(3, 6)
    assert torch.allclose(layer(z), z, atol=1e-6)
    assert torch.allclose(layer.log_abs_det_jacobian(z, layer(z)), torch.zeros(3), atol=1e-6)


def test_gradient_is_finite_at_a_equal_zero():
    layer = _random_planar()
    with torch.no_grad():
        layer.b.zero_()
    z = torch.zeros(2, 4, dtype=torch.float64)
    layer.log_abs_det_jacobian(z, layer(z)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
