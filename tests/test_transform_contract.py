"""The transform contract, run for every registered flow family (and the variants its options
select), with and without a context, in float32 and float64; and the transformer contract, run
for every transformer. A family added to the registry must pass this module unchanged.

* log|det J| equals the log-determinant of the autograd Jacobian, in the forward pass and from
  the inverse pass, and from the layer's cache;
* the inverse of external points round-trips, and its Jacobian is the inverse of the forward
  Jacobian (so gradients through the inverse are right, bisection included);
* a fresh flow is the identity where the family promises it, and near ``c·u`` otherwise;
* state_dict round-trips; batch shapes broadcast against a context; bad contexts are named.
"""

import copy
import io

import pyro.distributions as dist
import pytest
import torch
from torch.autograd.functional import jacobian

from pyroflows.distributions import FlowDistribution
from pyroflows.nn import MADE
from pyroflows.transforms import (
    AutoregressiveTransform,
    FlowLayer,
    available_flows,
    flow_family,
    make_flow,
)
from pyroflows.transforms.transformers import (
    AdditiveTransformer,
    AffineTransformer,
    GatedTransformer,
    SigmoidalTransformer,
    SplineTransformer,
)

D, C = 4, 3

#: every family at its defaults, plus the variants its options select
VARIANTS = {name: (name, {}) for name in available_flows()}
VARIANTS.update(
    {
        "iaf-gated": ("iaf", {"update": "gated"}),
        "iaf-random": ("iaf", {"permutation": "random", "skip_connection": False}),
        "maf-batchnorm": ("maf", {"batch_norm": True}),
        "naf-ddsf": ("naf", {"transformer": "ddsf", "hidden_units": 4}),
        "naf-maf": ("naf", {"direction": "maf"}),
        "nsf-coupling": ("nsf", {"structure": "coupling"}),
        "nsf-maf": ("nsf", {"direction": "maf"}),
    }
)
DTYPES = {torch.float64: 1e-8, torch.float32: 2e-3}


def random_flow(variant: str, context_dim: int, dtype=torch.float64, seed: int = 0):
    """A flow with every parameter moved away from its initial value (and BatchNorm's running
    statistics too, in evaluation mode), so no check passes because of the identity start.

    Weight matrices move by ``0.5 / sqrt(fan_in)`` per entry, so the raw transformer
    parameters are of order one whatever the width. In float32 the moves are halved: a random
    spline flow at full size contracts some points by e^-16, and its inverse, which expands
    them back, amplifies float32's rounding (1e-7) beyond 1e-3; float64 covers the rough
    regime, float32 checks that every path computes in float32."""
    name, options = VARIANTS[variant]
    torch.manual_seed(seed)
    flow = make_flow(name, D, context_dim=context_dim, num_transforms=2, **options)
    with torch.no_grad():
        for parameter in flow.parameters():
            scale = 0.5 / parameter.shape[-1] ** 0.5 if parameter.dim() == 2 else 0.3
            if dtype == torch.float32:
                scale *= 0.5
            parameter.add_(scale * torch.randn_like(parameter))
    flow = flow.to(dtype)
    with torch.no_grad():
        for buffer_name, buffer in flow.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.normal_()
            elif buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return flow.eval()


def context_for(context_dim, *batch, dtype=torch.float64):
    return torch.randn(*batch, context_dim, dtype=dtype) if context_dim else None


variants = pytest.mark.parametrize("variant", sorted(VARIANTS))
contexts = pytest.mark.parametrize("context_dim", [0, C], ids=["no-context", "context"])
dtypes = pytest.mark.parametrize("dtype", list(DTYPES), ids=["float64", "float32"])


def test_every_registered_family_is_covered():
    assert {name for name, _ in VARIANTS.values()} == set(available_flows())
    assert {"iaf", "maf", "naf", "planar", "realnvp", "nice", "nsf"} <= set(available_flows())


