"""Property-based tests (Hypothesis) of the guide contract over random small models.

A random model has one to three latent sites, each with a random support (real, positive, unit
interval, simplex, vector), batch shape, optional plate and dtype, and sometimes a discrete site
or no latent site at all. For every registered guide, either the contract holds (samples,
median and quantiles have the model's shapes, dtypes and supports; an SVI step and log q are
finite), or the guide raises the named error Pyro's own autoguides raise for that model."""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.infer import SVI, Trace_ELBO
from pyro.poutine.util import site_is_subsample

from pyroflows import available_guides, make_guide

SMALL = {"iaf": {"num_transforms": 1}, "planar": {"num_transforms": 2}, "naf": {"hidden_units": 4}}
FAMILIES = ["normal", "lognormal", "beta", "dirichlet", "vector"]


@dataclass(frozen=True)
class SiteSpec:
    name: str
    family: str
    size: int  # batch size without a plate, or the plate size
    plated: bool


@dataclass(frozen=True)
class ModelSpec:
    sites: tuple[SiteSpec, ...]
    dtype: torch.dtype
    discrete: bool
    observed: bool


def _distribution(family: str, size: int, dtype: torch.dtype, plated: bool):
    one = torch.ones((), dtype=dtype)
    batch = [] if plated else [size]
    if family == "normal":
        d = dist.Normal(0 * one, one)
    elif family == "lognormal":
        d = dist.LogNormal(0 * one, 0.5 * one)
    elif family == "beta":
        d = dist.Beta(2 * one, 3 * one)
    elif family == "dirichlet":
        d = dist.Dirichlet(torch.ones(batch + [3], dtype=dtype))
        return d.to_event(len(batch)) if batch else d
    else:  # a vector site
        return dist.Normal(torch.zeros(batch + [2], dtype=dtype), one).to_event(1 + len(batch))
    return d.expand(batch).to_event(len(batch)) if batch else d


def build_model(spec: ModelSpec):
    def model():
        for site in spec.sites:
            d = _distribution(site.family, site.size, spec.dtype, site.plated)
            if site.plated:
                with pyro.plate(f"plate_{site.name}", site.size):
                    pyro.sample(site.name, d)
            else:
                pyro.sample(site.name, d)
        if spec.discrete:
            pyro.sample("count", dist.Categorical(torch.ones(3, dtype=spec.dtype) / 3))
        if spec.observed:
            pyro.sample(
                "obs",
                dist.Normal(torch.zeros((), dtype=spec.dtype), 1.0),
                obs=torch.tensor(0.5, dtype=spec.dtype),
            )

    return model


site_specs = st.builds(
    SiteSpec,
    name=st.sampled_from(["a", "b", "c"]),
    family=st.sampled_from(FAMILIES),
    size=st.integers(1, 3),
    plated=st.booleans(),
)
model_specs = st.builds(
    ModelSpec,
    sites=st.lists(site_specs, min_size=1, max_size=3, unique_by=lambda s: s.name).map(tuple),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    discrete=st.just(False),
    observed=st.booleans(),
)
broken_specs = st.builds(
    ModelSpec,
    sites=st.lists(site_specs, max_size=2, unique_by=lambda s: s.name).map(tuple),
    dtype=st.just(torch.float32),
    discrete=st.booleans(),
    observed=st.just(True),
).filter(lambda spec: spec.discrete or not spec.sites)

HYPOTHESIS = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("name", available_guides())
@HYPOTHESIS
@given(spec=model_specs)
def test_the_guide_contract_holds_on_random_models(name, spec):
    pyro.clear_param_store()
    model = build_model(spec)
    guide = make_guide(name, model, **SMALL.get(name, {}))
    prototype = pyro.poutine.trace(model).get_trace()
    latents = {n: s for n, s in prototype.iter_stochastic_nodes() if not site_is_subsample(s)}

    loss = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step()
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == spec.dtype for p in guide.parameters())
    quantiles = guide.quantiles([0.25, 0.75], num_samples=50)
    for values in (guide(), guide.median(num_samples=50), {k: v[0] for k, v in quantiles.items()}):
        assert set(values) == set(latents)
        for site_name, value in values.items():
            site = latents[site_name]
            assert value.shape == site["value"].shape, site_name
            assert value.dtype == spec.dtype, site_name
            assert bool(site["fn"].support.check(value).all()), site_name
    posterior = guide.get_posterior()
    draw = posterior.rsample((3,))
    assert bool(torch.isfinite(posterior.log_prob(draw)).all())


@pytest.mark.parametrize("name", available_guides())
@HYPOTHESIS
@given(spec=broken_specs)
def test_models_outside_the_contract_get_pyros_named_error(name, spec):
    pyro.clear_param_store()
    guide = make_guide(name, build_model(spec), **SMALL.get(name, {}))
    if spec.discrete:
        with pytest.raises(ValueError, match=r"discrete sample site 'count'.*enumeration"):
            guide()
    else:
        with pytest.raises(RuntimeError, match="found no latent variables"):
            guide()
