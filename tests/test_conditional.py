"""Conditional IAF, NAF and planar layers: log|det J| against autograd, the inverse, the
autoregressive property, and that the context is actually used."""

import pytest
import torch
from torch.autograd.functional import jacobian

from pyroflows.transforms import (
    ConditionalInverseAutoregressiveFlow,
    ConditionalNeuralAutoregressiveFlow,
    ConditionalPlanarFlow,
)

D, C = 4, 3

LAYERS = {
    "iaf-affine": lambda: ConditionalInverseAutoregressiveFlow(D, C, [12]),
    "iaf-gated": lambda: ConditionalInverseAutoregressiveFlow(D, C, [12], update="gated"),
    "naf-dsf": lambda: ConditionalNeuralAutoregressiveFlow(D, C, [12], transformer="dsf"),
    "naf-ddsf": lambda: ConditionalNeuralAutoregressiveFlow(D, C, [12], transformer="ddsf"),
    "planar": lambda: ConditionalPlanarFlow(D, C),
}


def _random_layer(kind: str, seed: int = 0):
    """A layer in float64 with every parameter moved away from its (identity) initial value."""
    torch.manual_seed(seed)
    layer = LAYERS[kind]().double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.4 * torch.randn_like(parameter))
    return layer


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_log_det_matches_autograd_for_every_context(kind):
    layer = _random_layer(kind)
    u = torch.randn(6, D, dtype=torch.float64)
    h = torch.randn(6, C, dtype=torch.float64)
    x, log_det = layer._forward_with_log_det(u, h)
    for b in range(6):
        jac = jacobian(lambda v, b=b: layer._forward_with_log_det(v, h[b])[0], u[b])
        sign, expected = torch.linalg.slogdet(jac)
        assert sign > 0
        assert torch.allclose(log_det[b], expected, atol=1e-8)
    # the conditioned transform gives the same numbers, from its cache and without it
    transform = layer.condition(h)
    assert torch.allclose(transform(u), x)
    assert torch.allclose(transform.log_abs_det_jacobian(u, transform(u)), log_det)
    assert torch.allclose(transform.log_abs_det_jacobian(u.clone(), x), log_det)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_inverse_of_forward_is_identity_with_broadcast_context(kind):
    """Samples shaped (num_samples, batch, D) against a (batch, C) context, as in a VAE."""
    layer = _random_layer(kind, seed=1)
    h = torch.randn(5, C, dtype=torch.float64)
    u = torch.randn(7, 5, D, dtype=torch.float64)
    transform = layer.condition(h)
    x = transform(u)
    assert x.shape == (7, 5, D)
    recovered = layer.inverse_uncached(x.clone(), h)
    assert torch.allclose(recovered, u, atol=1e-6)
    # each (sample, data point) pair matches the layer applied to that point alone
    x_single, _ = layer._forward_with_log_det(u[3, 2], h[2])
    assert torch.allclose(x[3, 2], x_single)


@pytest.mark.parametrize("kind", ["iaf-affine", "iaf-gated", "naf-dsf", "naf-ddsf"])
def test_autoregressive_property_with_context(kind):
    layer = _random_layer(kind, seed=2)
    h = torch.randn(C, dtype=torch.float64)
    u = torch.randn(D, dtype=torch.float64)
    jac = jacobian(lambda v: layer._forward_with_log_det(v, h)[0], u)
    # default ordering 0..D-1: output i reads inputs < i and itself (the transformer)
    assert torch.all(jac.triu(diagonal=1).abs() == 0)
    assert torch.all(jac.diagonal() > 0)
    assert jac.tril(diagonal=-1).abs().sum() > 1e-3  # and it does read earlier inputs


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_output_depends_on_the_context(kind):
    layer = _random_layer(kind, seed=3)
    u = torch.randn(D, dtype=torch.float64).expand(2, D)
    h = torch.randn(2, C, dtype=torch.float64)
    x, log_det = layer._forward_with_log_det(u, h)
    assert (x[0] - x[1]).abs().max() > 1e-3
    assert (log_det[0] - log_det[1]).abs() > 1e-6


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_fresh_layer_is_near_identity(kind):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    u, h = torch.randn(10, D), torch.randn(10, C)
    x, _ = layer._forward_with_log_det(u, h)
    assert torch.allclose(x, u * layer.initial_scale, atol=0.1 * (1 + u.abs().max()))
    if kind in ("iaf-affine", "planar"):
        assert torch.allclose(x, u)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_wrong_context_size_names_the_problem(kind):
    layer = LAYERS[kind]()
    with pytest.raises(ValueError, match="context has size 5.*expected 3"):
        layer.condition(torch.randn(2, 5))(torch.randn(2, D))


def test_context_dim_must_be_positive():
    with pytest.raises(ValueError, match="context_dim"):
        ConditionalPlanarFlow(3, 0)
    with pytest.raises(ValueError, match="context_dim"):
        ConditionalInverseAutoregressiveFlow(3, 0)
