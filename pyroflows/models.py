"""Built-in models whose log evidence is known, for the demo, tests and benchmarks.

Each builder returns a :class:`KnownEvidenceModel`: a Pyro model, its arguments, and ``log Z``,
so that ``KL(q || p) = log Z - ELBO`` can be measured exactly.

* :func:`linear_regression`: conjugate Gaussian linear regression with correlated features;
  ``log Z`` and the exact posterior in closed form.
* :func:`banana`: a curved two-dimensional density written as a model (normalized by
  construction, ``log Z = 0``).
* :func:`funnel`: Neal's funnel, normalized by construction (``log Z = 0``).
* :func:`gaussian_mixture`: two well-separated modes, normalized by construction.

And one stress model whose evidence is not known, for stability tests (only free energies are
compared on it):

* :func:`horseshoe_regression`: a sparse regression under a horseshoe prior.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "KnownEvidenceModel",
    "banana",
    "builtin_models",
    "funnel",
    "gaussian_mixture",
    "horseshoe_regression",
    "linear_regression",
]


@dataclass
class KnownEvidenceModel:
    """A model, the arguments to call it with, and its exact log evidence ``log Z``."""

    name: str
    model: Callable
    args: tuple
    log_evidence: float
    latent_dim: int
    description: str
    kwargs: dict = field(default_factory=dict)
    #: exact posterior mean and covariance of the latent vector, where known
    posterior_mean: torch.Tensor | None = None
    posterior_cov: torch.Tensor | None = None


def _normalized(
    name: str, model: Callable, latent_dim: int, description: str
) -> KnownEvidenceModel:
    """A normalized density written as a model without arguments: ``log Z = 0``."""
    return KnownEvidenceModel(name, model, (), 0.0, latent_dim, description)


def linear_regression(
    dim: int = 10,
    num_data: int = 40,
    noise_scale: float = 0.5,
    prior_scale: float = 1.0,
    correlation: float = 0.9,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> KnownEvidenceModel:
    """Bayesian linear regression ``y ~ N(X w, noise^2)``, ``w ~ N(0, prior^2 I)``.

    The features are equicorrelated (``correlation`` between any two columns), which makes the
    posterior over ``w`` strongly correlated: a diagonal Gaussian guide cannot fit it, a flow
    (or a full-rank Gaussian) can. Evidence: ``y ~ N(0, noise^2 I + prior^2 X X^T)``.
    """
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(num_data, 1, generator=generator, dtype=torch.float64)
    own = torch.randn(num_data, dim, generator=generator, dtype=torch.float64)
    features = correlation**0.5 * shared + (1 - correlation) ** 0.5 * own
    weights = prior_scale * torch.randn(dim, generator=generator, dtype=torch.float64)
    targets = features @ weights + noise_scale * torch.randn(
        num_data, generator=generator, dtype=torch.float64
    )

    evidence_cov = noise_scale**2 * torch.eye(num_data, dtype=torch.float64) + (
        prior_scale**2 * features @ features.T
    )
    log_evidence = dist.MultivariateNormal(
        torch.zeros(num_data, dtype=torch.float64), evidence_cov
    ).log_prob(targets)
    precision = torch.eye(dim, dtype=torch.float64) / prior_scale**2 + (
        features.T @ features / noise_scale**2
    )
    posterior_cov = torch.linalg.inv(precision)
    posterior_mean = posterior_cov @ features.T @ targets / noise_scale**2

    def linreg_model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[-1]), prior_scale).to_event(1))
        mean = (w.unsqueeze(-2) * x).sum(-1)  # broadcasts over vectorized particles
        pyro.sample("y", dist.Normal(mean, noise_scale).to_event(1), obs=y)
        return w

    return KnownEvidenceModel(
        name="linreg",
        model=linreg_model,
        args=(features.to(dtype), targets.to(dtype)),
        log_evidence=float(log_evidence),
        latent_dim=dim,
        description=f"conjugate linear regression, {dim} correlated weights, {num_data} points",
        posterior_mean=posterior_mean,
        posterior_cov=posterior_cov,
    )


def banana(curvature: float = 1.0, scale: float = 1.5, width: float = 0.5) -> KnownEvidenceModel:
    """A banana: ``a ~ N(0, scale)``, ``b ~ N(curvature (a^2 - scale^2), width)``.

    A normalized density written as a model, so ``log Z = 0``; its curved shape is what a
    Gaussian guide cannot follow.
    """

    def banana_model() -> None:
        a = pyro.sample("a", dist.Normal(0.0, scale))
        pyro.sample("b", dist.Normal(curvature * (a**2 - scale**2), width))

    return _normalized(
        "banana", banana_model, 2, f"banana: b | a ~ N({curvature} (a^2 - {scale}^2), {width}^2)"
    )


def funnel(dim: int = 5, log_scale_sd: float = 1.5) -> KnownEvidenceModel:
    """Neal's funnel: ``v ~ N(0, log_scale_sd)``, ``x_i ~ N(0, exp(v / 2))`` for ``dim - 1``
    coordinates. Normalized by construction, ``log Z = 0``."""

    def funnel_model() -> None:
        v = pyro.sample("v", dist.Normal(0.0, log_scale_sd))
        pyro.sample(
            "x",
            dist.Normal(torch.zeros(dim - 1), torch.exp(v / 2).unsqueeze(-1)).to_event(1),
        )

    return _normalized(
        "funnel",
        funnel_model,
        dim,
        f"Neal's funnel in {dim} dimensions, v ~ N(0, {log_scale_sd}^2)",
    )


def gaussian_mixture(separation: float = 4.0, scale: float = 0.5) -> KnownEvidenceModel:
    """An equal mixture of two 2-D Gaussians at ``(±separation / 2, 0)``, written as a model
    (a broad Normal site plus a factor), normalized by construction: ``log Z = 0``. A
    single-mode guide loses ``log 2`` nats here."""
    centers = torch.tensor([[-separation / 2, 0.0], [separation / 2, 0.0]])
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.5, 0.5])), dist.Normal(centers, scale).to_event(1)
    )
    reference_scale = separation + 3 * scale

    def mixture_model() -> None:
        reference = dist.Normal(torch.zeros(2), reference_scale).to_event(1)
        z = pyro.sample("z", reference)
        pyro.factor("mixture", mixture.log_prob(z) - reference.log_prob(z))

    return _normalized(
        "bimodal", mixture_model, 2, f"equal mixture of N((±{separation / 2:g}, 0), {scale}^2 I)"
    )


def horseshoe_regression(
    num_rows: int = 100,
    num_coefs: int = 20,
    coefficients: tuple[float, ...] = (3.0, -2.0, 1.5),
    noise_scale: float = 0.5,
    seed: int = 0,
) -> tuple[Callable, tuple[torch.Tensor, torch.Tensor]]:
    """A sparse regression under a horseshoe prior (Carvalho et al. 2010), ``D = 2P + 2``
    latent dimensions for ``P = num_coefs``:

        τ ~ C⁺(0, 1),  λ_j ~ C⁺(0, 1),  β_j ~ N(0, τ λ_j),  σ ~ N⁺(0, 1),  y ~ N(X β, σ),

    with Gaussian features and the first ``len(coefficients)`` true coefficients non-zero. Its
    posterior is a funnel in every ``(log λ_j, β_j)`` pair with Cauchy tails, and its log joint
    grows without bound as ``τ → 0`` (the MAP is degenerate). Its evidence is not known: it is
    a stress model for stability (the README's plain SVI loop turned NaN on it before 0.2).
    The model is vectorization-safe (``X β`` as a broadcast sum).

    Returns:
        ``(model, (x, y))``: call ``model(x, y)``.

    Example:
        >>> model, (x, y) = horseshoe_regression(num_rows=50, num_coefs=10)
        >>> x.shape, y.shape
        (torch.Size([50, 10]), torch.Size([50]))
    """
    if len(coefficients) > num_coefs:
        raise ValueError(
            f"coefficients has {len(coefficients)} non-zero values for num_coefs={num_coefs}"
        )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, num_coefs, generator=generator)
    weights = torch.zeros(num_coefs)
    weights[: len(coefficients)] = torch.tensor(coefficients)
    y = x @ weights + noise_scale * torch.randn(num_rows, generator=generator)

    def horseshoe_model(x: torch.Tensor, y: torch.Tensor) -> None:
        tau = pyro.sample("tau", dist.HalfCauchy(1.0))
        with pyro.plate("coef", x.shape[1]):
            lam = pyro.sample("lam", dist.HalfCauchy(1.0))
            beta = pyro.sample("beta", dist.Normal(0.0, tau * lam))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            mean = (x * beta.unsqueeze(-2)).sum(-1)
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)

    return horseshoe_model, (x, y)


def builtin_models() -> dict[str, Callable[[], KnownEvidenceModel]]:
    """Name -> builder of every built-in model."""
    return {
        "linreg": linear_regression,
        "banana": banana,
        "funnel": funnel,
        "bimodal": gaussian_mixture,
    }
