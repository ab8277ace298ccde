"""The autoguide contract, run for every registered guide and for Pyro's AutoDiagonalNormal as
a control. A guide added to the registry later must pass this module unchanged."""

import io
import os
import tempfile
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import (
    MCMC,
    NUTS,
    SVI,
    JitTrace_ELBO,
    Predictive,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    init_to_value,
)
from pyro.infer.reparam import NeuTraReparam

from pyroflows import available_guides, make_guide
from pyroflows.guides.base import STATE_FORMAT, AutoFlowGuide

CONTROL = "pyro-diagonal"
GUIDE_NAMES = [*available_guides(), CONTROL]
# small flows keep the suite fast; each guide gets the size keyword it understands
SMALL = {"iaf": {"num_transforms": 2}, "planar": {"num_transforms": 4}, "naf": {"hidden_units": 4}}


def build(name, model, **kwargs):
    if name == CONTROL:
        return AutoDiagonalNormal(model, **kwargs)
    return make_guide(name, model, **{**SMALL.get(name, {}), **kwargs})


def svi_steps(model, guide, *args, steps=5, elbo=None, **kwargs):
    elbo = elbo or Trace_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    return [svi.step(*args, **kwargs) for _ in range(steps)]


guide_names = pytest.mark.parametrize("name", GUIDE_NAMES)


def shapes_model():
    pyro.sample("scalar", dist.Normal(0.0, 1.0))
    pyro.sample("vector", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("matrix", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))


def constrained_model():
    pyro.sample("positive", dist.Gamma(2.0, 1.0))
    pyro.sample("unit", dist.Beta(2.0, 2.0))
    pyro.sample("simplex", dist.Dirichlet(torch.ones(3)))
    pyro.sample("corr", dist.LKJCholesky(3, concentration=1.5))


@guide_names
@pytest.mark.parametrize("model", [shapes_model, constrained_model])
def test_site_shapes_and_supports(name, model):
    guide = build(name, model)
    losses = svi_steps(model, guide, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    prototype = pyro.poutine.trace(model).get_trace()
    summaries = [guide(), guide.median(), {k: v[0] for k, v in guide.quantiles([0.3]).items()}]
    for values in summaries:
        assert set(values) == {n for n, s in prototype.iter_stochastic_nodes()}
        for site_name, value in values.items():
            site = prototype.nodes[site_name]
            assert value.shape == site["value"].shape, site_name
            assert bool(site["fn"].support.check(value).all()), site_name


def regression(x, y=None, *, noise=0.5):
    """Args and a keyword-only argument; a data plate."""
    weight = pyro.sample("weight", dist.Normal(0.0, 1.0))
    bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(bias + weight * x, noise), obs=y)


@guide_names
def test_args_kwargs_plates_and_predictive(name):
    x = torch.linspace(-1, 1, 20)
    y = 0.5 + 2.0 * x + 0.1 * torch.randn(20)
    guide = build(name, regression)
    svi_steps(regression, guide, x, y, steps=5, noise=0.3)
    for parallel in (False, True):
        draws = Predictive(regression, guide=guide, num_samples=7, parallel=parallel)(x, noise=0.3)
        assert draws["y"].shape == (7, 20)
        assert draws["weight"].numel() == 7


def local_latent_model(data):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("groups", 3, dim=-2):
        group = pyro.sample("group", dist.Normal(0.0, scale))
        with pyro.plate("points", 4, dim=-1):
            pyro.sample("obs", dist.Normal(group, 1.0), obs=data)


@guide_names
@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
def test_nested_plates_with_vectorized_particles(name, elbo_class):
    data = torch.randn(3, 4)
    guide = build(name, local_latent_model)
    elbo = elbo_class(num_particles=5, vectorize_particles=True, max_plate_nesting=2)
    losses = svi_steps(local_latent_model, guide, data, steps=4, elbo=elbo)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert guide(data)["group"].shape == (3, 1)
    assert guide.quantiles([0.1, 0.9], data)["group"].shape == (2, 3, 1)


@guide_names
def test_subsampled_data_plate_with_global_latents(name):
    data = 1.0 + torch.randn(100)

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(data), subsample_size=10) as index:
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data[index])

    guide = build(name, model)
    losses = svi_steps(model, guide, data, steps=5)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("name", available_guides())
def test_local_latents_in_a_subsampled_plate_are_refused(name):
    def model(data):
        with pyro.plate("data", len(data), subsample_size=5) as index:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(z, 1.0), obs=data[index])

    with pytest.raises(ValueError, match="local latent site 'z'"):
        build(name, model)(torch.randn(50))


INIT_STRATEGIES = {
    "median": init_to_median,
    "mean": init_to_mean,
    "sample": init_to_sample,
    "feasible": init_to_feasible,
    "uniform": init_to_uniform,
    "value": init_to_value(values={"positive": torch.tensor(3.0), "unit": torch.tensor(0.2)}),
}


