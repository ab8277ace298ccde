"""The free-energy report: how good is a fitted guide, in nats.

For a guide q and a model p(x, z), with importance weights ``w_s = p(x, z_s) / q(z_s)``:

* the free energy ``F = -ELBO = -E_q[log w]`` (with its Monte Carlo standard error),
* the importance-weighted bound ``log p̂(x) = log mean_s w_s`` over K draws (Burda et al. 2016),
* their gap ``log p̂(x) + F``: since ELBO <= IW bound <= log p(x), the gap is a lower bound on
  KL(q || p) in nats, tightening as K grows,
* the PSIS k-hat of the weights (Vehtari et al.; Yao et al. 2018): below 0.5 the guide is good,
  0.5-0.7 usable with care, above 0.7 not to be trusted,
* the effective sample size of the normalized weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights

__all__ = [
    "FreeEnergyReport",
    "format_reports",
    "free_energy_report",
    "importance_log_weights",
    "max_plate_nesting",
    "pareto_khat",
    "psis_log_weights",
]


def max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The number of plate dimensions the model and guide use (as Pyro's ELBOs infer it)."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    dims = [
        -frame.dim
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


@torch.no_grad()
def importance_log_weights(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 2000,
    batch_size: int = 1000,
    **kwargs,
) -> torch.Tensor:
    """``log p(x, z_s) - log q(z_s)`` for ``num_samples`` draws ``z_s ~ q``, shape ``(S,)``.

    Draws are vectorized in batches of ``batch_size`` to bound memory.
    """
    nesting = max_plate_nesting(model, guide, *args, **kwargs)
    chunks = []
    remaining = num_samples
    while remaining > 0:
        size = min(batch_size, remaining)
        log_w, _, _ = vectorized_importance_weights(
            model, guide, *args, num_samples=size, max_plate_nesting=nesting, **kwargs
        )
        chunks.append(log_w.reshape(-1).detach())
        remaining -= size
    return torch.cat(chunks)


def _psislw(log_weights: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
    """ArviZ's PSIS: smoothed, normalized log weights and k-hat."""
    log_weights = np.asarray(
        log_weights.detach().cpu().double()
        if isinstance(log_weights, torch.Tensor)
        else log_weights,
        dtype=np.float64,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

        if hasattr(arviz, "psislw"):  # arviz < 1.0
            smoothed, khat = arviz.psislw(log_weights)
        else:  # arviz >= 1.0 moved the statistics to arviz_stats
            import arviz_stats

            smoothed, khat = arviz_stats.psislw(log_weights)
    return np.asarray(smoothed), float(np.asarray(khat))


def pareto_khat(log_weights: np.ndarray | torch.Tensor) -> float:
    """The PSIS k-hat of a vector of log importance weights, computed with ArviZ."""
    return _psislw(log_weights)[1]


def psis_log_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto-smoothed log importance weights, normalized (``logsumexp = 0``), as a tensor."""
    smoothed, _ = _psislw(log_weights)
    return torch.as_tensor(smoothed, dtype=log_weights.dtype, device=log_weights.device)


@dataclass(frozen=True)
class FreeEnergyReport:
    """Quality of a fitted guide, from fresh draws. All values in nats.

    Attributes:
        free_energy: ``F = -ELBO``, the Monte Carlo mean of ``-log w``.
        free_energy_se: standard error of ``free_energy``.
        iw_bound: the importance-weighted bound ``log mean(w)`` with ``num_samples`` draws.
        kl_lower_bound: ``iw_bound + free_energy`` (= IW bound - ELBO), a lower bound on
            KL(q || p); exact KL is ``log p(x) + F`` when the evidence is known.
        khat: PSIS Pareto k-hat of the weights.
        ess: effective sample size of the self-normalized weights, out of ``num_samples``.
        num_samples: the number of draws K.
    """

    free_energy: float
    free_energy_se: float
    iw_bound: float
    kl_lower_bound: float
    khat: float
    ess: float
    num_samples: int

    @classmethod
    def from_log_weights(cls, log_weights: torch.Tensor) -> FreeEnergyReport:
        log_w = log_weights.detach().double().cpu()
        if bool(torch.isnan(log_w).any()):
            raise ValueError("the log importance weights contain NaN; the guide or model is broken")
        num = log_w.numel()
        free_energy = float(-log_w.mean())
        se = float(log_w.std() / math.sqrt(num)) if num > 1 else float("nan")
        iw_bound = float(torch.logsumexp(log_w, 0) - math.log(num))
        normalized = torch.softmax(log_w, 0)
        ess = float(1.0 / (normalized**2).sum())
        khat = pareto_khat(log_w) if num >= 20 and bool(torch.isfinite(log_w).all()) else math.inf
        return cls(free_energy, se, iw_bound, iw_bound + free_energy, khat, ess, num)

    @property
    def verdict(self) -> str:
        """Yao et al. (2018): k-hat < 0.5 good, 0.5-0.7 usable with care, > 0.7 unreliable."""
        if self.khat < 0.5:
            return "good"
        if self.khat < 0.7:
            return "ok"
        return "unreliable"

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "verdict": self.verdict}

    def __str__(self) -> str:
        return format_reports({"guide": self})


_ROWS = [
    ("free energy F = -ELBO", lambda r: f"{r.free_energy:.3f} ± {r.free_energy_se:.3f}"),
    ("IW bound log p̂(x)", lambda r: f"{r.iw_bound:.3f}"),
    ("gap (≤ KL(q‖p))", lambda r: f"{r.kl_lower_bound:.3f}"),
    ("PSIS k-hat", lambda r: f"{r.khat:.2f} ({r.verdict})"),
    ("ESS of weights", lambda r: f"{r.ess:.0f} / {r.num_samples}"),
]


def format_reports(
    reports: Mapping[str, FreeEnergyReport],
    extra_rows: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """A small text table with one column per guide.

    ``extra_rows`` maps a row label to ``{guide name: cell}``, for figures such as wall time.
    """
    names = list(reports)
    rows = [(label, [fmt(reports[n]) for n in names]) for label, fmt in _ROWS]
    for label, cells in (extra_rows or {}).items():
        rows.append((label, [cells.get(n, "") for n in names]))
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(n), *(len(cells[i]) for _, cells in rows)) for i, n in enumerate(names)]
    header = (
        " " * label_width + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))
    )
    lines = [header]
    for label, cells in rows:
        lines.append(
            label.ljust(label_width)
            + "  "
            + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def free_energy_report(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 2000,
    batch_size: int = 1000,
    **kwargs,
) -> FreeEnergyReport:
    """Draws ``num_samples`` fresh samples from ``guide`` and reports F, the IW bound and k-hat.

    Works with any Pyro guide whose model has static structure (pyroflows and Pyro autoguides).

    Example:
        >>> report = free_energy_report(model, guide, data, num_samples=1000)  # doctest: +SKIP
        >>> print(report)
    """
    log_w = importance_log_weights(
        model, guide, *args, num_samples=num_samples, batch_size=batch_size, **kwargs
    )
    return FreeEnergyReport.from_log_weights(log_w)
