"""NAF (DSF and DDSF): log|det J| against autograd, autoregressive structure, monotone
transformers, and the exact sequential inverse."""

import pytest
import torch
from torch.autograd.functional import jacobian

from pyroflows.transforms.naf import NeuralAutoregressiveFlow

TRANSFORMERS = ["dsf", "ddsf"]


def _random_naf(transformer, dim=4, scale=0.5, seed=0, **kwargs):
    torch.manual_seed(seed)
    naf = NeuralAutoregressiveFlow(dim, hidden_dims=[16], transformer=transformer, **kwargs)
    with torch.no_grad():
        for p in naf.parameters():
            p.normal_(0.0, scale)
    return naf.double()


@pytest.mark.parametrize("transformer", TRANSFORMERS)
@pytest.mark.parametrize("seed", range(3))
def test_log_det_matches_autograd_and_jacobian_is_triangular(transformer, seed):
    naf = _random_naf(transformer, seed=seed)
    for u in 2.0 * torch.randn(3, 4, dtype=torch.float64):
        jac = jacobian(naf._call, u)
        assert torch.all(torch.triu(jac, diagonal=1) == 0)  # z_i reads u_<=i only
        assert torch.all(torch.diagonal(jac) > 0)  # each transformer is increasing
        _, expected = torch.linalg.slogdet(jac)
        z = naf(u)
        assert torch.allclose(naf.log_abs_det_jacobian(u, z), expected, atol=1e-9)
        assert torch.allclose(naf.log_abs_det_jacobian(u.clone(), z), expected, atol=1e-9)


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_log_det_stays_finite_far_in_the_tails(transformer):
    """Where sigmoids saturate, a product of derivatives would underflow; log space does not."""
    naf = _random_naf(transformer, scale=1.5)
    u = torch.tensor([[40.0, -40.0, 25.0, -60.0]], dtype=torch.float64)
    log_det = naf.log_abs_det_jacobian(u, naf(u))
    assert torch.isfinite(log_det).all()
    for coordinate in (0, 3):  # z_i is increasing in u_i with u_<i held fixed
        x = torch.zeros(61, 4, dtype=torch.float64)
        x[:, coordinate] = torch.linspace(-30, 30, 61, dtype=torch.float64)
        z = naf._call(x)[:, coordinate]
        assert torch.all(z[1:] > z[:-1])


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_inverse_of_external_points(transformer):
    naf = _random_naf(transformer, scale=0.8)
    u = 2.0 * torch.randn(30, 4, dtype=torch.float64)
    z = naf._transform(u, naf._pseudo_params(u))[0]  # not through the cache
    assert torch.allclose(naf.inverse_uncached(z), u, atol=1e-8)
    assert naf.inv(naf(u)) is not None  # own output: from the cache


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_fresh_layer_is_near_the_identity(transformer):
    naf = NeuralAutoregressiveFlow(3, transformer=transformer)
    u = torch.linspace(-2, 2, 9).unsqueeze(-1).expand(9, 3)
    z = naf(u.contiguous())
    assert 0.5 < naf.initial_scale <= 1.0
    assert torch.allclose(z, naf.initial_scale * u, atol=0.3)


def test_bad_transformer_name():
    with pytest.raises(ValueError, match="transformer"):
        NeuralAutoregressiveFlow(3, transformer="affine")
