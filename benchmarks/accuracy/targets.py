"""Targets of the accuracy benchmark: Pyro models whose posterior is known.

Each target is a Pyro model with its arguments and one of two kinds of ground truth:

* an **exact log evidence** ``log Z`` (then ``KL(q || p) = log Z - ELBO``), together with an
  exact sampler or exact moments of the posterior; the synthetic targets are normalized
  densities written as models (``log Z = 0``), the conjugate regression has ``log Z`` in closed
  form;
* **reference NUTS draws** (Pyro's NUTS, computed once by ``make_references.py`` and committed
  under ``references/``), for posteriors on real data and hierarchical models.

Targets are either **held out** (``development=False``: the benchmark's reported results; the
library's defaults must not be tuned on them) or **development** targets (``development=True``:
small versions of the built-in models of :mod:`pyroflows.models`, with other dimensions, seeds
and data, on which defaults may be chosen).

Several synthetic targets are written as a broad "base" site plus a ``pyro.factor`` that turns
the base density into the target density::

    z ~ base(z),   factor(log p(z) - log base(z))   =>   joint density p(z), log Z = 0,

so that a guide's initialization (``init_to_median``: the base's median) is not placed at the
target's mode by construction.

Example:
    >>> from accuracy.targets import build_target, target_names
    >>> target = build_target("funnel_10")
    >>> target.log_evidence, target.latent_dim
    (0.0, 10)
    >>> sorted(target_names(development=True))[:2]
    ['banana_2', 'bimodal_2']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pyroflows.models import banana, funnel, gaussian_mixture, linear_regression

__all__ = [
    "REFERENCE_DIR",
    "ReferenceMoments",
    "Target",
    "TargetSpec",
    "build_target",
    "coordinate_names",
    "data_fingerprint",
    "flatten_draws",
    "load_reference",
    "target_names",
    "TARGETS",
]

REFERENCE_DIR = Path(__file__).resolve().parent / "references"

#: number of exact draws behind the moments of targets with an exact sampler
EXACT_MOMENT_DRAWS = 200_000

SiteShapes = tuple[tuple[str, tuple[int, ...]], ...]


# ---------------------------------------------------------------------------------------------
# coordinates and reference files
# ---------------------------------------------------------------------------------------------


def coordinate_names(sites: SiteShapes) -> list[str]:
    """Scalar coordinate names of latent sites, as ``pyroflows.diagnose`` names them:
    ``"tau"`` for a scalar site, ``"theta[3]"`` or ``"coef[1,4]"`` for array sites (row-major).

    Example:
        >>> coordinate_names((("mu", ()), ("coef", (2, 2))))
        ['mu', 'coef[0,0]', 'coef[0,1]', 'coef[1,0]', 'coef[1,1]']
    """
    names = []
    for name, shape in sites:
        if not shape:
            names.append(name)
            continue
        for index in np.ndindex(*shape):
            names.append(f"{name}[{','.join(str(i) for i in index)}]")
    return names


def flatten_draws(samples: dict[str, torch.Tensor], sites: SiteShapes) -> np.ndarray:
    """Draws of the latent ``sites`` (each ``(S, *shape)``) as one float64 array ``(S, D)`` whose
    columns follow :func:`coordinate_names`."""
    columns = []
    for name, shape in sites:
        if name not in samples:
            raise KeyError(f"the draws have no site {name!r}; they have {sorted(samples)}")
        value = samples[name]
        value = value.detach().double().cpu() if isinstance(value, torch.Tensor) else value
        value = np.asarray(value, dtype=np.float64)
        expected = tuple(shape)
        if value.shape[1:] != expected:
            raise ValueError(
                f"site {name!r}: draws have shape {value.shape[1:]} per draw, expected {expected}"
            )
        columns.append(value.reshape(value.shape[0], -1))
    return np.concatenate(columns, axis=1)


@dataclass
class ReferenceMoments:
    """Posterior mean and standard deviation per scalar coordinate (float64 arrays).

    ``mean_mcse`` is the Monte Carlo standard error of ``mean`` in units of ``sd`` (0 where the
    moments are exact): the noise floor of every mean error measured against this reference.
    """

    names: list[str]
    mean: np.ndarray
    sd: np.ndarray
    mean_mcse: np.ndarray
    source: str


@dataclass
class ReferenceDraws:
    """A committed reference file: thinned draws plus moments computed from all draws."""

    names: list[str]
    draws: np.ndarray  # (num_draws, num_coordinates), thinned
    mean: np.ndarray
    sd: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    metadata: dict

    def moments(self, names: list[str] | None = None) -> ReferenceMoments:
        """The moments of ``names`` (all coordinates by default)."""
        names = self.names if names is None else names
        missing = [n for n in names if n not in self.names]
        if missing:
            raise KeyError(f"reference file has no coordinates {missing}")
        index = [self.names.index(n) for n in names]
        return ReferenceMoments(
            names=list(names),
            mean=self.mean[index],
            sd=self.sd[index],
            mean_mcse=1.0 / np.sqrt(self.ess[index]),
            source=f"NUTS ({self.metadata.get('num_chains')} chains x "
            f"{self.metadata.get('num_samples')} draws)",
        )


def load_reference(file_name: str) -> ReferenceDraws:
    """Loads ``references/<file_name>`` (written by ``make_references.py``).

    Example:
        >>> reference = load_reference("eight_schools.npz")
        >>> reference.draws.shape[1] == len(reference.names)
        True
    """
    import json

    path = REFERENCE_DIR / file_name
    if not path.exists():
        raise FileNotFoundError(
            f"reference draws {path} are missing; run benchmarks/accuracy/make_references.py"
        )
    with np.load(path, allow_pickle=False) as data:
        return ReferenceDraws(
            names=[str(n) for n in data["names"]],
            draws=data["draws"].astype(np.float64),
            mean=data["mean"],
            sd=data["sd"],
            rhat=data["rhat"],
            ess=data["ess"],
            metadata=json.loads(str(data["metadata"])),
        )


def data_fingerprint(args: tuple) -> list[list[float]]:
    """``[sum |v|, sum v^2]`` of every tensor argument, in float64: detects that a data set
    (e.g. scikit-learn's bundled copy) differs from the one the references were computed on.
    (Not the plain sum, which is 0 for standardized features and so has no relative precision.)
    """
    prints = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            value = arg.detach().double()
            prints.append([float(value.abs().sum()), float((value**2).sum())])
    return prints


# ---------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A model with a known posterior.

    Attributes:
        name: short name (``"funnel_10"``).
        description: one line for tables and the JSON.
        development: True for development targets, False for held-out ones.
        model: the Pyro model; ``model(*args)``.
        args: its arguments (float32 tensors unless built with another default dtype).
        sites: the latent sites and their shapes, in the model's constrained space.
        log_evidence: exact ``log Z``, or None where only reference draws are known.
        exact_sampler: ``(num_draws, generator) -> {site: (num_draws, *shape) float64}``, draws
            from the exact posterior, or None.
        exact_moments: ``() -> (mean, sd)`` over :func:`coordinate_names` order, where the
            moments are known in closed form (takes precedence over ``exact_sampler``).
        reference_file: the file in ``references/`` holding NUTS draws, or None.
        tags: properties that make the target hard (``"ill-conditioned"``, ``"multimodal"``...).
    """

    name: str
    description: str
    development: bool
    model: Callable
    args: tuple
    sites: SiteShapes
    log_evidence: float | None = None
    exact_sampler: Callable[[int, torch.Generator], dict[str, torch.Tensor]] | None = None
    exact_moments: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
    reference_file: str | None = None
    tags: tuple[str, ...] = ()
    fingerprint: list[list[float]] = field(default_factory=list)

    @property
    def latent_dim(self) -> int:
        return len(coordinate_names(self.sites))

    @property
    def coordinates(self) -> list[str]:
        return coordinate_names(self.sites)

    @property
    def ground_truth(self) -> str:
        """``"exact log Z"`` or ``"NUTS draws"``."""
        return "exact log Z" if self.log_evidence is not None else "NUTS draws"

    def reference_moments(self) -> ReferenceMoments:
        """Posterior mean and sd of every coordinate: closed form, exact draws, or NUTS."""
        names = self.coordinates
        if self.exact_moments is not None:
            mean, sd = self.exact_moments()
            zeros = np.zeros(len(names))
            return ReferenceMoments(names, np.asarray(mean), np.asarray(sd), zeros, "closed form")
        if self.exact_sampler is not None:
            generator = torch.Generator().manual_seed(20240)
            draws = flatten_draws(self.exact_sampler(EXACT_MOMENT_DRAWS, generator), self.sites)
            return ReferenceMoments(
                names,
                draws.mean(0),
                draws.std(0, ddof=1),
                np.full(len(names), 1.0 / math.sqrt(EXACT_MOMENT_DRAWS)),
                f"{EXACT_MOMENT_DRAWS} exact draws",
            )
        if self.reference_file is None:
            raise ValueError(f"target {self.name!r} has neither exact moments nor a reference")
        reference = load_reference(self.reference_file)
        recorded = reference.metadata.get("fingerprints", {}).get(self.name)
        if (
            recorded is not None
            and self.fingerprint
            and not np.allclose(np.asarray(recorded), np.asarray(self.fingerprint), rtol=1e-5)
        ):
            raise ValueError(
                f"target {self.name!r}: its data differ from those the reference draws in "
                f"{self.reference_file} were computed on (fingerprint {self.fingerprint} vs "
                f"{recorded}); rerun make_references.py"
            )
        return reference.moments(names)


@dataclass(frozen=True)
class TargetSpec:
    """What is known about a target without building it (no data set loaded).

    ``needs`` names the optional package its data come from (``"sklearn"``), if any.
    """

    name: str
    builder: Callable[[], Target]
    development: bool
    sites: SiteShapes
    reference_file: str | None = None
    needs: str | None = None


def _as_default_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dtype = torch.get_default_dtype()
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


# --- synthetic targets with log Z = 0 --------------------------------------------------------


def _rotation(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal matrix (QR of a Gaussian matrix, signs fixed), float64."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def ill_conditioned_gaussian(
    name: str,
    dim: int,
    smallest_sd: float,
    largest_sd: float,
    mean_range: tuple[float, float],
    seed: int,
    development: bool,
) -> Target:
    """A correlated Gaussian ``N(m, Q diag(s^2) Q^T)`` far from the origin.

    The principal sds ``s`` are log-spaced from ``smallest_sd`` to ``largest_sd`` (Hessian
    condition number ``(largest_sd / smallest_sd)^2``), ``Q`` is a random rotation, and each mean
    ``|m_i|`` is log-uniform in ``mean_range`` with a random sign. Written as a base site
    ``x ~ N(0, 10 max|m|)`` plus the factor ``log N(x; m, S) - log base(x)``, so ``log Z = 0``
    and ``init_to_median`` starts at 0, thousands of posterior sds from the mean.
    """
    generator = torch.Generator().manual_seed(seed)
    principal_sd = torch.logspace(
        math.log10(smallest_sd), math.log10(largest_sd), dim, dtype=torch.float64
    )
    rotation = _rotation(dim, generator)
    covariance = rotation @ torch.diag(principal_sd**2) @ rotation.T
    covariance = 0.5 * (covariance + covariance.T)
    scale_tril = torch.linalg.cholesky(covariance)
    low, high = mean_range
    magnitude = torch.exp(
        math.log(low)
        + (math.log(high) - math.log(low))
        * torch.rand(dim, generator=generator, dtype=torch.float64)
    )
    sign = torch.where(torch.rand(dim, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
    mean = magnitude * sign
    base_scale = 10.0 * float(magnitude.max())
    dtype = torch.get_default_dtype()
    target_mean, target_tril = mean.to(dtype), scale_tril.to(dtype)

    def ill_conditioned_gaussian_model() -> None:
        base = dist.Normal(torch.zeros(dim, dtype=dtype), base_scale).to_event(1)
        x = pyro.sample("x", base)
        target = dist.MultivariateNormal(target_mean, scale_tril=target_tril)
        pyro.factor("target", target.log_prob(x) - base.log_prob(x))

    def exact_moments() -> tuple[np.ndarray, np.ndarray]:
        return mean.numpy(), covariance.diagonal().sqrt().numpy()

    condition = (largest_sd / smallest_sd) ** 2
    return Target(
        name=name,
        description=f"Gaussian, {dim}-D rotated, Hessian condition {condition:.0e}, "
        f"|mean| {low:g}-{high:g}",
        development=development,
        model=ill_conditioned_gaussian_model,
        args=(),
        sites=(("x", (dim,)),),
        log_evidence=0.0,
        exact_moments=exact_moments,
        tags=("ill-conditioned", "far from init"),
    )


def _funnel_target(name: str, dim: int, log_scale_sd: float, development: bool) -> Target:
    problem = funnel(dim=dim, log_scale_sd=log_scale_sd)

    def sampler(num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        v = log_scale_sd * torch.randn(num, generator=generator, dtype=torch.float64)
        x = torch.randn(num, dim - 1, generator=generator, dtype=torch.float64)
        return {"v": v, "x": x * torch.exp(v / 2).unsqueeze(-1)}

    return Target(
        name=name,
        description=problem.description,
        development=development,
        model=problem.model,
        args=(),
        sites=(("v", ()), ("x", (dim - 1,))),
        log_evidence=0.0,
        exact_sampler=sampler,
        tags=("funnel",),
    )


def banana_nd(
    name: str,
    dim: int,
    scale: float,
    curvatures: tuple[float, float],
    width: float,
    development: bool,
) -> Target:
    """A banana in ``dim`` dimensions: ``a ~ N(0, scale^2)`` and, for ``k = 1..dim-1``,
    ``b_k ~ N(c_k (a^2 - scale^2), width^2)`` with curvatures ``c_k`` evenly spaced in
    ``curvatures``. Every ``b_k`` bends around ``a``; normalized, ``log Z = 0``."""
    curvature = torch.linspace(*curvatures, dim - 1, dtype=torch.float64)
    model_curvature = curvature.to(torch.get_default_dtype())

    def banana_model() -> None:
        a = pyro.sample("a", dist.Normal(0.0, scale))
        mean = model_curvature * (a.unsqueeze(-1) ** 2 - scale**2)
        pyro.sample("b", dist.Normal(mean, width).to_event(1))

    def sampler(num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        a = scale * torch.randn(num, generator=generator, dtype=torch.float64)
        noise = width * torch.randn(num, dim - 1, generator=generator, dtype=torch.float64)
        return {"a": a, "b": curvature * (a.unsqueeze(-1) ** 2 - scale**2) + noise}

    return Target(
        name=name,
        description=f"banana, {dim}-D: b_k | a ~ N(c_k (a^2 - {scale:g}^2), {width:g}^2), "
        f"c_k in [{curvatures[0]:g}, {curvatures[1]:g}]",
        development=development,
        model=banana_model,
        args=(),
        sites=(("a", ()), ("b", (dim - 1,))),
        log_evidence=0.0,
        exact_sampler=sampler,
        tags=("curved",),
    )


def _builtin_banana(name: str) -> Target:
    problem = banana()  # a ~ N(0, 1.5), b ~ N(a^2 - 1.5^2, 0.5)

    def sampler(num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        a = 1.5 * torch.randn(num, generator=generator, dtype=torch.float64)
        b = (a**2 - 1.5**2) + 0.5 * torch.randn(num, generator=generator, dtype=torch.float64)
        return {"a": a, "b": b}

    return Target(
        name=name,
        description=problem.description,
        development=True,
        model=problem.model,
        args=(),
        sites=(("a", ()), ("b", ())),
        log_evidence=0.0,
        exact_sampler=sampler,
        tags=("curved",),
    )


def gaussian_mixture_2d(
    name: str,
    weights: tuple[float, ...],
    centers: tuple[tuple[float, float], ...],
    scales: tuple[tuple[float, float], ...],
    development: bool,
) -> Target:
    """A 2-D mixture of axis-aligned Gaussians ``sum_k w_k N(c_k, diag(s_k^2))`` written as a
    broad base site plus a factor; ``log Z = 0``."""
    dtype = torch.get_default_dtype()
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor(weights, dtype=dtype)),
        dist.Normal(torch.tensor(centers, dtype=dtype), torch.tensor(scales, dtype=dtype)).to_event(
            1
        ),
    )
    reach = max(abs(c) for center in centers for c in center) + 3 * max(max(s) for s in scales)

    def mixture_model() -> None:
        base = dist.Normal(torch.full((2,), 0.1, dtype=dtype), reach).to_event(1)
        z = pyro.sample("z", base)
        pyro.factor("mixture", mixture.log_prob(z) - base.log_prob(z))

    centers64 = torch.tensor(centers, dtype=torch.float64)
    scales64 = torch.tensor(scales, dtype=torch.float64)

    def sampler(num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        component = torch.multinomial(
            torch.tensor(weights, dtype=torch.float64),
            num,
            replacement=True,
            generator=generator,
        )
        noise = torch.randn(num, 2, generator=generator, dtype=torch.float64)
        return {"z": centers64[component] + scales64[component] * noise}

    return Target(
        name=name,
        description=f"mixture of {len(weights)} 2-D Gaussians, weights {weights}",
        development=development,
        model=mixture_model,
        args=(),
        sites=(("z", (2,)),),
        log_evidence=0.0,
        exact_sampler=sampler,
        tags=("multimodal",),
    )


def _builtin_bimodal(name: str) -> Target:
    problem = gaussian_mixture()  # modes at (±2, 0), sd 0.5

    def sampler(num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        side = torch.where(torch.rand(num, generator=generator) < 0.5, -2.0, 2.0).double()
        z = 0.5 * torch.randn(num, 2, generator=generator, dtype=torch.float64)
        z[:, 0] += side
        return {"z": z}

    return Target(
        name=name,
        description=problem.description,
        development=True,
        model=problem.model,
        args=(),
        sites=(("z", (2,)),),
        log_evidence=0.0,
        exact_sampler=sampler,
        tags=("multimodal",),
    )


def ring_2d(
    name: str,
    radius: float,
    width: float,
    development: bool,
    base_centre: tuple[float, float] = (0.3, -0.2),
) -> Target:
    """A ring: ``p(z) ∝ exp(-(|z| - radius)^2 / (2 width^2))`` on the plane.

    Its normalizer is closed form, ``2π [w² exp(-R²/2w²) + R w √(2π) Φ(R/w)]``, so written as
    a base site plus a factor, ``log Z = 0``. The base is centred at ``base_centre``, by
    default slightly off the origin so that ``init_to_median`` does not start at the ring's
    centre, where ``|z|`` has no gradient. That default still puts the ``init_loc_fn`` start
    near the centre, from which a flow spreads evenly onto the circle, which a user's
    posterior would not offer: to judge a start rule, use a ``base_centre`` outside the
    circle too (e.g. ``(3.8, 1.5)`` for radius 3).
    """
    normalizer = (
        2
        * math.pi
        * (
            width**2 * math.exp(-(radius**2) / (2 * width**2))
            + radius
            * width
            * math.sqrt(2 * math.pi)
            * 0.5
            * (1 + math.erf(radius / width / 2**0.5))
        )
    )
    log_normalizer = math.log(normalizer)
    dtype = torch.get_default_dtype()
    base_loc = torch.tensor(base_centre, dtype=dtype)

    def ring_model() -> None:
        base = dist.Normal(base_loc, radius + 3 * width).to_event(1)
        z = pyro.sample("z", base)
        distance = z.pow(2).sum(-1).sqrt()
        log_ring = -((distance - radius) ** 2) / (2 * width**2) - log_normalizer
        pyro.factor("ring", log_ring - base.log_prob(z))

    def sampler(num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        # radial density ∝ r N(r; R, w) on r > 0: rejection from N(R, w) with acceptance r / r_max
        r_max = radius + 10 * width
        accepted: list[torch.Tensor] = []
        count = 0
        while count < num:
            r = radius + width * torch.randn(2 * num, generator=generator, dtype=torch.float64)
            u = torch.rand(2 * num, generator=generator, dtype=torch.float64)
            keep = r[(r > 0) & (r < r_max) & (u < r / r_max)]
            accepted.append(keep)
            count += keep.numel()
        r = torch.cat(accepted)[:num]
        angle = 2 * math.pi * torch.rand(num, generator=generator, dtype=torch.float64)
        return {"z": torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1)}

    return Target(
        name=name,
        description=f"ring of radius {radius:g} and width {width:g} in 2-D",
        development=development,
        model=ring_model,
        args=(),
        sites=(("z", (2,)),),
        log_evidence=0.0,
        exact_sampler=sampler,
        tags=("multimodal", "curved"),
    )


def _linear_regression_target(
    name: str, dim: int, num_data: int, seed: int, development: bool
) -> Target:
    problem = linear_regression(
        dim=dim, num_data=num_data, seed=seed, dtype=torch.get_default_dtype()
    )
    mean = problem.posterior_mean.numpy()
    sd = problem.posterior_cov.diagonal().sqrt().numpy()
    return Target(
        name=name,
        description=problem.description,
        development=development,
        model=problem.model,
        args=problem.args,
        sites=(("w", (dim,)),),
        log_evidence=problem.log_evidence,
        exact_moments=lambda: (mean, sd),
        tags=("correlated",),
    )


# --- models with reference NUTS draws ---------------------------------------------------------

EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def eight_schools_centered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    """Rubin's eight schools, centered: ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``,
    ``theta_j ~ N(mu, tau)``, ``y_j ~ N(theta_j, sigma_j)``."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    """Eight schools, non-centered: ``eta_j ~ N(0, 1)``, ``theta_j = mu + tau eta_j``."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", y.shape[-1]):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def _eight_schools(name: str, centered: bool) -> Target:
    y, sigma = _as_default_dtype(torch.tensor(EIGHT_SCHOOLS_Y), torch.tensor(EIGHT_SCHOOLS_SIGMA))
    local = "theta" if centered else "eta"
    return Target(
        name=name,
        description=f"eight schools, {'centered' if centered else 'non-centered'} (Rubin 1981)",
        development=False,
        model=eight_schools_centered if centered else eight_schools_noncentered,
        args=(y, sigma),
        sites=(("mu", ()), ("tau", ()), (local, (8,))),
        reference_file="eight_schools.npz",
        tags=("hierarchical", "funnel") if centered else ("hierarchical",),
        fingerprint=data_fingerprint((y, sigma)),
    )


def logistic_regression(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """``y_n ~ Bernoulli(logit = intercept + coef · x_n)``, ``intercept ~ N(0, 5)``,
    ``coef ~ N(0, I)`` on standardized features."""
    intercept = pyro.sample("intercept", dist.Normal(0.0, 5.0))
    coef = pyro.sample("coef", dist.Normal(x.new_zeros(x.shape[-1]), 1.0).to_event(1))
    logits = intercept + (coef * x).sum(-1)  # broadcasts over vectorized draws
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)


def linear_regression_unknown_noise(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """``y_n ~ N(intercept + coef · x_n, noise^2)`` with ``intercept ~ N(0, 100)``,
    ``coef ~ N(0, 100^2 I)`` on standardized features, ``noise ~ HalfNormal(100)``; ``y`` is
    on its own scale, so the intercept sits many posterior sds from its prior median 0."""
    intercept = pyro.sample("intercept", dist.Normal(0.0, 100.0))
    coef = pyro.sample("coef", dist.Normal(x.new_zeros(x.shape[-1]), 100.0).to_event(1))
    noise = pyro.sample("noise", dist.HalfNormal(100.0))
    mean = intercept + (coef * x).sum(-1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mean, noise), obs=y)


def multinomial_logistic_regression(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Softmax regression with class 0 as reference: for classes ``k = 1..K-1``,
    ``eta_k = intercept_k + coef_k · x_n``, ``intercept ~ N(0, 5)``, ``coef ~ N(0, 1)``."""
    num_classes = 3
    num_features = x.shape[-1]
    intercept = pyro.sample("intercept", dist.Normal(x.new_zeros(num_classes - 1), 5.0).to_event(1))
    coef = pyro.sample(
        "coef", dist.Normal(x.new_zeros(num_classes - 1, num_features), 1.0).to_event(2)
    )
    # coef (..., K-1, D) * x (N, 1, D) -> (..., N, K-1, D) -> (..., N, K-1); the intercept,
    # (K-1,) or, vectorized over draws, (draws, 1, K-1), broadcasts against that as it is
    eta = (coef * x.unsqueeze(-2)).sum(-1) + intercept
    logits = torch.cat([torch.zeros_like(eta[..., :1]), eta], -1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Categorical(logits=logits), obs=y)


def hierarchical_regression(
    x: torch.Tensor, group: torch.Tensor, y: torch.Tensor | None = None
) -> None:
    """Varying intercepts and slopes, centered: ``y_n ~ N(a_g + b_g x_n, noise^2)``,
    ``a_g ~ N(mu_a, tau_a)``, ``b_g ~ N(mu_b, tau_b)``, with ``mu_a ~ N(0, 10)``,
    ``mu_b ~ N(0, 2)``, ``tau_a, tau_b, noise ~ HalfNormal(1)``."""
    num_groups = 3
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 10.0))
    tau_a = pyro.sample("tau_a", dist.HalfNormal(1.0))
    mu_b = pyro.sample("mu_b", dist.Normal(0.0, 2.0))
    tau_b = pyro.sample("tau_b", dist.HalfNormal(1.0))
    noise = pyro.sample("noise", dist.HalfNormal(1.0))
    with pyro.plate("group", num_groups):
        a = pyro.sample("a", dist.Normal(mu_a, tau_a))
        b = pyro.sample("b", dist.Normal(mu_b, tau_b))
    with pyro.plate("data", x.shape[0]):
        mean = a[..., group] + b[..., group] * x
        pyro.sample("obs", dist.Normal(mean, noise), obs=y)


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


def _sklearn_data(loader_name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import sklearn.datasets
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this target's data come with scikit-learn (bundled, no download): "
            "pip install scikit-learn"
        ) from error
    return getattr(sklearn.datasets, loader_name)(return_X_y=True)


def _breast_cancer(name: str) -> Target:
    features, labels = _sklearn_data("load_breast_cancer")
    x, y = _as_default_dtype(
        torch.as_tensor(_standardize(features)), torch.as_tensor(labels, dtype=torch.float64)
    )
    return Target(
        name=name,
        description="logistic regression, breast cancer (569 x 30 standardized + intercept)",
        development=False,
        model=logistic_regression,
        args=(x, y),
        sites=(("intercept", ()), ("coef", (30,))),
        reference_file="breast_cancer_logistic.npz",
        tags=("real data", "ill-conditioned"),
        fingerprint=data_fingerprint((x, y)),
    )


def _diabetes(name: str) -> Target:
    features, target = _sklearn_data("load_diabetes")
    x, y = _as_default_dtype(torch.as_tensor(_standardize(features)), torch.as_tensor(target))
    return Target(
        name=name,
        description="linear regression, unknown noise, diabetes (442 x 10 standardized; "
        "y raw, mean 152)",
        development=False,
        model=linear_regression_unknown_noise,
        args=(x, y),
        sites=(("intercept", ()), ("coef", (10,)), ("noise", ())),
        reference_file="diabetes_linear.npz",
        tags=("real data", "far from init", "correlated"),
        fingerprint=data_fingerprint((x, y)),
    )


def _wine(name: str) -> Target:
    features, labels = _sklearn_data("load_wine")
    x = _as_default_dtype(torch.as_tensor(_standardize(features)))[0]
    y = torch.as_tensor(labels, dtype=torch.long)
    return Target(
        name=name,
        description="multinomial logistic regression, wine (178 x 13 standardized, 3 classes)",
        development=False,
        model=multinomial_logistic_regression,
        args=(x, y),
        sites=(("intercept", (2,)), ("coef", (2, 13))),
        reference_file="wine_multinomial.npz",
        tags=("real data", "separable"),
        fingerprint=data_fingerprint((x, y)),
    )


def _iris(name: str) -> Target:
    features, species = _sklearn_data("load_iris")
    sepal_length = features[:, 0]
    petal_length = _standardize(features[:, 2:3])[:, 0]
    x, y = _as_default_dtype(torch.as_tensor(petal_length), torch.as_tensor(sepal_length))
    group = torch.as_tensor(species, dtype=torch.long)
    return Target(
        name=name,
        description="hierarchical regression, iris: sepal length on petal length by species "
        "(150 flowers, 3 groups)",
        development=False,
        model=hierarchical_regression,
        args=(x, group, y),
        sites=(
            ("mu_a", ()),
            ("tau_a", ()),
            ("mu_b", ()),
            ("tau_b", ()),
            ("noise", ()),
            ("a", (3,)),
            ("b", (3,)),
        ),
        reference_file="iris_hierarchical.npz",
        tags=("real data", "hierarchical", "far from init"),
        fingerprint=data_fingerprint((x, group, y)),
    )


def _synthetic_logistic(name: str) -> Target:
    """Development target with NUTS references: logistic regression on 100 synthetic points
    with 5 correlated features (seed 3)."""
    generator = torch.Generator().manual_seed(3)
    shared = torch.randn(100, 1, generator=generator, dtype=torch.float64)
    features = 0.7 * shared + 0.7 * torch.randn(100, 5, generator=generator, dtype=torch.float64)
    coef = torch.tensor([1.5, -1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    logits = 0.5 + features @ coef
    labels = torch.bernoulli(torch.sigmoid(logits), generator=generator)
    x, y = _as_default_dtype(features, labels)
    return Target(
        name=name,
        description="logistic regression, synthetic (100 x 5 correlated features, seed 3)",
        development=True,
        model=logistic_regression,
        args=(x, y),
        sites=(("intercept", ()), ("coef", (5,))),
        reference_file="synthetic_logistic.npz",
        tags=("correlated",),
        fingerprint=data_fingerprint((x, y)),
    )


# --- the registry -------------------------------------------------------------------------------


def _spec(
    name: str,
    builder: Callable[[str], Target],
    development: bool,
    sites: SiteShapes,
    reference_file: str | None = None,
    needs: str | None = None,
) -> TargetSpec:
    return TargetSpec(name, lambda: builder(name), development, sites, reference_file, needs)


TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in [
        # held out: the benchmark's reported results
        _spec(
            "gaussian_illcond_10",
            lambda n: ill_conditioned_gaussian(
                n,
                dim=10,
                smallest_sd=1e-3,
                largest_sd=1.0,
                mean_range=(100.0, 1000.0),
                seed=11,
                development=False,
            ),
            False,
            (("x", (10,)),),
        ),
        _spec(
            "funnel_10",
            lambda n: _funnel_target(n, dim=10, log_scale_sd=3.0, development=False),
            False,
            (("v", ()), ("x", (9,))),
        ),
        _spec(
            "banana_8",
            lambda n: banana_nd(
                n, dim=8, scale=2.0, curvatures=(0.1, 0.5), width=0.5, development=False
            ),
            False,
            (("a", ()), ("b", (7,))),
        ),
        _spec(
            "mixture_2",
            lambda n: gaussian_mixture_2d(
                n,
                weights=(0.4, 0.6),
                centers=((-2.5, 1.0), (2.5, -1.0)),
                scales=((0.5, 0.8), (0.7, 0.4)),
                development=False,
            ),
            False,
            (("z", (2,)),),
        ),
        _spec(
            "ring_2",
            lambda n: ring_2d(n, radius=2.5, width=0.25, development=False),
            False,
            (("z", (2,)),),
        ),
        _spec(
            "linreg_20",
            lambda n: _linear_regression_target(n, dim=20, num_data=60, seed=1, development=False),
            False,
            (("w", (20,)),),
        ),
        _spec(
            "eight_schools_centered",
            lambda n: _eight_schools(n, centered=True),
            False,
            (("mu", ()), ("tau", ()), ("theta", (8,))),
            "eight_schools.npz",
        ),
        _spec(
            "eight_schools_noncentered",
            lambda n: _eight_schools(n, centered=False),
            False,
            (("mu", ()), ("tau", ()), ("eta", (8,))),
            "eight_schools.npz",
        ),
        _spec(
            "breast_cancer_logistic",
            _breast_cancer,
            False,
            (("intercept", ()), ("coef", (30,))),
            "breast_cancer_logistic.npz",
            "sklearn",
        ),
        _spec(
            "diabetes_linear",
            _diabetes,
            False,
            (("intercept", ()), ("coef", (10,)), ("noise", ())),
            "diabetes_linear.npz",
            "sklearn",
        ),
        _spec(
            "wine_multinomial",
            _wine,
            False,
            (("intercept", (2,)), ("coef", (2, 13))),
            "wine_multinomial.npz",
            "sklearn",
        ),
        _spec(
            "iris_hierarchical",
            _iris,
            False,
            (
                ("mu_a", ()),
                ("tau_a", ()),
                ("mu_b", ()),
                ("tau_b", ()),
                ("noise", ()),
                ("a", (3,)),
                ("b", (3,)),
            ),
            "iris_hierarchical.npz",
            "sklearn",
        ),
        # development: small versions of pyroflows.models' built-ins, other sizes and data
        _spec(
            "linreg_10",
            lambda n: _linear_regression_target(n, dim=10, num_data=40, seed=0, development=True),
            True,
            (("w", (10,)),),
        ),
        _spec("banana_2", lambda n: _builtin_banana(n), True, (("a", ()), ("b", ()))),
        _spec(
            "funnel_5",
            lambda n: _funnel_target(n, dim=5, log_scale_sd=1.5, development=True),
            True,
            (("v", ()), ("x", (4,))),
        ),
        _spec("bimodal_2", lambda n: _builtin_bimodal(n), True, (("z", (2,)),)),
        _spec(
            "unequal_modes_2",
            lambda n: gaussian_mixture_2d(
                n,
                weights=(0.25, 0.75),
                centers=((-1.5, -2.0), (2.0, 1.5)),
                scales=((0.4, 0.6), (0.6, 0.5)),
                development=True,
            ),
            True,
            (("z", (2,)),),
        ),
        _spec(
            "gaussian_illcond_5",
            lambda n: ill_conditioned_gaussian(
                n,
                dim=5,
                smallest_sd=1e-2,
                largest_sd=1.0,
                mean_range=(10.0, 100.0),
                seed=5,
                development=True,
            ),
            True,
            (("x", (5,)),),
        ),
        _spec(
            "synthetic_logistic_5",
            _synthetic_logistic,
            True,
            (("intercept", ()), ("coef", (5,))),
            "synthetic_logistic.npz",
        ),
        # rings whose base is centred outside the circle, so that init_to_median does not
        # start near the centre (see ring_2d): the tempering's hold was chosen on these
        _spec(
            "ring_narrow_offcentre",
            lambda n: ring_2d(n, radius=3.0, width=0.2, development=True, base_centre=(3.8, 1.5)),
            True,
            (("z", (2,)),),
        ),
        _spec(
            "ring_wide_offcentre",
            lambda n: ring_2d(n, radius=2.0, width=0.3, development=True, base_centre=(-1.2, 2.9)),
            True,
            (("z", (2,)),),
        ),
    ]
}


def target_names(development: bool | None = None) -> list[str]:
    """Names of the held-out (``development=False``), development (``True``) or all targets."""
    return [n for n, s in TARGETS.items() if development is None or s.development == development]


def build_target(name: str) -> Target:
    """Builds a target by name (loads its data set).

    Raises:
        KeyError: no such target; the message lists them.
        ImportError: its data set needs scikit-learn, which is not installed.
    """
    if name not in TARGETS:
        raise KeyError(f"no target {name!r}; targets: {', '.join(TARGETS)}")
    spec = TARGETS[name]
    target = spec.builder()
    if target.sites != spec.sites or target.development != spec.development:
        raise AssertionError(f"target {name!r} disagrees with its registry entry")
    return target
