"""A stack of flow layers that is itself one layer: what ``make_flow`` returns."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.distributions import Transform

from pyroflows.transforms.layer import FlowLayer, check_context

__all__ = ["FlowStack"]


class FlowStack(FlowLayer):
    """``x = f_K(… f_1(u))`` with one shared context: a :class:`FlowLayer` made of layers.

    Members are :class:`FlowLayer` s (which receive the context) or any other bijective
    ``Transform`` (applied as they are). ``log|det ∂x/∂u|`` is the sum of the members' and is
    computed in the same pass as ``x``, in either direction; the stack's own cache keeps it for
    its last output, so a flow distribution scores its own samples for free.

    Example:
        >>> from pyroflows.transforms import make_flow
        >>> flow = make_flow("realnvp", 4, num_transforms=3)
        >>> u = torch.randn(6, 4)
        >>> x = flow(u)
        >>> torch.allclose(flow.inv(x.clone()), u, atol=1e-5)
        True
    """

    def __init__(self, layers: Sequence[Transform], input_dim: int, context_dim: int = 0):
        super().__init__(input_dim, context_dim)
        for layer in layers:
            if isinstance(layer, FlowLayer) and layer.context_dim not in (0, context_dim):
                raise ValueError(
                    f"a layer with context_dim={layer.context_dim} cannot join a stack with "
                    f"context_dim={context_dim}"
                )
        self.layers = nn.ModuleList([layer for layer in layers if isinstance(layer, nn.Module)])
        self._members = list(layers)

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self):
        return iter(self._members)

    def __getitem__(self, index: int) -> Transform:
        return self._members[index]

    @property
    def initial_scale(self) -> float:
        scale = 1.0
        for layer in self._members:
            scale *= float(getattr(layer, "initial_scale", 1.0))
        return scale

    @staticmethod
    def _layer_context(layer, context):
        return context if isinstance(layer, FlowLayer) and layer.context_dim > 0 else None

    def forward_with_log_det(self, u, context=None, need_log_det=True):
        check_context(context, self.context_dim)
        total = None
        for layer in self._members:
            if isinstance(layer, FlowLayer):
                x, log_det = layer.forward_with_log_det(
                    u, self._layer_context(layer, context), need_log_det
                )
            else:
                x = layer(u)
                log_det = layer.log_abs_det_jacobian(u, x) if need_log_det else None
            if need_log_det:
                total = log_det if total is None else total + log_det
            u = x
        if need_log_det and total is None:
            total = u.new_zeros(u.shape[:-1])
        return u, total

    def inverse_with_log_det(self, x, context=None):
        check_context(context, self.context_dim)
        total = None
        for layer in reversed(self._members):
            if isinstance(layer, FlowLayer):
                u, log_det = layer.inverse_with_log_det(x, self._layer_context(layer, context))
            else:
                u = layer.inv(x)
                log_det = layer.log_abs_det_jacobian(u, x)
            total = log_det if total is None else total + log_det
            x = u
        if total is None:
            total = x.new_zeros(x.shape[:-1])
        return x, total
