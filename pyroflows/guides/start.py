"""Where a flow guide starts: a Laplace approximation ``N(MAP, H⁻¹)`` of the unconstrained
posterior, or the model's ``init_loc_fn`` values with ``init_scale``.

The Laplace start (Laplace 1774; MacKay 2003, ch. 27):

1. MAP: maximize the unconstrained log joint ``ℓ(z) = log p(x, T(z)) + log|det J_T(z)|`` by
   L-BFGS with a strong-Wolfe line search, from the ``init_loc_fn`` point;
2. curvature: the Hessian ``H = -∇²ℓ(z*)`` by autograd in float64 (``D`` double-backward
   passes); the start's scale is ``chol(H⁻¹)``.

Fallbacks, each with its reason kept in :attr:`Start.reason`: above ``full_hessian_max_dim``
(or on a Hessian that is not positive definite, or singular in floating point, but has a
positive diagonal) the diagonal of ``H``; on a failed or non-finite L-BFGS run, a subsampled
data plate (a MAP on one minibatch is wrong), a Hessian with a non-positive diagonal, or a
degenerate end point (a Laplace sd below what the guide's dtype resolves at its coordinate:
the bottom of a funnel, where the log joint grows without bound, not a mode), the
``init_loc_fn`` start.

Path starts (after Pathfinder, Zhang, Carpenter, Gelman and Vehtari 2022, JMLR 23(306)): when
the MAP search ends at no usable mode (it failed, or its end is degenerate, or the Hessian
there is not positive definite: then its diagonal Laplace start competes too), but not on a
subsampled plate, Gaussians ``N(z_k, H(z_k)⁻¹)`` at up to
``PATH_MAX_STARTS`` points ``z_k`` of its path (the first, then every power of two, and the
last) compete with the ``init_loc_fn`` start. Hierarchical models are the common case: the
search runs down the funnel of a group scale towards zero (a horseshoe regression, eight
schools centered, Neal's funnel) and passes through the posterior's bulk on its way. Pathfinder
uses the L-BFGS inverse-Hessian estimate and picks the best Gaussian by ELBO; here the exact
Hessian is taken at the chosen points instead, and the ELBO comparison below picks. On the
development horseshoe regression with 42 dimensions the best path start has an ELBO of -139
against -4613 for the ``init_loc_fn`` start (AutoNormal ends a 2000-step plain SVI loop at
about -130).

Several modes (multi-start MAP): up to ``MULTISTART_MAX_DIM`` dimensions, L-BFGS also runs from
``MULTISTART_COUNT`` more points ``z₀ + U(-2, 2)ᴰ`` around the ``init_loc_fn`` point ``z₀``
(Stan's default initialization is ``U(-2, 2)`` on the unconstrained space) and from
``MULTISTART_PRIOR_COUNT`` draws from the prior (each site from its distribution given its
parents' ``init_loc_fn`` values), all from generators seeded with 0. The box alone stays in
the basin of ``z₀`` when the modes are far apart: on a two-mode development target with
weights 0.25/0.75, ``init_to_median`` started one seed of four in the lighter mode, the box
found no other, and AutoIAF ended there with KL 1.39 nats (0.29 in the heavier one) and a
verdict of "good", as no second mode was known to check. An end point within
``SAME_MODE_DISTANCE`` (Mahalanobis, under the covariance of a mode already found) of a known
mode, or with no barrier of
``SAME_MODE_BARRIER`` nats between them, is that mode, and a search ends as soon as it
evaluates a point within ``SAME_MODE_DISTANCE`` of a known mode and at most
``SAME_MODE_BARRIER`` nats below its peak (it is in that mode's bowl; converging onto the mode
again took most of the searches' iterations: on the 19 benchmark targets the start found the
same modes and cost 1.1-9 times less); each new one gets its own
Hessian and a Laplace estimate of its mass,
``log Z_k ≈ ℓ(z_k*) + (D/2) log 2π + ½ log det H_k⁻¹``. Modes with at least ``MODE_MIN_SHARE``
of the total are kept, heaviest first, each a candidate start, and the list is kept in
``Start.details["modes"]`` for the report's mode-coverage check
(:func:`pyroflows.diagnostics.modes.mode_coverage`).

Finally the candidate starts are compared by their ELBO from a few dozen draws and the best one
is kept: a mode can be a poor place to start (Neal's funnel has its mode deep in the neck, where
the Laplace approximation is a needle), the ELBO says so, and of two well-separated modes the
ELBO of each one's Laplace start is about the log of its mass, so the heavier wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to

from pyroflows._pyro_internals import is_subsample_site, prior_draws, unpack_latent
from pyroflows._random_state import random_state_kept
from pyroflows._vectorization import log_densities_agree

__all__ = ["Mode", "Start", "laplace_start", "unconstrained_log_joint"]

#: above this many latent dimensions the Laplace start uses the Hessian's diagonal only
FULL_HESSIAN_MAX_DIM = 1000
#: extra L-BFGS starts looking for other modes (Stan runs 4 chains from U(-2, 2) inits)
MULTISTART_COUNT = 4
#: extra L-BFGS starts drawn from the prior (each site given its parents' init values)
MULTISTART_PRIOR_COUNT = 4
#: half-width of the box around the init_loc_fn point the extra starts are drawn from
MULTISTART_RADIUS = 2.0
#: above this many latent dimensions no extra starts are run (each new mode costs a Hessian)
MULTISTART_MAX_DIM = 100
#: an L-BFGS end point this close (Mahalanobis distance) to a known mode is that mode
SAME_MODE_DISTANCE = 1.0
#: ... or with a log joint half-way between them at most this many nats below the lower end
SAME_MODE_BARRIER = 1.0
#: modes with a smaller share of the total Laplace mass are dropped
MODE_MIN_SHARE = 0.01
#: L-BFGS iterations for each extra start
MULTISTART_MAX_ITERATIONS = 200
#: at most this many points of the MAP search's path become candidate starts when the search
#: ends at no usable mode
PATH_MAX_STARTS = 12
#: up to this many latent dimensions a path point's curvature is its full Hessian (``D``
#: Hessian-vector products each), above it the diagonal by Hutchinson's estimator
PATH_FULL_HESSIAN_MAX_DIM = 250
#: a Hessian whose condition number is at least this is singular for the Laplace start (a
#: Laplace sd a million times another): a continuum of modes or a flat ridge, where rounding
#: alone decides whether its Cholesky factor exists. A ring density is constant along its
#: circle, so its Hessian there is singular in exact arithmetic; in float64 one machine found
#: it positive definite and another did not, and the start differed. Real posteriors reach
#: 1e5-1e7 (issue 10), the ill-conditioned benchmark Gaussians 1e4 and 1e6; an exactly singular
#: Hessian computes to 1e13 or more, or to a negative eigenvalue
MAX_HESSIAN_CONDITION = 1e12
#: ``Start.details`` key, true on every candidate start of a MAP search that ended where the
#: Hessian is singular or indefinite: no isolated mode (a ring's circle of maxima, a ridge, a
#: saddle), so the posterior is far from one Gaussian bump, and ``fit`` tempers a multimodal
#: guide as long as where several modes were found
NOT_AN_ISOLATED_MODE = "not_an_isolated_mode"


@dataclass
class Start:
    """The start of a guide's affine stage.

    Attributes:
        method: ``"laplace"`` (full Hessian), ``"laplace-diagonal"``, ``"path<k>"`` (a
            Gaussian at point ``k`` of the MAP search's path) or ``"init_loc_fn"``.
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
        coordinates): Laplace and path starts do, the ``init_loc_fn`` start's ``init_scale``
        does not."""
        return not self.method.startswith("init_loc_fn")

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
        (
            -frame.dim
            for site in full.nodes.values()
            if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.vectorized
        ),
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


def points_log_joint(guide, z: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """:func:`batched_log_joint` of the ``(n, D)`` points ``z``, or point by point where the
    model is not vectorization-safe; ``None`` where the model cannot score a point.

    A model is taken as vectorization-safe only if the batched run raises nothing, gives one
    value per point, and agrees with plain runs at the first and the last point: a model that
    mixes points (``w.sum()`` of a batched latent ``w``) runs without error in a plate and
    gives every point the same wrong density."""
    count = z.shape[0]
    try:
        log_p = batched_log_joint(guide, z, args, kwargs)
    except (ValueError, RuntimeError):  # not vectorization-safe: one point at a time
        log_p = None
    if (
        log_p is not None
        and log_p.shape == (count,)
        and _batched_agrees_with_plain_runs(guide, z, log_p, args, kwargs)
    ):
        return log_p
    log_p = torch.empty(count, dtype=z.dtype, device=z.device)
    for index in range(count):
        try:
            log_p[index] = unconstrained_log_joint(guide, z[index], args, kwargs)
        except (ValueError, RuntimeError):
            return None
    return log_p


def _batched_agrees_with_plain_runs(
    guide, z: torch.Tensor, batched: torch.Tensor, args: tuple, kwargs: dict
) -> bool:
    """Whether the batched log joint of the first and the last point equals a plain run's
    (:func:`pyroflows._vectorization.log_densities_agree`, the diagnostics' tolerance too);
    a non-finite value agrees only with the same non-finite value. The global random state is
    left as it was: each model run draws (Pyro's ``init_loc_fn`` wrapper draws before the
    conditioned values reach it), and the check must not change what the draws after it are."""
    with random_state_kept(), torch.no_grad():
        for index in sorted({0, z.shape[0] - 1}):
            try:
                plain = unconstrained_log_joint(guide, z[index], args, kwargs)
            except (ValueError, RuntimeError):
                return False
            if not log_densities_agree(batched[index], plain, equal_nan=True):
                return False
    return True


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


class _ReachedKnownMode(Exception):
    """An extra L-BFGS search reached a mode already found (see :func:`_multistart_modes`)."""


def _map_by_lbfgs(
    objective,
    z0: torch.Tensor,
    max_iterations: int,
    path: list | None = None,
    stop: Callable[[torch.Tensor, float], bool] | None = None,
):
    """Minimizes ``objective`` (the negative log joint) from ``z0``; returns ``(z, value,
    iterations)`` or raises ``FloatingPointError`` on a non-finite run. ``path``, if given,
    receives every point evaluated with a finite value, in order (kept when the run fails).
    ``stop(z, log_joint)``, if given, is asked at every point evaluated; where it says True the
    search ends with :class:`_ReachedKnownMode`."""
    z = z0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [z],
        lr=1.0,
        max_iter=max_iterations,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    evaluations = {"count": 0}

    def closure():
        optimizer.zero_grad()
        value = objective(z)
        if not torch.isfinite(value):
            raise FloatingPointError(f"the log joint became {float(-value.detach())} during L-BFGS")
        if path is not None:
            path.append(z.detach().clone())
        if stop is not None and stop(z.detach(), -float(value.detach())):
            raise _ReachedKnownMode
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
    """The candidate starts: the Laplace start of each mode found (or none, when the MAP search
    ends at no usable mode), path starts where it does (or where the Hessian at the MAP is
    not positive definite), and last the ``init_loc_fn`` start. See the module docstring. The global
    random state is left as it was (the model runs it takes may draw)."""
    with random_state_kept():
        return _laplace_start(
            guide, init_loc, init_scale, args, kwargs, full_hessian_max_dim, max_iterations
        )


def _laplace_start(
    guide, init_loc, init_scale, args, kwargs, full_hessian_max_dim, max_iterations
) -> list[Start]:
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

    path: list[torch.Tensor] = []
    not_isolated = False

    def without_a_mode() -> list[Start]:
        # the MAP search's end is no usable mode: Gaussians along its path compete instead
        return _path_starts(negative, path, fallback.reason, init_loc.dtype) + [fallback]

    try:
        z_map, value, evaluations = _map_by_lbfgs(
            negative, init_loc.to(dtype), max_iterations, path
        )
    except (FloatingPointError, RuntimeError, ValueError) as error:
        fallback.reason = f"no Laplace start: the MAP search failed ({error})"
        return without_a_mode()
    details = {"lbfgs_evaluations": evaluations, "map_log_joint": -value}
    try:
        if dim <= full_hessian_max_dim:
            hessian = _hessian_by_rows(negative, z_map)
            laplace_covariance = _laplace_covariance(hessian)
            if laplace_covariance is not None:
                scale = laplace_covariance.scale_tril
                degenerate = _degenerate(z_map, laplace_covariance.sd, init_loc.dtype)
                if degenerate is not None:
                    fallback.reason = degenerate
                    return without_a_mode()
                details["hessian_condition"] = laplace_covariance.condition
                details["seconds"] = time.perf_counter() - start_time
                laplace = Start(
                    "laplace",
                    z_map.to(init_loc.dtype),
                    scale.to(init_loc.dtype),
                    f"MAP by L-BFGS ({evaluations} evaluations), full Hessian",
                    details,
                )
                if dim > MULTISTART_MAX_DIM or MULTISTART_COUNT == 0:
                    return [laplace, fallback]
                extra = _extra_starts(guide, init_loc.to(dtype))
                modes = _multistart_modes(negative, extra, z_map, scale, -value)
                details["seconds"] = time.perf_counter() - start_time
                starts = _mode_starts(laplace, modes, init_loc.dtype)
                fallback.details["modes"] = starts[0].details["modes"]
                return starts + [fallback]
            curvature = hessian.diagonal()
            not_isolated = True
            no_mode = "the Hessian at the MAP is not positive definite, or singular"
            why = (
                f"{no_mode} (condition number at least {MAX_HESSIAN_CONDITION:g}); its "
                "diagonal is used"
            )
            # a saddle or a ridge, not a mode: Gaussians along the path compete as well
            path_starts = _path_starts(negative, path, no_mode, init_loc.dtype)
        else:
            path_starts = []
            curvature = _hessian_diagonal(negative, z_map)
            why = (
                f"{dim} latent dimensions > full_hessian_max_dim = {full_hessian_max_dim}: "
                "the Hessian's diagonal is used"
            )
    except RuntimeError as error:
        fallback.reason = f"no Laplace start: the Hessian failed ({error})"
        return without_a_mode()
    details["seconds"] = time.perf_counter() - start_time
    if not bool((curvature > 0).all() and torch.isfinite(curvature).all()):
        fallback.reason = "no Laplace start: the curvature at the MAP is not positive"
        return without_a_mode()
    degenerate = _degenerate(z_map, curvature.rsqrt(), init_loc.dtype)
    if degenerate is not None:
        fallback.reason = degenerate
        return without_a_mode()
    laplace = Start(
        "laplace-diagonal",
        z_map.to(init_loc.dtype),
        curvature.rsqrt().to(init_loc.dtype),
        f"MAP by L-BFGS ({evaluations} evaluations); {why}",
        details,
    )
    starts = [laplace, *path_starts, fallback]
    if not_isolated:
        fallback.reason = f"{fallback.reason} (the MAP is no isolated mode: {why})"
        for start in starts:
            start.details[NOT_AN_ISOLATED_MODE] = True
    return starts


def _path_indices(count: int) -> list[int]:
    """Which of ``count`` path points become starts: the first, then geometrically spaced (1,
    2, 4, …: the posterior's bulk may be anywhere along the path, from a funnel's neck that the
    search leaves early to a blow-up near its end), and the last; at most ``PATH_MAX_STARTS``."""
    if count == 0:
        return []
    early = [0] + [2**k for k in range(count.bit_length()) if 2**k < count - 1]
    return sorted(set(early[: PATH_MAX_STARTS - 1]) | {count - 1})


def _path_starts(negative, path: list[torch.Tensor], why: str, dtype: torch.dtype) -> list[Start]:
    """Gaussian starts along the MAP search's path, for a search that ended at no usable mode
    (after Pathfinder, Zhang et al. 2022, which keeps the best of such Gaussians by ELBO): at a
    path point ``z_k`` the start is ``N(z_k, H(z_k)⁻¹)`` with the Hessian of the negative log
    joint there (full up to ``PATH_FULL_HESSIAN_MAX_DIM`` dimensions, else its diagonal);
    points where that is not positive definite (nor its diagonal positive) or is degenerate
    are skipped. On a funnel the search passes through the posterior's bulk on its way down
    the neck, and a Gaussian there is far closer to the posterior than ``init_scale`` at the
    ``init_loc_fn`` point; the candidates' ELBOs decide (``AutoFlowGuide._choose_start``)."""
    starts = []
    for index in _path_indices(len(path)):
        z = path[index]
        try:
            scale, sd, how = _local_gaussian_scale(negative, z)
        except (RuntimeError, ValueError):
            continue
        if scale is None or _degenerate(z, sd, dtype) is not None:
            continue
        starts.append(
            Start(
                f"path{index}",
                z.to(dtype),
                scale.to(dtype),
                f"{why}; instead a Gaussian at point {index} of the {len(path)} the MAP search "
                f"evaluated, with the {how} there",
                {"path_points": len(path), "path_index": index},
            )
        )
    return starts


def _local_gaussian_scale(negative, z: torch.Tensor):
    """``(scale, sd, how)`` of ``N(z, H(z)⁻¹)``, or ``(None, None, None)`` where neither the
    Hessian (up to ``PATH_FULL_HESSIAN_MAX_DIM`` dimensions) nor its diagonal is positive."""
    if z.numel() <= PATH_FULL_HESSIAN_MAX_DIM:
        hessian = _hessian_by_rows(negative, z)
        if not bool(torch.isfinite(hessian).all()):
            return None, None, None
        laplace = _laplace_covariance(hessian)
        if laplace is not None:
            return laplace.scale_tril, laplace.sd, "Hessian"
        curvature = hessian.diagonal()
    else:
        curvature = _hessian_diagonal(negative, z)
    if not bool((curvature > 0).all() and torch.isfinite(curvature).all()):
        return None, None, None
    return curvature.rsqrt(), curvature.rsqrt(), "Hessian's diagonal"


@dataclass(frozen=True)
class _LaplaceCovariance:
    """``H⁻¹``, its lower Cholesky factor, and the condition number of ``H``."""

    covariance: torch.Tensor
    scale_tril: torch.Tensor
    condition: float

    @property
    def sd(self) -> torch.Tensor:
        return self.covariance.diagonal().sqrt()


def _laplace_covariance(hessian: torch.Tensor) -> _LaplaceCovariance | None:
    """``H⁻¹`` of a symmetric Hessian and its Cholesky factor, or ``None`` where ``H`` is not
    positive definite, or is singular in floating point (condition number at least
    :data:`MAX_HESSIAN_CONDITION`): no Laplace approximation there."""
    chol = torch.linalg.cholesky_ex(hessian)
    if chol.info != 0:
        return None
    eigenvalues = torch.linalg.eigvalsh(hessian)
    condition = float(eigenvalues[-1] / eigenvalues[0])
    if not (eigenvalues[0] > 0 and condition < MAX_HESSIAN_CONDITION):
        return None
    covariance = torch.cholesky_inverse(chol.L)
    scale = torch.linalg.cholesky_ex(covariance)
    if scale.info != 0:
        return None
    return _LaplaceCovariance(covariance, scale.L, condition)


def _degenerate(z: torch.Tensor, sd: torch.Tensor, dtype: torch.dtype) -> str | None:
    """Why the Laplace approximation at ``z`` with marginal sds ``sd`` is degenerate, or
    ``None``: a sd below the spacing of ``dtype``'s numbers at its coordinate
    (``eps · max(1, |z_i|)``) cannot be represented by the guide, and such a "mode" is the
    bottom of a funnel (a horseshoe's global scale at e⁻²⁰, Neal's funnel at v = -40), where
    the log joint grows without bound, not a posterior mode. A flow started there takes huge
    steps in the whitened coordinates (AutoNAF turned NaN in a plain SVI loop on a horseshoe
    regression from such a start)."""
    spacing = torch.finfo(dtype).eps * z.abs().clamp_min(1.0)
    too_narrow = sd < spacing
    if not bool(too_narrow.any()):
        return None
    index = int(torch.nonzero(too_narrow)[0])
    return (
        f"no Laplace start: the MAP search ended at a degenerate point (coordinate {index} at "
        f"{float(z[index]):.3g} has a Laplace sd of {float(sd[index]):.2g}, below what {dtype} "
        f"resolves there; {int(too_narrow.sum())} such coordinates): the bottom of a funnel, "
        "where the log joint grows without bound, not a posterior mode"
    )


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
    hessian = torch.stack([torch.zeros_like(z) if row is None else row for row in rows]).detach()
    return 0.5 * (hessian + hessian.T)  # symmetric up to rounding; exactly so from here


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


@dataclass
class Mode:
    """A local maximum of the unconstrained log joint and its Laplace approximation.

    Attributes:
        loc: the mode ``z*``.
        scale_tril: ``chol(H⁻¹)``.
        log_joint: ``ℓ(z*)``.
        log_mass: the Laplace estimate of the mode's mass,
            ``ℓ(z*) + (D/2) log 2π + Σ log diag(scale_tril)``.
    """

    loc: torch.Tensor
    scale_tril: torch.Tensor
    log_joint: float
    log_mass: float


def _laplace_mode(z: torch.Tensor, scale_tril: torch.Tensor, log_joint: float) -> Mode:
    dim = z.shape[0]
    log_mass = (
        log_joint + 0.5 * dim * math.log(2 * math.pi) + float(scale_tril.diagonal().log().sum())
    )
    return Mode(z, scale_tril, log_joint, log_mass)


def _extra_starts(guide, z0: torch.Tensor) -> torch.Tensor:
    """The points the extra L-BFGS runs start from (see the module docstring): ``z0 +
    U(-R, R)ᴰ`` and draws from the prior, each from a generator seeded with 0."""
    generator = torch.Generator().manual_seed(0)
    offsets = torch.rand(MULTISTART_COUNT, z0.shape[0], generator=generator, dtype=z0.dtype)
    starts = [z0 + MULTISTART_RADIUS * (2 * offsets.to(z0.device) - 1)]
    if MULTISTART_PRIOR_COUNT:
        try:
            draws = prior_draws(guide, MULTISTART_PRIOR_COUNT).to(z0)
        except (RuntimeError, ValueError, NotImplementedError):  # a prior that cannot sample
            draws = None
        if draws is not None and bool(torch.isfinite(draws).all()):
            starts.append(draws)
    return torch.cat(starts)


def _multistart_modes(
    negative, starts: torch.Tensor, z_map: torch.Tensor, scale: torch.Tensor, log_joint: float
) -> list[Mode]:
    """The modes found by L-BFGS from the MAP's own run and from ``starts`` (see the module
    docstring), heaviest first, those below ``MODE_MIN_SHARE`` dropped. A search that reaches
    a point within ``SAME_MODE_DISTANCE`` of a known mode (under its Laplace covariance) and at
    most ``SAME_MODE_BARRIER`` nats below its log joint is in that mode's bowl and ends there:
    it would end at that mode, and the iterations to converge onto it are most of a search's
    (on a 10-D hierarchical posterior with one mode, 81 of 452 evaluations get the 8 searches
    there)."""
    modes = [_laplace_mode(z_map, scale, log_joint)]

    def in_a_known_mode_bowl(z: torch.Tensor, value: float) -> bool:
        return any(
            value >= mode.log_joint - SAME_MODE_BARRIER
            and _mahalanobis(z, mode) < SAME_MODE_DISTANCE
            for mode in modes
        )

    for start in starts:
        try:
            z, value, _ = _map_by_lbfgs(
                negative, start, MULTISTART_MAX_ITERATIONS, stop=in_a_known_mode_bowl
            )
        except (_ReachedKnownMode, FloatingPointError, RuntimeError, ValueError):
            continue
        if any(_same_mode(negative, z, -value, mode) for mode in modes):
            continue
        try:
            hessian = _hessian_by_rows(negative, z)
        except RuntimeError:
            continue
        laplace = _laplace_covariance(hessian)
        if laplace is None:  # a saddle or a ridge: no Gaussian to put there
            continue
        modes.append(_laplace_mode(z, laplace.scale_tril, -value))
    modes.sort(key=lambda mode: -mode.log_mass)
    total = torch.logsumexp(torch.tensor([mode.log_mass for mode in modes]), 0)
    return [mode for mode in modes if mode.log_mass - float(total) >= math.log(MODE_MIN_SHARE)]


def _same_mode(negative, z: torch.Tensor, log_joint: float, mode: Mode) -> bool:
    """Whether the L-BFGS end point ``z`` (log joint ``log_joint``) lies in the basin of
    ``mode``: within ``SAME_MODE_DISTANCE`` of it under its Laplace covariance, or with no
    barrier between them (the log joint half-way is not ``SAME_MODE_BARRIER`` nats below the
    lower end), as in a long flat valley or a funnel's neck, where a needle-thin Laplace
    covariance would count two stops of one search as two modes."""
    if _mahalanobis(z, mode) < SAME_MODE_DISTANCE:
        return True
    with torch.no_grad():
        halfway = -float(negative(0.5 * (z + mode.loc)))
    return halfway >= min(log_joint, mode.log_joint) - SAME_MODE_BARRIER


def _mahalanobis(z: torch.Tensor, mode: Mode) -> float:
    """``|L⁻¹ (z - loc)|`` under the mode's ``scale_tril`` ``L``."""
    difference = (z - mode.loc).unsqueeze(-1)
    whitened = torch.linalg.solve_triangular(mode.scale_tril, difference, upper=False)
    return float(whitened.norm())


def _mode_starts(primary: Start, modes: list[Mode], dtype: torch.dtype) -> list[Start]:
    """One Laplace start per mode, heaviest first; each start's ``details["modes"]`` lists them
    all (in the guide's dtype)."""
    kept = [
        Mode(mode.loc.to(dtype), mode.scale_tril.to(dtype), mode.log_joint, mode.log_mass)
        for mode in modes
    ]
    total = float(torch.logsumexp(torch.tensor([mode.log_mass for mode in kept]), 0))
    primary.details["multistart"] = (
        f"{MULTISTART_COUNT + MULTISTART_PRIOR_COUNT + 1} L-BFGS starts, {len(kept)} mode(s) kept"
    )
    starts = []
    for rank, mode in enumerate(kept, start=1):
        share = math.exp(mode.log_mass - total)
        if len(kept) == 1:
            start = primary
            start.loc, start.scale = mode.loc, mode.scale_tril
        else:
            start = Start(
                "laplace" if rank == 1 else f"laplace-mode{rank}",
                mode.loc,
                mode.scale_tril,
                f"mode {rank} of {len(kept)} by multi-start L-BFGS (Laplace mass share "
                f"{share:.2f}), full Hessian",
                dict(primary.details),
            )
        start.details["modes"] = kept
        starts.append(start)
    return starts
