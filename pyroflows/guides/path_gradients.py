"""When a flow guide's draws carry sticking-the-landing gradients (Roeder, Wu & Duvenaud 2017).

The ELBO gradient ``∇_φ E_q[log p(x, z) - log q_φ(z)]`` with ``z = f_φ(u)`` has two parts: the
path term, through ``z``, and the score term ``-E_q[∇_φ log q_φ(z)]`` at fixed ``z``, whose mean
is zero but whose noise does not vanish as ``q`` nears the posterior. Sticking the landing drops
the score term (:class:`~pyroflows.distributions.FlowDistribution`). That keeps the gradient
unbiased for the plain ELBO (Pyro's ``Trace_ELBO``, ``TraceMeanField_ELBO``,
``TraceGraph_ELBO``, ``TraceEnum_ELBO``), not for importance-weighted objectives (``RenyiELBO``,
``TraceTailAdaptive_ELBO``: Tucker et al. 2019), and ``torch.jit`` cannot trace its batched
Jacobian.

So a guide whose ``sticking_the_landing`` is ``"auto"`` (the default) asks, at each draw, which
ELBO is calling it (:func:`calling_elbo`, by walking up the Python call stack to the ELBO method
that runs the guide) and uses path gradients only under a plain one: in a user's own
``SVI(model, guide, optim, Trace_ELBO())`` loop they are on, under ``RenyiELBO`` or a JIT ELBO
off, and outside any ELBO (``Predictive``, a direct call) off.

Example:
    >>> from pyro.infer import RenyiELBO, Trace_ELBO
    >>> path_gradient_problem(Trace_ELBO()) is None
    True
    >>> path_gradient_problem(RenyiELBO()) is not None
    True
"""

from __future__ import annotations

import sys

from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceTailAdaptive_ELBO,
)

__all__ = ["STL_MAX_DIM", "calling_elbo", "path_gradient_problem", "suits_path_gradients"]

#: sticking-the-landing gradients by default ("auto", in ``fit`` and in a guide's own loop) up
#: to this many latent dimensions: their cost per step grows as ``D`` batched passes plus ``D³``
STL_MAX_DIM = 64

#: the ELBOs whose gradient stays unbiased without log q's score term
PLAIN_ELBOS = (Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO)
#: JIT-compiled ELBOs (subclasses of the plain ones): their trace cannot hold the Jacobian pass
JIT_ELBOS = (JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO, JitTraceMeanField_ELBO)

#: names of the ELBO methods on the stack between ``loss``/``loss_and_grads`` and the guide
_ELBO_METHODS = frozenset(
    {"_get_trace", "_get_vectorized_trace", "_get_traces", "loss", "loss_and_grads"}
)
#: how far up the stack :func:`calling_elbo` looks (Pyro's handlers add a few frames per layer)
_MAX_FRAMES = 64


def suits_path_gradients(guide) -> bool:
    """Whether ``"auto"`` (the guide's and ``fit``'s) gives ``guide`` (set up with the model)
    sticking-the-landing gradients: not a ``multimodal`` family (NAF and spline flows keep the
    plain ones) and at most :data:`STL_MAX_DIM` latent dimensions."""
    return not getattr(guide, "multimodal", False) and guide.latent_dim <= STL_MAX_DIM


def path_gradient_problem(elbo: ELBO) -> str | None:
    """Why sticking-the-landing gradients do not apply under ``elbo``, or None where they do
    (a plain ELBO, not JIT-compiled)."""
    if isinstance(elbo, JIT_ELBOS):
        return f"torch.jit cannot trace the path gradient's Jacobian ({type(elbo).__name__})"
    if not isinstance(elbo, PLAIN_ELBOS) or isinstance(elbo, TraceTailAdaptive_ELBO):
        return (
            f"{type(elbo).__name__} is not the plain ELBO: an importance-weighted objective needs "
            "the score term that sticking the landing drops"
        )
    return None


def calling_elbo() -> ELBO | None:
    """The Pyro ELBO whose method (``loss_and_grads``, ``_get_trace``, ...) is on the call stack
    above the caller, the nearest one; None when the guide runs outside an ELBO."""
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        if frame.f_code.co_name in _ELBO_METHODS:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ELBO):
                return candidate
        frame = frame.f_back
    return None
