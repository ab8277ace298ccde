"""A Bernoulli VAE as a Pyro model and guide, with a flow posterior and an optional flow prior."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyroflows.amortized.posterior import AmortizedFlowPosterior, check_same_device

__all__ = ["BernoulliVAE"]


class BernoulliVAE(nn.Module):
    """``z ~ p(z)``, ``x | z ~ Bernoulli(logits=decoder(z))``, with ``q(z | x)`` a flow posterior.

    ``model`` and ``guide`` are ordinary Pyro programs (data plate ``"data"``, latent site
    ``"z"``, observed site ``"x"``), so ``SVI``, ``Trace_ELBO``, ``Predictive`` and
    :func:`pyroflows.infer.importance_log_likelihood` apply. ``kl_scale`` multiplies the
    ``z`` site in both, which turns the ELBO into ``E[log p(x|z)] - kl_scale * KL`` (KL warm-up).

    Args:
        posterior: the amortized posterior ``q(z | x)``.
        decoder: a module from ``(..., latent_dim)`` to logits ``(..., data_dim)``.
        prior: a module whose call returns the prior distribution (e.g.
            :class:`~pyroflows.amortized.MAFPrior`), or ``None`` for ``N(0, I)``.

    Example:
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> from pyroflows.amortized import AmortizedFlowPosterior, MAFPrior
        >>> encoder = nn.Sequential(nn.Linear(20, 32), nn.ELU())
        >>> posterior = AmortizedFlowPosterior(encoder, 32, latent_dim=4, flow="iaf")
        >>> vae = BernoulliVAE(posterior, nn.Linear(4, 20), prior=MAFPrior(4))
        >>> svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        >>> loss = svi.step(torch.rand(8, 20).bernoulli())
    """

    def __init__(
        self,
        posterior: AmortizedFlowPosterior,
        decoder: nn.Module,
        prior: nn.Module | None = None,
    ):
        super().__init__()
        self.posterior = posterior
        self.decoder = decoder
        self.prior = prior
        self.latent_dim = posterior.latent_dim

    def prior_distribution(self, like: torch.Tensor) -> dist.TorchDistribution:
        if self.prior is not None:
            return self.prior()
        zeros = like.new_zeros(self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def model(self, x: torch.Tensor, kl_scale: float = 1.0) -> torch.Tensor:
        pyro.module("decoder", self.decoder)
        if self.prior is not None:
            pyro.module("prior", self.prior)
        check_same_device(x, self.decoder, "the batch x")
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_scale):
                z = pyro.sample("z", self.prior_distribution(x))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
        return z

    def guide(self, x: torch.Tensor, kl_scale: float = 1.0) -> torch.Tensor:
        pyro.module("posterior", self.posterior)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_scale):
            return pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def generate(self, num_images: int) -> torch.Tensor:
        """Pixel probabilities of ``num_images`` images decoded from prior draws."""
        like = next(self.decoder.parameters())
        z = self.prior_distribution(like).sample((num_images,))
        return torch.sigmoid(self.decoder(z))
