"""Where a flow guide starts: a Laplace approximation ``N(MAP, H⁻¹)`` of the unconstrained
posterior, or the model's ``init_loc_fn`` values with ``init_scale``.

The Laplace start (Laplace 1774; MacKay 2003, ch. 27):

1. MAP: maximize the unconstrained log joint ``ℓ(z) = log p(x, T(z)) + log|det J_T(z)|`` by
   L-BFGS with a strong-Wolfe line search, from the ``init_loc_fn`` point;
2. curvature: the Hessian ``H = -∇²ℓ(z*)`` by autograd in float64 (``D`` double-backward
   passes); the start's scale is ``chol(H⁻¹)``.

Fallbacks, each with its reason kept in :attr:`Start.reason`: above ``full_hessian_max_dim``
(or on a Hessian that is not positive definite but has a positive diagonal) the diagonal of
``H``; on a failed or non-finite L-BFGS run, a subsampled data plate (a MAP on one minibatch
is wrong), or a Hessian with a non-positive diagonal, the ``init_loc_fn`` start. Finally the
two candidate starts are compared by their ELBO from a few hundred draws and the better one is
kept: a mode can be a poor place to start (Neal's funnel has its mode deep in the neck, where
the Laplace approximation is a needle), and the ELBO says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.util import get_rng_state, set_rng_state
from torch.distributions import biject_to

from pyroflows._pyro_internals import is_subsample_site, unpack_latent

__all__ = ["Start", "laplace_start", "unconstrained_log_joint"]

#: above this many latent dimensions the Laplace start uses the Hessian's diagonal only
FULL_HESSIAN_MAX_DIM = 1000


@dataclass
class Start:
    """The start of a guide's affine stage.

    Attributes:
        method: ``"laplace"`` (full Hessian), ``"laplace-diagonal"`` or ``"init_loc_fn"``.
        loc: the unconstrained start point.
        scale: a lower-triangular matrix (full) or a vector (diagonal).
        reason: why this start was used (fallbacks name their cause).
        details: numbers behind the choice (L-BFGS iterations, seconds, ELBO of each
            candidate, condition number of H).
    """

    method: str
    loc: torch.Tensor
    scale: torch.Tensor
    reason: str
    details: dict = field(default_factory=dict)

    @property
    def whiten(self) -> bool:
        """Whether the scale estimates the posterior's (so the guide learns in its whitened
        coordinates): Laplace starts do, the ``init_loc_fn`` start's ``init_scale`` does not."""
        return self.method.startswith("laplace")

    def describe(self) -> str:
        return f"{self.method} ({self.reason})"