@variants
@contexts
@dtypes
def test_log_det_matches_the_autograd_jacobian(variant, context_dim, dtype):
    flow = random_flow(variant, context_dim, dtype)
    atol = DTYPES[dtype]
    for seed in range(3):
        torch.manual_seed(seed)
        u = 1.5 * torch.randn(D, dtype=dtype)
        h = context_for(context_dim, dtype=dtype)
        jac = jacobian(lambda v, h=h: flow.forward_with_log_det(v, h)[0], u)
        sign, expected = torch.linalg.slogdet(jac.double())
        assert sign > 0, "every layer preserves orientation"
        x, log_det = flow.forward_with_log_det(u, h)
        assert torch.allclose(log_det.double(), expected, atol=atol * 10, rtol=atol)
        u_back, log_det_back = flow.inverse_with_log_det(x.detach().clone(), h)
        assert torch.allclose(log_det_back.double(), expected, atol=atol * 10, rtol=atol)
        transform = flow.condition(h) if context_dim else flow
        x_cached = transform(u)
        assert torch.allclose(transform.log_abs_det_jacobian(u, x_cached), log_det)
        assert torch.allclose(transform.log_abs_det_jacobian(u.clone(), x_cached), log_det)


@variants
@contexts
@dtypes
def test_inverse_of_external_points_round_trips(variant, context_dim, dtype):
    flow = random_flow(variant, context_dim, dtype, seed=1)
    torch.manual_seed(1)
    u = 1.5 * torch.randn(50, D, dtype=dtype)
    h = context_for(context_dim, 50, dtype=dtype)
    x, _ = flow.forward_with_log_det(u, h)
    recovered, _ = flow.inverse_with_log_det(x.clone(), h)
    tolerance = 1e-7 if dtype == torch.float64 else 2e-3
    assert torch.allclose(recovered, u, atol=tolerance, rtol=tolerance)


@variants
@contexts
def test_the_inverse_has_the_inverse_jacobian(variant, context_dim):
    """Gradients through the inverse (closed form, or bisection plus implicit steps) are
    right: J_inverse(x) · J_forward(u) = I."""
    flow = random_flow(variant, context_dim, seed=2)
    torch.manual_seed(2)
    u = torch.randn(D, dtype=torch.float64)
    h = context_for(context_dim)
    x = flow.forward_with_log_det(u, h)[0].detach()
    jac_forward = jacobian(lambda v: flow.forward_with_log_det(v, h)[0], u)
    jac_inverse = jacobian(lambda y: flow.inverse_with_log_det(y, h)[0], x)
    eye = torch.eye(D, dtype=torch.float64)
    assert torch.allclose(jac_inverse @ jac_forward, eye, atol=1e-6)


@variants
@contexts
def test_own_output_is_inverted_from_the_cache(variant, context_dim):
    flow = random_flow(variant, context_dim)
    u = torch.randn(6, D, dtype=torch.float64)
    transform = flow.condition(context_for(context_dim, 6)) if context_dim else flow
    x = transform(u)
    assert transform.inv(x) is u


@pytest.mark.parametrize("name", available_flows())
@contexts
def test_a_fresh_flow_is_the_identity_where_promised(name, context_dim):
    torch.manual_seed(0)
    flow = make_flow(name, D, context_dim=context_dim)
    u = torch.linspace(-2.0, 2.0, 9).unsqueeze(-1).expand(9, D).contiguous()
    h = context_for(context_dim, 9, dtype=torch.float32)
    x, log_det = flow.forward_with_log_det(u, h)
    if flow_family(name).identity_at_init:
        assert torch.allclose(x, u, atol=1e-5)
        assert torch.allclose(log_det, torch.zeros(9), atol=1e-5)
    else:  # close to c·u near the origin, and increasing in every coordinate
        scale = flow.initial_scale
        assert 0.1 < scale <= 1.0
        assert torch.allclose(x[3:6], scale * u[3:6], atol=0.3)
        assert bool((x[1:] > x[:-1]).all())


@variants
@contexts
def test_state_dict_round_trip(variant, context_dim):
    flow = random_flow(variant, context_dim)
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    name, options = VARIANTS[variant]
    restored = make_flow(name, D, context_dim=context_dim, num_transforms=2, **options).double()
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    restored.eval()
    u = torch.randn(5, D, dtype=torch.float64)
    h = context_for(context_dim, 5)
    assert torch.equal(restored.forward_with_log_det(u, h)[0], flow.forward_with_log_det(u, h)[0])


