"""An elementwise affine map with a learnable location and positive scale."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn

__all__ = ["ElementwiseAffine"]


class ElementwiseAffine(TransformModule):
    """``y = loc + scale * x`` with ``scale = exp(log_scale)`` learnable per dimension.

    The last layer of every pyroflows guide: the flow layers before it work on standardized
    coordinates, and this layer carries the posterior's location and scale, started at the
    model's ``init_loc_fn`` values and the guide's ``init_scale``. The scale is learned in log
    space, at the same rate as the log-scales of the flow layers.

    Example:
        >>> t = ElementwiseAffine(torch.tensor([100.0, -3.0]), torch.tensor([0.1, 2.0]))
        >>> t(torch.zeros(2))
        tensor([100.,  -3.], grad_fn=<AddBackward0>)
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__(cache_size=1)
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device).expand_as(loc)
        if not bool((scale > 0).all()):
            raise ValueError("ElementwiseAffine needs a positive scale")
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(torch.log(scale.detach().clone()))

    @property
    def scale(self) -> torch.Tensor:
        return torch.exp(self.log_scale)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.loc + self.scale * x

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.loc) / self.scale

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_scale.sum(-1).expand(x.shape[:-1])
