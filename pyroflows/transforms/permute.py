"""A fixed permutation of the last dimension, stored as a buffer so it is saved with the guide."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule

__all__ = ["Permute", "interleave_permutations"]


class Permute(TransformModule):
    """``y = x[..., permutation]``; volume preserving.

    Unlike :class:`pyro.distributions.transforms.Permute`, the permutation is a registered buffer,
    so ``state_dict()`` saves it and ``.to(device)`` moves it.

    Example:
        >>> perm = Permute(torch.tensor([2, 0, 1]))
        >>> perm(torch.tensor([10.0, 11.0, 12.0]))
        tensor([12., 10., 11.])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1
    volume_preserving = True

    def __init__(self, permutation: torch.Tensor | Sequence[int]):
        super().__init__(cache_size=1)
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if sorted(permutation.tolist()) != list(range(len(permutation))):
            raise ValueError("Permute needs a permutation of range(n)")
        self.register_buffer("permutation", permutation.clone())
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    @classmethod
    def reverse(cls, dim: int) -> Permute:
        """The order-reversing permutation of ``dim`` elements."""
        return cls(torch.arange(dim - 1, -1, -1))

    @classmethod
    def random(cls, dim: int, generator: torch.Generator | None = None) -> Permute:
        """A uniformly random permutation of ``dim`` elements."""
        return cls(torch.randperm(dim, generator=generator))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.permutation)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.index_select(-1, self.inverse_permutation)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-1])


def interleave_permutations(
    layers: Sequence[TransformModule], dim: int, kind: str = "reverse"
) -> list[TransformModule]:
    """``[L1, P, L2, P', L3, ...]``: a fixed permutation (``"reverse"``, or ``"random"`` from a
    seeded generator, so the same guide is built every time) between consecutive layers."""
    if kind not in ("reverse", "random"):
        raise ValueError(f"permutation must be 'reverse' or 'random', got {kind!r}")
    generator = torch.Generator().manual_seed(0)
    result: list[TransformModule] = []
    for index, layer in enumerate(layers):
        if index > 0:
            if kind == "reverse":
                result.append(Permute.reverse(dim))
            else:
                result.append(Permute.random(dim, generator=generator))
        result.append(layer)
    return result