@variants
@contexts
def test_batch_shapes_broadcast_against_the_context(variant, context_dim):
    """Samples shaped (num_samples, batch, D) with a (batch, C) context, as in a VAE."""
    flow = random_flow(variant, context_dim)
    u = torch.randn(7, 5, D, dtype=torch.float64)
    h = context_for(context_dim, 5)
    x, log_det = flow.forward_with_log_det(u, h)
    assert x.shape == (7, 5, D) and log_det.shape == (7, 5)
    single = context_for(context_dim) if h is None else h[2]
    x_single, log_det_single = flow.forward_with_log_det(u[3, 2], single)
    assert torch.allclose(x[3, 2], x_single) and torch.allclose(log_det[3, 2], log_det_single)
    assert flow.forward_with_log_det(u, h, need_log_det=False)[0].shape == (7, 5, D)


@variants
def test_the_context_is_used_and_bad_contexts_are_named(variant):
    flow = random_flow(variant, C)
    u = torch.randn(D, dtype=torch.float64).expand(2, D)
    h = torch.randn(2, C, dtype=torch.float64)
    x, _ = flow.forward_with_log_det(u, h)
    assert (x[0] - x[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs a context of size 3"):
        flow(u)
    with pytest.raises(ValueError, match="context has size 5.*expected 3"):
        flow.condition(torch.randn(2, 5, dtype=torch.float64))(u)
    plain = random_flow(variant, 0)
    assert plain.condition(h) is plain  # a flow without context ignores one
    with pytest.raises(ValueError, match="context_dim=0 but got a context"):
        plain.forward_with_log_det(u, h)


@variants
def test_flow_distribution_scores_own_and_external_samples_alike(variant):
    flow = random_flow(variant, 0)
    base = dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1)
    q = FlowDistribution(base, [flow])
    x = q.rsample((8,))
    assert torch.allclose(q.log_prob(x), q.log_prob(x.clone()), atol=1e-7)
    reference = dist.TransformedDistribution(base, [flow])
    assert torch.allclose(reference.log_prob(x.clone()), q.log_prob(x), atol=1e-7)


@variants
def test_sticking_the_landing_keeps_log_q_and_only_its_path_gradient(variant):
    """With ``sticking_the_landing``, log q of the distribution's own draw has its plain value,
    and its parameter gradient is that of log q at a frozen copy of the flow (the inverse
    route) differentiated through the draw alone (Roeder et al. 2017); it differs from the full
    gradient, whose score term it drops."""
    flow = random_flow(variant, 0)
    frozen = copy.deepcopy(flow).requires_grad_(False)  # copied before a draw fills the cache
    base = dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1)
    torch.manual_seed(0)
    q = FlowDistribution(base, [flow], sticking_the_landing=True)
    x = q.rsample((6,))
    log_q = q.log_prob(x)
    at_frozen = FlowDistribution(base, [frozen]).log_prob(x)
    full = FlowDistribution(base, [flow]).log_prob(x)
    assert torch.allclose(log_q, at_frozen, atol=1e-8)
    assert torch.allclose(log_q, full, atol=1e-8)
    parameters = [p for p in flow.parameters() if p.requires_grad]
    got = torch.autograd.grad(log_q.sum(), parameters, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(at_frozen.sum(), parameters, retain_graph=True, allow_unused=True)
    whole = torch.autograd.grad(full.sum(), parameters, allow_unused=True)
    zero = torch.zeros(())
    score_term = 0.0
    for mine, path, total in zip(got, want, whole, strict=True):
        mine = zero if mine is None else mine
        path = zero if path is None else path
        assert torch.allclose(mine, path, atol=1e-7, rtol=1e-6), variant
        score_term = max(score_term, float((path - (zero if total is None else total)).abs().max()))
    assert score_term > 1e-3, "the full gradient differs: the check compares something"


def test_make_flow_names_bad_arguments():
    with pytest.raises(KeyError, match="no flow family 'glow'"):
        make_flow("glow", 3)
    with pytest.raises(TypeError, match="flow family 'iaf'.*num_bins"):
        make_flow("iaf", 3, num_bins=8)
    with pytest.raises(ValueError, match="num_transforms must be a positive integer"):
        make_flow("iaf", 3, num_transforms=0)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        make_flow("nsf", 0)
    with pytest.raises(ValueError, match="permutation must be"):
        make_flow("iaf", 3, permutation="reversed")
    with pytest.raises(ValueError, match="log_scale_bounds"):
        make_flow("realnvp", 3, log_scale_bounds=(0.0, 1.0))


def test_one_dimensional_flows_work_for_every_family():
    for name in available_flows():
        flow = make_flow(name, 1)
        x = flow(torch.randn(5, 1))
        assert x.shape == (5, 1), name


# ---- the transformer contract ------------------------------------------------------------

TRANSFORMERS = {
    "affine": lambda: AffineTransformer(),
    "affine-wide": lambda: AffineTransformer((-6.0, 3.0)),
    "gated": lambda: GatedTransformer(),
    "additive": lambda: AdditiveTransformer(),
    "dsf": lambda: SigmoidalTransformer("dsf"),
    "ddsf": lambda: SigmoidalTransformer("ddsf", hidden_units=4, depth=3),
    "spline": lambda: SplineTransformer(num_bins=6, bound=3.0),
}
transformers = pytest.mark.parametrize("kind", sorted(TRANSFORMERS))


@transformers
def test_transformer_is_increasing_with_the_autograd_log_slope(kind):
    tau = TRANSFORMERS[kind]().double()
    torch.manual_seed(0)
    raw = 1.5 * torch.randn(tau.num_params, 1, dtype=torch.float64).expand(200, -1, -1)
    x = torch.linspace(-6, 6, 200, dtype=torch.float64).unsqueeze(-1)
    y, log_slope = tau(x, raw)
    assert bool((y[1:] > y[:-1]).all())
    slope = jacobian(lambda v: tau(v, raw)[0].sum(0), x).squeeze()
    assert torch.allclose(slope.log(), log_slope.squeeze(-1), atol=1e-8)
    x_back, log_slope_back = tau.inverse(y, raw)
    assert torch.allclose(x_back, x, atol=1e-8)
    assert torch.allclose(log_slope_back, log_slope, atol=1e-8)


@transformers
def test_transformer_starts_at_its_initial_slope(kind):
    tau = TRANSFORMERS[kind]()
    x = torch.linspace(-0.5, 0.5, 11).unsqueeze(-1)
    y, log_slope = tau(x, torch.zeros(11, tau.num_params, 1))
    if kind in ("dsf", "ddsf"):  # sigmoidal: near c·x (spread offsets bend it slightly)
        assert torch.allclose(y, tau.initial_slope * x, atol=0.05)
    else:  # exactly linear at the start
        assert torch.allclose(y, tau.initial_slope * x, atol=1e-6)


@transformers
def test_autoregressive_layer_jacobian_is_triangular_in_its_ordering(kind):
    tau = TRANSFORMERS[kind]()
    ordering = [2, 0, 3, 1]
    layer = AutoregressiveTransform(MADE(D, [12], tau.num_params, ordering=ordering), tau)
    layer = layer.double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    jac = jacobian(lambda v: layer.forward_with_log_det(v)[0], torch.randn(D, dtype=torch.float64))
    permuted = jac[ordering][:, ordering]
    assert torch.all(permuted.triu(diagonal=1) == 0)
    assert torch.all(permuted.diagonal() > 0)
    assert permuted.tril(diagonal=-1).abs().sum() > 1e-4  # and it reads earlier coordinates


def test_sigmoidal_log_slope_stays_finite_far_in_the_tails():
    """Where sigmoids saturate, a product of derivatives would underflow; log space does not."""
    for kind in ("dsf", "ddsf"):
        tau = TRANSFORMERS[kind]().double()
        raw = 1.5 * torch.randn(1, tau.num_params, 4, dtype=torch.float64)
        x = torch.tensor([[40.0, -40.0, 25.0, -60.0]], dtype=torch.float64)
        _, log_slope = tau(x, raw)
        assert torch.isfinite(log_slope).all()


def test_every_layer_is_a_flow_layer_with_context_support():
    for name in available_flows():
        flow = make_flow(name, D, context_dim=C)
        members = [m for m in flow if isinstance(m, FlowLayer)]
        assert members and all(m.context_dim in (0, C) for m in members), name
        assert any(m.context_dim == C for m in members), f"{name} never reads the context"