@guide_names
@pytest.mark.parametrize("strategy", sorted(INIT_STRATEGIES))
def test_every_init_loc_fn_is_where_the_guide_starts(name, strategy):
    def model():
        pyro.sample("positive", dist.Gamma(4.0, 2.0))
        pyro.sample("unit", dist.Beta(2.0, 5.0))

    options = {} if name == CONTROL else {"init": "median"}  # (the default starts at a MAP)
    guide = build(name, model, init_loc_fn=INIT_STRATEGIES[strategy], init_scale=1e-3, **options)
    guide()  # set up: the prototype trace holds the initial values
    start = {n: s["value"] for n, s in guide.prototype_trace.iter_stochastic_nodes()}
    median = guide.median()
    for site_name, value in start.items():
        assert torch.allclose(median[site_name], value, rtol=0.02), (strategy, site_name)
    if strategy == "value":
        assert torch.allclose(median["positive"], torch.tensor(3.0), rtol=0.02)


def _sample_with_seed(guide, *args):
    torch.manual_seed(123)
    return guide(*args)


@guide_names
def test_state_dict_round_trip(name):
    data = torch.randn(3, 4)
    guide = build(name, local_latent_model)
    svi_steps(local_latent_model, guide, data, steps=5)
    buffer = io.BytesIO()
    state = guide.state_dict()
    if isinstance(guide, AutoFlowGuide):
        assert int(state["_extra_state"]) == STATE_FORMAT
    torch.save(state, buffer)
    expected = _sample_with_seed(guide, data)

    pyro.clear_param_store()
    restored = build(name, local_latent_model)
    restored(data)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    actual = _sample_with_seed(restored, data)
    for site_name in expected:
        assert torch.equal(actual[site_name], expected[site_name]), site_name


def test_a_state_dict_of_another_format_is_refused_with_what_to_do():
    """Stored numbers whose meaning changed (AutoIAF's outputs scaled by 0.1 in 0.2) would
    load silently into another distribution: a state_dict without a format (saved before
    0.2) or with another one is refused, unless the user asks for strict=False."""
    data = torch.randn(3, 4)
    guide = build("iaf", local_latent_model)
    svi_steps(local_latent_model, guide, data, steps=2)
    state = guide.state_dict()
    unversioned = {k: v for k, v in state.items() if k != "_extra_state"}
    with pytest.raises(ValueError, match="no pyroflows state format.*Refit the guide"):
        guide.load_state_dict(unversioned)
    other = {**state, "_extra_state": torch.tensor(STATE_FORMAT + 1)}
    with pytest.raises(ValueError, match=f"format {STATE_FORMAT + 1}.*reads format"):
        guide.load_state_dict(other)
    name = next(k for k in unversioned if k.endswith("shift"))
    unversioned[name] = unversioned[name] + 1.0
    guide.load_state_dict(unversioned, strict=False)  # the user's explicit choice
    assert torch.equal(guide.state_dict()[name], unversioned[name])


@guide_names
def test_param_store_round_trip(name):
    data = torch.randn(3, 4)
    guide = build(name, local_latent_model)
    svi_steps(local_latent_model, guide, data, steps=5)
    expected = _sample_with_seed(guide, data)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "params.pt")
        pyro.get_param_store().save(path)
        pyro.clear_param_store()
        pyro.get_param_store().load(path)
    restored = build(name, local_latent_model)  # a fresh guide adopts the stored values
    restored(data)
    actual = _sample_with_seed(restored, data)
    for site_name in expected:
        assert torch.allclose(actual[site_name], expected[site_name]), site_name


@guide_names
def test_neutra_reparam(name):
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.5 * a**2, 0.5))

    guide = build(name, model)
    svi_steps(model, guide, steps=20)
    neutra = NeuTraReparam(guide.requires_grad_(False))
    mcmc = MCMC(NUTS(neutra.reparam(model)), num_samples=15, warmup_steps=10, disable_progbar=True)
    mcmc.run()
    samples = neutra.transform_sample(mcmc.get_samples()["a_shared_latent"])
    assert samples["a"].shape == (15,) and bool(torch.isfinite(samples["b"]).all())


@guide_names
def test_float64(name):
    x = torch.linspace(-1, 1, 10, dtype=torch.float64)
    y = 2.0 * x

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x, 0.5), obs=y)

    guide = build(name, model)
    svi_steps(model, guide, x, y, steps=3)
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    assert guide(x, y)["w"].dtype == torch.float64
    assert guide.median(x, y)["w"].dtype == torch.float64


