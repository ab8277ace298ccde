"""Encoder and decoder networks for VAEs on 28x28 binary images: a small MLP, and the gated
convolutional architecture of van den Berg et al. (2018), after Tomczak & Welling (2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "Autocast",
    "GatedConv2d",
    "GatedConvTranspose2d",
    "gated_conv_decoder",
    "gated_conv_encoder",
    "mlp",
]


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ELU, last_activation=True):
    """``Linear -> activation`` for each consecutive pair of ``sizes``.

    Example:
        >>> mlp([784, 300, 300])(torch.zeros(2, 784)).shape
        torch.Size([2, 300])
    """
    layers: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if last_activation or index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GatedConv2d(nn.Module):
    """``conv_h(x) * sigmoid(conv_g(x))``, the gated convolution (Dauphin et al. 2017)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.conv(x).chunk(2, dim=-3)
        return h * torch.sigmoid(g)


class GatedConvTranspose2d(nn.Module):
    """The transposed (upsampling) gated convolution."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0
    ):
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            in_channels, 2 * out_channels, kernel_size, stride, padding, output_padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.conv(x).chunk(2, dim=-3)
        return h * torch.sigmoid(g)


class _Batched(nn.Module):
    """Runs an image network on inputs with any number of leading batch dimensions."""

    def __init__(self, net: nn.Module, event_dims: int):
        super().__init__()
        self.net = net
        self.event_dims = event_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - self.event_dims]
        out = self.net(x.reshape((-1,) + x.shape[len(batch) :]))
        return out.reshape(batch + out.shape[1:])


def gated_conv_encoder(feature_dim: int = 256) -> nn.Module:
    """Flattened 28x28 images ``(..., 784)`` to features ``(..., feature_dim)`` (default 256):
    five 5x5 gated convolutions (32, 32, 64, 64, 64 channels, stride 2 at the second and the
    fourth) and a 7x7 gated convolution down to 1x1."""
    net = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        GatedConv2d(1, 32, 5, 1, 2),
        GatedConv2d(32, 32, 5, 2, 2),
        GatedConv2d(32, 64, 5, 1, 2),
        GatedConv2d(64, 64, 5, 2, 2),
        GatedConv2d(64, 64, 5, 1, 2),
        GatedConv2d(64, feature_dim, 7, 1, 0),
        nn.Flatten(1),
    )
    return _Batched(net, event_dims=1)


def gated_conv_decoder(latent_dim: int) -> nn.Module:
    """Latents ``(..., latent_dim)`` to Bernoulli logits ``(..., 784)``: the encoder's mirror
    image with transposed gated convolutions, then a 1x1 convolution to one channel."""
    net = nn.Sequential(
        nn.Unflatten(1, (latent_dim, 1, 1)),
        GatedConvTranspose2d(latent_dim, 64, 7, 1, 0),
        GatedConvTranspose2d(64, 64, 5, 1, 2),
        GatedConvTranspose2d(64, 32, 5, 2, 2, 1),
        GatedConvTranspose2d(32, 32, 5, 1, 2),
        GatedConvTranspose2d(32, 32, 5, 2, 2, 1),
        GatedConvTranspose2d(32, 32, 5, 1, 2),
        nn.Conv2d(32, 1, 1),
        nn.Flatten(1),
    )
    return _Batched(net, event_dims=1)


class Autocast(nn.Module):
    """Runs a network under ``torch.autocast`` (mixed precision) and returns float32.

    Meant for the encoder and decoder networks only: flows, log-densities and the ELBO stay in
    full precision. A no-op unless ``dtype`` is given.

    Example:
        >>> net = Autocast(nn.Linear(4, 2), dtype=torch.bfloat16)
        >>> net(torch.zeros(3, 4)).dtype
        torch.float32
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype | None = torch.bfloat16):
        super().__init__()
        self.net = net
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.net(x)
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.net(x)
        return out.float()