def unconstrained_log_joint(guide, z: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """``log p(x, T(z)) + log|det J_T(z)|`` at one packed unconstrained point ``z`` (a vector),
    with the guide's packing of the model's latent sites."""
    values = {}
    log_jacobian = z.new_zeros(())
    for site, unconstrained in unpack_latent(guide, z):
        transform = biject_to(site["fn"].support)
        value = transform(unconstrained)
        log_jacobian = log_jacobian + transform.log_abs_det_jacobian(unconstrained, value).sum()
        values[site["name"]] = value
    with poutine.block():
        trace = poutine.trace(poutine.condition(guide.model, data=values)).get_trace(
            *args, **kwargs
        )
    return trace.log_prob_sum() + log_jacobian


def batched_log_joint(guide, z: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """:func:`unconstrained_log_joint` of ``n`` points at once, ``z`` of shape ``(n, D)``: one
    run of the model inside a plate over the points, outside the model's own plates. Raises
    (a ``ValueError`` or ``RuntimeError`` from the model) if the model is not
    vectorization-safe; the caller then scores the points one by one."""
    with torch.no_grad(), poutine.block():
        full = poutine.trace(guide.model).get_trace(*args, **kwargs)
    nesting = max(
        (-frame.dim for site in full.nodes.values() if site["type"] == "sample"
         for frame in site["cond_indep_stack"] if frame.vectorized),
        default=0,
    )
    count = z.shape[0]
    z = z.reshape((count,) + (1,) * nesting + z.shape[-1:])
    values = {}
    log_jacobian = z.new_zeros(count)
    for site, unconstrained in unpack_latent(guide, z):
        transform = biject_to(site["fn"].support)
        value = transform(unconstrained)
        log_jacobian = log_jacobian + _per_point(
            transform.log_abs_det_jacobian(unconstrained, value), count, nesting
        )
        values[site["name"]] = value
    with poutine.block(), pyro.plate("_start_draws", count, dim=-(nesting + 1)):
        trace = poutine.trace(poutine.condition(guide.model, data=values)).get_trace(
            *args, **kwargs
        )
    trace.compute_log_prob()
    total = log_jacobian
    for site in trace.nodes.values():
        if site["type"] == "sample" and not is_subsample_site(site):
            total = total + _per_point(site["log_prob"], count, nesting)
    return total


def _per_point(log_prob: torch.Tensor, count: int, nesting: int) -> torch.Tensor:
    """Sums a batched log-density over every axis but the points' (at ``-(nesting + 1)``)."""
    width = nesting + 1
    if log_prob.dim() < width:
        log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
    dims = [d for d in range(log_prob.dim()) if d != log_prob.dim() - width]
    summed = log_prob.sum(dims) if dims else log_prob
    return summed.reshape(-1).expand(count)


def _subsampled_plate(guide, args: tuple, kwargs: dict) -> str | None:
    """The name of a plate that subsamples its data, from one run of the model with every site
    visible (the guide's prototype hides observed sites, where data plates usually are)."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide.model).get_trace(*args, **kwargs)
    for site in trace.nodes.values():
        for frame in site.get("cond_indep_stack", ()):
            full_size = getattr(frame, "full_size", None)
            if full_size is not None and full_size != frame.size:
                return frame.name
    return None


def _map_by_lbfgs(objective, z0: torch.Tensor, max_iterations: int):
    """Minimizes ``objective`` (the negative log joint) from ``z0``; returns ``(z, value,
    iterations)`` or raises ``FloatingPointError`` on a non-finite run."""
    z = z0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=max_iterations, history_size=20, tolerance_grad=1e-7,
        tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )
    evaluations = {"count": 0}

    def closure():
        optimizer.zero_grad()
        value = objective(z)
        if not torch.isfinite(value):
            raise FloatingPointError(f"the log joint became {float(-value.detach())} during L-BFGS")
        value.backward()
        evaluations["count"] += 1
        return value

    optimizer.step(closure)
    with torch.no_grad():
        value = objective(z)
    if not (torch.isfinite(value) and bool(torch.isfinite(z).all())):
        raise FloatingPointError("L-BFGS ended at a non-finite point")
    return z.detach(), float(value), evaluations["count"]


def laplace_start(
    guide,
    init_loc: torch.Tensor,
    init_scale: torch.Tensor,
    args: tuple,
    kwargs: dict,
    *,
    full_hessian_max_dim: int = FULL_HESSIAN_MAX_DIM,
    max_iterations: int = 500,
) -> list[Start]:
    """The candidate starts, best first by construction: a Laplace start (or nothing, when it
    is impossible) followed by the ``init_loc_fn`` start. See the module docstring. The global
    random state is left as it was (the model runs it takes may draw)."""
    state = get_rng_state()
    try:
        return _laplace_start(
            guide, init_loc, init_scale, args, kwargs, full_hessian_max_dim, max_iterations
        )
    finally:
        set_rng_state(state)


def _laplace_start(guide, init_loc, init_scale, args, kwargs, full_hessian_max_dim,
                   max_iterations) -> list[Start]:
    dim = init_loc.shape[0]
    fallback = Start("init_loc_fn", init_loc, init_scale, "the model's init_loc_fn values")
    subsampled = _subsampled_plate(guide, args, kwargs)
    if subsampled is not None:
        fallback.reason = (
            f"no Laplace start: the plate {subsampled!r} subsamples the data, and a MAP on one "
            "minibatch is not the posterior's mode"
        )
        return [fallback]
    start_time = time.perf_counter()
    dtype = torch.float64

    def negative(z):
        return -unconstrained_log_joint(guide, z, args, kwargs)

    try:
        z_map, value, evaluations = _map_by_lbfgs(negative, init_loc.to(dtype), max_iterations)
    except (FloatingPointError, RuntimeError, ValueError) as error:
        fallback.reason = f"no Laplace start: the MAP search failed ({error})"
        return [fallback]
    details = {"lbfgs_evaluations": evaluations, "map_log_joint": -value}
    try:
        if dim <= full_hessian_max_dim:
            hessian = _hessian_by_rows(negative, z_map)
            hessian = 0.5 * (hessian + hessian.T)
            chol = torch.linalg.cholesky_ex(hessian)
            if chol.info == 0:
                covariance = torch.cholesky_inverse(chol.L)
                scale = torch.linalg.cholesky(covariance)
                eigenvalues = torch.linalg.eigvalsh(hessian)
                details["hessian_condition"] = float(eigenvalues[-1] / eigenvalues[0])
                details["seconds"] = time.perf_counter() - start_time
                laplace = Start(
                    "laplace", z_map.to(init_loc.dtype), scale.to(init_loc.dtype),
                    f"MAP by L-BFGS ({evaluations} evaluations), full Hessian", details,
                )
                return [laplace, fallback]
            curvature = hessian.diagonal()
            why = "the Hessian at the MAP is not positive definite; its diagonal is used"
        else:
            curvature = _hessian_diagonal(negative, z_map)
            why = (
                f"{dim} latent dimensions > full_hessian_max_dim = {full_hessian_max_dim}: "
                "the Hessian's diagonal is used"
            )
    except RuntimeError as error:
        fallback.reason = f"no Laplace start: the Hessian failed ({error})"
        return [fallback]
    details["seconds"] = time.perf_counter() - start_time
    if not bool((curvature > 0).all() and torch.isfinite(curvature).all()):
        fallback.reason = "no Laplace start: the curvature at the MAP is not positive"
        return [fallback]
    laplace = Start(
        "laplace-diagonal", z_map.to(init_loc.dtype), curvature.rsqrt().to(init_loc.dtype),
        f"MAP by L-BFGS ({evaluations} evaluations); {why}", details,
    )
    return [laplace, fallback]


def _hessian_by_rows(negative, z: torch.Tensor) -> torch.Tensor:
    """The full Hessian from one differentiable gradient and one Hessian-vector product per
    row (``e_iᵀ H``): memory stays that of one gradient graph, where
    ``torch.autograd.functional.hessian`` grew with data rows × D² (7.3 GB for a logistic
    regression with 1000 rows at D = 1000; ``benchmarks/results/laplace_start_cpu*.json``)."""
    z = z.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(negative(z), z, create_graph=True)
    rows = [
        torch.autograd.grad(gradient[i], z, retain_graph=i + 1 < z.numel(), allow_unused=True)[0]
        for i in range(z.numel())
    ]
    return torch.stack([torch.zeros_like(z) if row is None else row for row in rows]).detach()


def _hessian_diagonal(negative, z: torch.Tensor, probes: int = 32) -> torch.Tensor:
    """The diagonal of the Hessian by Hutchinson's estimator ``E[v ⊙ Hv]`` with Rademacher
    probes (Bekas et al. 2007): ``probes`` Hessian-vector products instead of ``D``."""
    z = z.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(negative(z), z, create_graph=True)
    generator = torch.Generator(device=z.device).manual_seed(0)
    estimate = torch.zeros_like(z)
    for _ in range(probes):
        v = torch.randint(0, 2, z.shape, generator=generator, device=z.device).to(z) * 2 - 1
        (hv,) = torch.autograd.grad(gradient, z, v, retain_graph=True)
        estimate = estimate + v * hv
    return (estimate / probes).detach()