@pytest.mark.parametrize("name", available_guides())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_sticking_the_landing_keeps_the_elbo_and_trains(name, dtype):
    """``guide.sticking_the_landing`` (what ``fit`` uses by default) changes the gradient, not
    the ELBO: from the same random state the loss is the same, the gradients are finite and
    differ, and SVI trains with it in either dtype, constrained sites included."""
    torch.set_default_dtype(dtype)
    try:
        losses, gradients = {}, {}
        for stl in (False, True):
            pyro.clear_param_store()
            pyro.set_rng_seed(0)  # the same initial weights
            guide = build(name, constrained_model)
            guide()
            guide.sticking_the_landing = stl
            pyro.set_rng_seed(0)
            elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
            losses[stl] = elbo.loss_and_grads(constrained_model, guide)
            gradients[stl] = torch.cat([p.grad.flatten() for p in guide.parameters()])
            assert guide.get_posterior().sticking_the_landing is stl
        assert losses[True] == pytest.approx(losses[False], rel=1e-5)
        assert torch.isfinite(gradients[True]).all()
        assert not torch.allclose(gradients[True], gradients[False])
        trained = svi_steps(constrained_model, guide, steps=5)
        assert all(torch.isfinite(torch.tensor(trained)))
        assert all(p.dtype == dtype for p in guide.parameters())
    finally:
        torch.set_default_dtype(torch.float32)


# ---- Pyro's contract: jit tracing, exception types, deterministic summaries --------------------


def plated_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("plate", 2):
        pyro.sample("y", dist.LogNormal(0.0, 1.0))
        pyro.sample("z", dist.Beta(2.0, 2.0))


def _jit_roundtrip(module, methods):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace_module(module, methods, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@guide_names
def test_jit_traced_guide_serves_the_same_draws(name):
    guide = build(name, plated_model)
    svi_steps(plated_model, guide, steps=3)
    names = sorted(guide())
    pyro.set_rng_seed(0)
    expected = guide.call()
    loaded = _jit_roundtrip(guide, {"call": ()})
    pyro.set_rng_seed(0)
    actual = loaded.call()
    assert len(actual) == len(expected) == len(names)
    for site_name, a, e in zip(names, actual, expected, strict=True):
        assert torch.allclose(a, e, atol=1e-6), site_name
    assert {n for n, _ in loaded.named_parameters()} == {n for n, _ in guide.named_parameters()}


@guide_names
def test_jit_traced_predictive(name):
    x, y = torch.randn(3, 2), torch.randn(3)

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal((x * w).sum(-1), sigma), obs=y)

    guide = build(name, model)
    guide(x, y=y)
    predictive = Predictive(model, guide=guide, num_samples=10)
    pyro.set_rng_seed(0)
    expected = predictive(x)
    loaded = _jit_roundtrip(predictive, {"call": (x,)})
    pyro.set_rng_seed(0)
    actual = loaded.call(x)
    assert len(actual) == len(expected)
    assert {tuple(v.shape) for v in actual} == {tuple(v.shape) for v in expected.values()}


@guide_names
def test_jit_trace_elbo_matches_trace_elbo_and_trains(name):
    x = torch.linspace(-1, 1, 20)
    y = 0.5 + 2.0 * x

    guide = build(name, regression)
    guide(x, y)
    before = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    pyro.set_rng_seed(1)
    plain = Trace_ELBO(max_plate_nesting=1).loss(regression, guide, x, y)
    pyro.set_rng_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jit_elbo = JitTrace_ELBO(max_plate_nesting=1)
        traced = jit_elbo.loss(regression, guide, x, y)
        assert traced == pytest.approx(plain, rel=1e-5)
        svi = SVI(regression, guide, pyro.optim.Adam({"lr": 1e-2}), jit_elbo)
        losses = [svi.step(x, y) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = guide.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def empty_model():
    pyro.sample("obs", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))


def discrete_model():
    pyro.sample("w", dist.Normal(0.0, 1.0))
    pyro.sample("c", dist.Categorical(torch.ones(3) / 3))


@guide_names
def test_exception_types_are_pyros(name):
    """Pyro's autoguides raise RuntimeError for an empty model and ValueError, with the
    enumeration link, for a discrete site (under every init strategy)."""
    with pytest.raises(RuntimeError, match="found no latent variables"):
        build(name, empty_model)()
    for init in (init_to_median, init_to_feasible):
        pyro.clear_param_store()
        with pytest.raises(ValueError, match=r"discrete sample site 'c'.*pyro.ai/examples/enum"):
            build(name, discrete_model, init_loc_fn=init)()


@guide_names
def test_median_and_quantiles_are_deterministic_and_leave_the_global_rng_alone(name):
    guide = build(name, constrained_model)
    svi_steps(constrained_model, guide, steps=3)
    state = torch.get_rng_state()
    summaries = {"num_samples": 200} if name != CONTROL else {}
    first = guide.median(**summaries)
    second = guide.median(**summaries)
    quantiles = guide.quantiles([0.1, 0.9], **summaries)
    assert torch.equal(torch.get_rng_state(), state)
    for site_name in first:
        assert torch.equal(first[site_name], second[site_name]), site_name
        again = guide.quantiles([0.1, 0.9], **summaries)[site_name]
        assert torch.equal(quantiles[site_name], again), site_name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@guide_names
def test_cuda(name):
    x = torch.linspace(-1, 1, 10, device="cuda")
    guide = build(name, regression)
    svi_steps(regression, guide, x, 2.0 * x, steps=3)
    assert all(p.is_cuda for p in guide.parameters())
    assert guide(x)["weight"].is_cuda
    assert guide.quantiles([0.5], x)["weight"].is_cuda
