"""The README's "add a flow" example: a family registered from outside the package passes the
transform contract and trains as a guide, an amortized posterior and a prior, unchanged."""

import importlib.util
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import test_transform_contract as contract
import torch
from pyro.infer import SVI, Trace_ELBO

from pyroflows import free_energy_report, make_guide
from pyroflows.amortized import AmortizedFlowPosterior, FlowPrior
from pyroflows.transforms.registry import available_flows, unregister_flow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "add_a_flow.py"


@pytest.fixture(scope="module", autouse=True)
def registered_family():
    spec = importlib.util.spec_from_file_location("add_a_flow", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register()
    contract.VARIANTS["sinh-arcsinh"] = ("sinh-arcsinh", {})
    yield module
    contract.VARIANTS.pop("sinh-arcsinh")
    unregister_flow("sinh-arcsinh")


@pytest.mark.parametrize("context_dim", [0, 3])
def test_the_new_family_passes_the_transform_contract(context_dim):
    assert "sinh-arcsinh" in available_flows(one_pass_sampling=True)
    for dtype in contract.DTYPES:
        contract.test_log_det_matches_the_autograd_jacobian("sinh-arcsinh", context_dim, dtype)
        contract.test_inverse_of_external_points_round_trips("sinh-arcsinh", context_dim, dtype)
    contract.test_the_inverse_has_the_inverse_jacobian("sinh-arcsinh", context_dim)
    contract.test_own_output_is_inverted_from_the_cache("sinh-arcsinh", context_dim)
    contract.test_a_fresh_flow_is_the_identity_where_promised("sinh-arcsinh", context_dim)
    contract.test_state_dict_round_trip("sinh-arcsinh", context_dim)
    contract.test_batch_shapes_broadcast_against_the_context("sinh-arcsinh", context_dim)


def test_the_new_family_trains_as_a_guide_a_posterior_and_a_prior():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(a**2, 0.5))

    # it learns: the free energy from 4000 draws falls. (Comparing the mean of the first and
    # last 50 single-particle losses, as before, failed on 5 of 8 seeds: from the Laplace start
    # the loss falls by less than its noise. On those seeds F fell from 0.99-1.03 to
    # 0.59-0.75, every estimate with a standard error below 0.03, so a fall of 0.1 nats is
    # 4 standard errors of the difference and under half the smallest fall seen.)
    guide = make_guide("sinh-arcsinh", model)
    guide()
    before = free_energy_report(model, guide, num_samples=4000).free_energy
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(300):
        svi.step()
    after = free_energy_report(model, guide, num_samples=4000).free_energy
    assert after < before - 0.1
    posterior = AmortizedFlowPosterior(torch.nn.Identity(), 4, 2, flow="sinh-arcsinh")
    z = posterior(torch.randn(5, 4)).rsample()
    assert z.shape == (5, 2)
    prior = FlowPrior(2, flow="sinh-arcsinh")
    assert prior().log_prob(torch.randn(7, 2)).shape == (7,)
