"""Coupling flow layers (Dinh et al. 2015, 2017): half the coordinates pass through and
parameterize the transformer of the other half."""

from __future__ import annotations

import torch

from pyroflows.nn.conditioner_mlp import ConditionerMLP
from pyroflows.transforms.layer import FlowLayer, check_context
from pyroflows.transforms.transformers.base import Transformer

__all__ = ["CouplingTransform", "alternating_mask"]


def alternating_mask(dim: int, flip: bool = False) -> torch.Tensor:
    """``True`` for the coordinates that pass through: the first ``⌈D/2⌉`` (or, flipped, the
    last ``⌊D/2⌋``), so consecutive layers with alternating ``flip`` transform every
    coordinate.

    Example:
        >>> alternating_mask(5).tolist(), alternating_mask(5, flip=True).tolist()
        ([True, True, True, False, False], [False, False, False, True, True])
    """
    mask = torch.arange(dim) < (dim + 1) // 2
    return ~mask if flip else mask


class CouplingTransform(FlowLayer):
    r"""``x_A = u_A``, ``x_B = τ(u_B; θ(u_A, h))``: one conditioner pass in either direction.

    ``mask`` (a boolean vector of length ``D``) marks the pass-through coordinates ``A``; the
    conditioner maps ``u_A`` (and the context) to parameters of shape ``(num_params, |B|)``.
    ``log|det ∂x/∂u| = Σ_{i∈B} log τ'(u_i)``. The affine transformer gives RealNVP, the additive
    one NICE, the spline transformer the coupling neural spline flow.

    Example:
        >>> from pyroflows.transforms.transformers import AffineTransformer
        >>> mask = alternating_mask(4)
        >>> net = ConditionerMLP(2, num_params=2, out_features=2, hidden_dims=[8])
        >>> layer = CouplingTransform(mask, net, AffineTransformer())
        >>> u = torch.randn(3, 4)
        >>> torch.allclose(layer.inv(layer(u).clone()), u)
        True
    """

    def __init__(self, mask: torch.Tensor, conditioner: ConditionerMLP, transformer: Transformer):
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 1:
            raise ValueError(f"mask must be a vector, got shape {tuple(mask.shape)}")
        kept, changed = int(mask.sum()), int((~mask).sum())
        if (conditioner.in_features, conditioner.out_features) != (kept, changed):
            raise ValueError(
                f"the mask keeps {kept} and transforms {changed} coordinates, but the "
                f"conditioner maps {conditioner.in_features} to {conditioner.out_features}"
            )
        if conditioner.num_params != transformer.num_params:
            raise ValueError(
                f"the conditioner emits {conditioner.num_params} numbers per coordinate but the "
                f"{type(transformer).__name__} needs {transformer.num_params}"
            )
        super().__init__(len(mask), conditioner.context_dim)
        self.conditioner = conditioner
        self.transformer = transformer
        self.register_buffer("mask", mask)
        self.register_buffer("kept_index", torch.nonzero(mask).squeeze(-1))
        self.register_buffer("changed_index", torch.nonzero(~mask).squeeze(-1))
        self.register_buffer(
            "restore_index", torch.argsort(torch.cat([self.kept_index, self.changed_index]))
        )

    @property
    def initial_scale(self) -> float:
        return 1.0  # the transformed half starts at initial_slope, the rest at 1: not uniform

    def _split(self, v):
        return v.index_select(-1, self.kept_index), v.index_select(-1, self.changed_index)

    def _join(self, kept, changed):
        batch = torch.broadcast_shapes(kept.shape[:-1], changed.shape[:-1])
        joined = torch.cat(
            [kept.expand(batch + kept.shape[-1:]), changed.expand(batch + changed.shape[-1:])], -1
        )
        return joined.index_select(-1, self.restore_index)

    def forward_with_log_det(self, u, context=None, need_log_det=True):
        check_context(context, self.context_dim)
        kept, changed = self._split(u)
        params = self.conditioner(kept, context)
        out, log_slope = self.transformer(changed, params, need_log_det)
        x = self._join(kept, out)
        return x, (log_slope.sum(-1) if need_log_det else None)

    def inverse_with_log_det(self, x, context=None):
        check_context(context, self.context_dim)
        kept, changed = self._split(x)
        params = self.conditioner(kept, context)
        out, log_slope = self.transformer.inverse(changed, params)
        return self._join(kept, out), log_slope.sum(-1)
