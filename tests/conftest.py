import pyro
import pyro.distributions as dist
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts with an empty param store, a fixed seed and float32 defaults."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(torch.float32)


def _ring():
    """A ring of radius 2.5 and width 0.25 in 2-D (a broad Normal site plus a factor): its log
    density is constant along the circle, so the Hessian at any MAP is singular (no isolated
    mode)."""
    base = dist.Normal(torch.tensor([0.3, -0.2]), 3.0).to_event(1)
    z = pyro.sample("z", base)
    radius = z.pow(2).sum(-1).sqrt()
    pyro.factor("ring", -((radius - 2.5) ** 2) / (2 * 0.25**2) - base.log_prob(z))


@pytest.fixture
def ring_model():
    """The model of :func:`_ring`."""
    return _ring
