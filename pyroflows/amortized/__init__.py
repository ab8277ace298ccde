"""Amortized flows for variational autoencoders: encoder-conditioned flow posteriors q(z | x),
flow priors p(z), a Bernoulli VAE, and encoder/decoder networks."""

from pyroflows.amortized.networks import (
    Autocast,
    GatedConv2d,
    GatedConvTranspose2d,
    gated_conv_decoder,
    gated_conv_encoder,
    mlp,
)
from pyroflows.amortized.posterior import POSTERIOR_FLOWS, AmortizedFlowPosterior
from pyroflows.amortized.prior import FlowPrior, MAFPrior
from pyroflows.amortized.vae import BernoulliVAE

__all__ = [
    "POSTERIOR_FLOWS",
    "AmortizedFlowPosterior",
    "Autocast",
    "BernoulliVAE",
    "FlowPrior",
    "GatedConv2d",
    "GatedConvTranspose2d",
    "MAFPrior",
    "gated_conv_decoder",
    "gated_conv_encoder",
    "mlp",
]
