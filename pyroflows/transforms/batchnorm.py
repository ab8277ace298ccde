"""Batch normalization as a bijector (Dinh et al. 2017, appendix E; Papamakarios et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from pyroflows.transforms.layer import FlowLayer, check_context

__all__ = ["BatchNorm"]


class BatchNorm(FlowLayer):
    r"""``u = (x - μ) / sqrt(σ² + ε) · exp(γ) + β`` in the density direction (``x -> u``), and
    its inverse in the sampling direction (``u -> x``, the layer's forward map).

    In training mode, the density direction normalizes with the statistics ``μ, σ²`` of the
    batch it is given (every leading axis counts as batch) and updates running averages with
    ``momentum``; in evaluation mode (``layer.eval()``) and in the sampling direction it uses the
    running averages. ``log|det ∂x/∂u| = Σ_i (½ log(σ_i² + ε) - γ_i)``.

    **For density estimation** (``pyroflows.density``, a MAF prior) it is what the MAF paper
    places between layers: it keeps each layer's input standardized while training and, after
    ``eval()``, is a fixed elementwise affine map.

    **Inside a guide** it means little: a guide only samples, so the running statistics never
    move (they change only when log q of external points is computed in training mode) and the
    layer is an elementwise affine map with learnable ``γ, β``, which the guide's affine stage
    already provides. It is therefore not in any guide's default stack.

    Example:
        >>> bn = BatchNorm(2)
        >>> x = 3.0 + 2.0 * torch.randn(500, 2)
        >>> u = bn.inv(x)  # training mode: the batch's own statistics
        >>> bool(u.mean(0).abs().max() < 1e-5), bool((u.std(0) - 1).abs().max() < 0.01)
        (True, True)
    """

    def __init__(self, input_dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__(input_dim, 0)
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.log_gamma = nn.Parameter(torch.zeros(input_dim))
        self.beta = nn.Parameter(torch.zeros(input_dim))
        self.register_buffer("running_mean", torch.zeros(input_dim))
        self.register_buffer("running_var", torch.ones(input_dim))

    def _log_det(self, var: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        log_det = (0.5 * torch.log(var + self.eps) - self.log_gamma).sum(-1)
        return log_det.expand(batch_shape)

    def forward_with_log_det(self, u, context=None, need_log_det=True):
        check_context(context, 0)
        mean, var = self.running_mean, self.running_var
        x = (u - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean
        return x, (self._log_det(var, u.shape[:-1]) if need_log_det else None)

    def inverse_with_log_det(self, x, context=None):
        check_context(context, 0)
        if self.training:
            flat = x.reshape(-1, self.input_dim)
            if flat.shape[0] < 2:
                raise ValueError(
                    "BatchNorm in training mode needs a batch of at least 2 points to estimate "
                    "its statistics; call layer.eval() to use the running averages"
                )
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(flat.var(0, unbiased=True).detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        u = (x - mean) / torch.sqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        return u, self._log_det(var, x.shape[:-1])

    def extra_repr(self) -> str:
        return f"{self.input_dim}, momentum={self.momentum}, eps={self.eps}"
