"""IAF: log|det J| against autograd, inverse∘forward = identity, caching, and buffers."""

import pytest
import torch
from torch.autograd.functional import jacobian

from pyroflows.transforms import ElementwiseAffine, InverseAutoregressiveFlow, Permute


def _random_iaf(update, dim=5, ordering=None, scale=0.5):
    torch.manual_seed(3)
    iaf = InverseAutoregressiveFlow(dim, hidden_dims=[16, 16], update=update, ordering=ordering)
    with torch.no_grad():
        for p in iaf.parameters():
            p.normal_(0.0, scale)
    return iaf.double()


@pytest.mark.parametrize("update", ["affine", "gated"])
@pytest.mark.parametrize("ordering", [None, [2, 4, 0, 1, 3]])
def test_log_det_matches_autograd_jacobian(update, ordering):
    iaf = _random_iaf(update, ordering=ordering)
    u = torch.randn(5, dtype=torch.float64)
    jac = jacobian(lambda v: iaf._forward_with_log_det(v)[0], u)
    _, sign_logdet = torch.linalg.slogdet(jac)
    x = iaf(u)
    assert torch.allclose(iaf.log_abs_det_jacobian(u, x), sign_logdet, atol=1e-10)
    # a fresh input (not the cached one) takes the recomputation path
    u2 = u.clone()
    assert torch.allclose(iaf.log_abs_det_jacobian(u2, x), sign_logdet, atol=1e-10)
    # the Jacobian is triangular in the ordering, with a positive diagonal
    order = list(range(5)) if ordering is None else ordering
    permuted = jac[order][:, order]
    assert torch.all(torch.triu(permuted, diagonal=1) == 0)
    assert torch.all(torch.diagonal(permuted) > 0)


@pytest.mark.parametrize("update", ["affine", "gated"])
def test_inverse_of_external_points_is_exact(update):
    iaf = _random_iaf(update, scale=0.8)
    u = torch.randn(50, 5, dtype=torch.float64)
    x = iaf._forward_with_log_det(u)[0]  # bypass the cache
    assert torch.allclose(iaf.inverse_uncached(x), u, atol=1e-9)
    assert torch.allclose(iaf.inv(x.clone()), u, atol=1e-9)


@pytest.mark.parametrize("update", ["affine", "gated"])
def test_inverse_of_own_output_comes_from_the_cache(update):
    iaf = _random_iaf(update)
    u = torch.randn(7, 5, dtype=torch.float64)
    x = iaf(u)
    calls = []
    handle = iaf.made.register_forward_hook(lambda *a: calls.append(1))
    assert iaf.inv(x) is u
    assert torch.allclose(iaf.log_abs_det_jacobian(u, x), iaf.log_abs_det_jacobian(u.clone(), x))
    handle.remove()
    assert len(calls) == 1  # only the recomputation for u.clone(); the cached u cost nothing


def test_masked_autoregressive_direction_is_the_inverse_layer():
    iaf = _random_iaf("affine")
    maf = iaf.inv
    x = torch.randn(4, 5, dtype=torch.float64)
    u = maf(x)  # sequential
    assert torch.allclose(iaf._forward_with_log_det(u)[0], x, atol=1e-9)
    # log|det| of the inverse is minus the forward one
    assert torch.allclose(maf.log_abs_det_jacobian(x, u), -iaf.log_abs_det_jacobian(u, x))


@pytest.mark.parametrize("update", ["affine", "gated"])
def test_fresh_layer_is_a_scaled_identity(update):
    iaf = InverseAutoregressiveFlow(3, update=update)
    u = torch.randn(8, 3)
    assert torch.allclose(iaf(u), iaf.initial_scale * u)
    expected = 3 * torch.log(torch.tensor(iaf.initial_scale))
    assert torch.allclose(iaf.log_abs_det_jacobian(u, iaf(u)), expected.expand(8), atol=1e-5)


def test_permute_and_affine_round_trip_and_log_det():
    perm = Permute.random(6, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 6)
    assert torch.equal(perm.inv(perm(x).clone()), x)
    assert torch.equal(perm.log_abs_det_jacobian(x, perm(x)), torch.zeros(3))
    affine = ElementwiseAffine(torch.randn(6), torch.rand(6) + 0.1).double()
    x = torch.randn(6, dtype=torch.float64)
    jac = jacobian(affine, x)
    assert torch.allclose(affine.log_abs_det_jacobian(x, affine(x)), torch.logdet(jac))
    assert torch.allclose(affine.inv(affine(x).clone()), x)


def test_permutation_is_saved_in_the_state_dict():
    perm = Permute.random(5)
    state = perm.state_dict()
    assert "permutation" in state
    other = Permute(torch.arange(5))
    other.load_state_dict(state)
    assert torch.equal(other.permutation, perm.permutation)
    assert torch.equal(other.inverse_permutation, perm.inverse_permutation)


def test_flow_distribution_matches_transformed_distribution():
    """log q from the cache, from inverting external points, and Pyro's own computation agree."""
    import pyro.distributions as dist

    from pyroflows.distributions import FlowDistribution

    layers = [_random_iaf("affine"), Permute.reverse(5).double(), _random_iaf("gated")]
    layers.append(ElementwiseAffine(torch.randn(5), torch.rand(5) + 0.5).double())
    base = dist.Normal(torch.zeros(5, dtype=torch.float64), 1.0).to_event(1)
    ours = FlowDistribution(base, layers)
    reference = dist.TransformedDistribution(base, layers)
    x = ours.rsample((6,))
    cached = ours.log_prob(x)
    external = ours.log_prob(x.clone())  # not the cached object: inverted sequentially
    assert torch.allclose(cached, external, atol=1e-9)
    assert torch.allclose(reference.log_prob(x.clone()), cached, atol=1e-9)
    expanded = ours.expand((3,))
    assert expanded.rsample((2,)).shape == (2, 3, 5)
