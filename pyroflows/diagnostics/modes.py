"""Does the guide cover every mode that the multi-start MAP found?

A mode the guide misses entirely leaves no trace in the guide's own importance weights (every
weight alike, k-hat small, IW gap near zero), so the report checks it with the modes that the
Laplace start found (:mod:`pyroflows.guides.start`): with ``m = Σ_k π_k N(z_k*, H_k⁻¹)``, the
modes' Laplace approximations weighted by their Laplace masses, and ``n`` draws from each of
``q`` and ``m`` (a defensive mixture ``r = ½ q + ½ m``, Hesterberg 1995),

    Ẑ_r = mean over all 2n draws of p(x, z) / r(z)      (unbiased for the evidence Z),
    Ẑ_q = mean over the n draws of q of p(x, z) / q(z)   (the mass that q covers),

and the **missed mass** ``1 - Ẑ_q / Ẑ_r``, with a bootstrap standard error. A guide that covers
every mode has a missed mass near 0 (the mixture adds nothing where ``q`` already is); one that
covers only a mode of share ``π`` misses about ``1 - π``. The report calls it a missed mode
when the missed mass is at least :data:`MISSED_MASS_THRESHOLD` and more than
:data:`MISSED_MASS_SIGMAS` standard errors above 0, and :attr:`FitResult.verdict
<pyroflows.infer.fit.FitResult.verdict>` is then ``"unreliable"``.

The same draws weigh the modes against each other. Each draw belongs to the mode whose
weighted Laplace approximation ``π_k N(z; z_k*, H_k⁻¹)`` is largest there; the guide's share of
mode ``k`` is the fraction of its own draws that belong to it, the posterior's share the
self-normalized importance weight ``p/r`` of all ``2n`` draws that belong to it, and the
**share error** is half the sum of their absolute differences (the total variation between the
two share vectors), with a bootstrap standard error. A guide that holds every mode with the
wrong weights has weights that look alike within each mode, so k-hat and the IW gap can miss it
(AutoNAF on a 0.4/0.6 mixture at KL 0.20 put 0.83/0.17 on the modes, k-hat 0.09, "good"); a
share error of :data:`SHARE_ERROR_THRESHOLD` (0.1) moves 10% of the posterior's probability
between modes, which shifts a mean by a tenth of the distance between them. Such a fit is at
best ``"ok"`` (:func:`pyroflows.diagnostics.free_energy.combined_verdict`). On the development
mixtures AutoNAF fits at KL 0.17 and 0.20, both "good" from k-hat alone, had share errors 0.27
and 0.18, fits at KL 0.011 and 0.083 had 0.02 and 0.005.

Modes that L-BFGS did not find are not checked: the check is as good as the multi-start search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyroflows.diagnostics.defensive import guide_draws_and_log_q, random_state_kept
from pyroflows.guides.start import NOT_AN_ISOLATED_MODE, points_log_joint

__all__ = ["MISSED_MASS_THRESHOLD", "SHARE_ERROR_THRESHOLD", "ModeCoverage", "mode_coverage"]

#: a guide missing at least this fraction of the posterior mass has missed a mode
MISSED_MASS_THRESHOLD = 0.05
#: ... when the estimate is also this many bootstrap standard errors above zero
MISSED_MASS_SIGMAS = 3.0
#: a guide whose mode shares are this far (total variation) from the posterior's has the
#: modes' weights wrong (when also this many bootstrap standard errors above zero:
#: MISSED_MASS_SIGMAS)
SHARE_ERROR_THRESHOLD = 0.1
#: draws from each of the guide and the modes' mixture
COVERAGE_DRAWS = 500
_BOOTSTRAP_ROUNDS = 200


@dataclass(frozen=True)
class ModeCoverage:
    """The mode-coverage check of the report (see the module docstring).

    Attributes:
        num_modes: distinct modes found by the multi-start MAP (at least 2 here).
        missed_mass: ``1 - Ẑ_q / Ẑ_r``: the estimated share of the posterior's mass where the
            guide puts (almost) none.
        missed_mass_se: its bootstrap standard error.
        mode_shares: the modes' Laplace mass shares, heaviest first.
        guide_shares: the share of the guide's draws that belong to each mode.
        posterior_shares: the posterior's share of each mode, by importance weighting.
        share_error: half the sum of ``|guide_shares - posterior_shares|``.
        share_error_se: its bootstrap standard error.
    """

    num_modes: int
    missed_mass: float
    missed_mass_se: float
    mode_shares: tuple[float, ...]
    guide_shares: tuple[float, ...]
    posterior_shares: tuple[float, ...]
    share_error: float
    share_error_se: float

    @property
    def missed_mode(self) -> bool:
        """The missed mass is at least :data:`MISSED_MASS_THRESHOLD` and significant."""
        return _large_and_significant(self.missed_mass, self.missed_mass_se, MISSED_MASS_THRESHOLD)

    @property
    def misweighted(self) -> bool:
        """The guide holds the modes with the wrong weights: the share error is at least
        :data:`SHARE_ERROR_THRESHOLD` and significant."""
        return _large_and_significant(self.share_error, self.share_error_se, SHARE_ERROR_THRESHOLD)

    def __str__(self) -> str:
        def listed(shares: tuple[float, ...]) -> str:
            return "/".join(f"{share:.2f}" for share in shares)

        flag = "  MISSED MODE" if self.missed_mode else ""
        return (
            f"{self.missed_mass:.2f} ± {self.missed_mass_se:.2f} of the mass missed "
            f"({self.num_modes} modes, Laplace shares {listed(self.mode_shares)}){flag}; "
            f"mode shares {listed(self.guide_shares)} in the guide, "
            f"{listed(self.posterior_shares)} weighted, error {self.share_error:.2f} ± "
            f"{self.share_error_se:.2f}" + ("  WEIGHTS OFF" if self.misweighted else "")
        )


def _large_and_significant(estimate: float, standard_error: float, threshold: float) -> bool:
    """``estimate`` is at least ``threshold`` and more than :data:`MISSED_MASS_SIGMAS` of its
    standard errors above zero."""
    return estimate >= threshold and estimate > MISSED_MASS_SIGMAS * standard_error


def guide_modes(guide) -> list:
    """The modes that the guide's Laplace start found (``[]`` when there is no such record)."""
    start = getattr(guide, "start", None)
    if start is None:
        return []
    return list(start.details.get("modes", ()))


def start_found_no_isolated_mode(guide) -> bool:
    """Whether the guide's MAP search ended where the Hessian is singular or indefinite (see
    :data:`pyroflows.guides.start.NOT_AN_ISOLATED_MODE`)."""
    start = getattr(guide, "start", None)
    return bool(start is not None and start.details.get(NOT_AN_ISOLATED_MODE, False))


def mode_coverage(
    guide, args: tuple, kwargs: dict, num_draws: int = COVERAGE_DRAWS, seed: int = 0
) -> ModeCoverage | None:
    """The mode-coverage check of a pyroflows guide, or ``None`` when its start found fewer
    than two modes (nothing to check) or the model cannot be scored at the mixture's draws.

    Draws come from generators of their own seeded with ``seed``: the global random state is
    untouched and the check is the same for a fixed guide.

    Example:
        >>> coverage = mode_coverage(guide, (data,), {})  # doctest: +SKIP
        >>> coverage.missed_mode
        False
    """
    if len(guide_modes(guide)) < 2:
        return None
    with random_state_kept():
        return _mode_coverage(guide, args, kwargs, num_draws, seed)


def _mode_coverage(
    guide, args: tuple, kwargs: dict, num_draws: int, seed: int
) -> ModeCoverage | None:
    modes = guide_modes(guide)
    flow = guide.flow
    loc = flow[-1].loc
    device, dtype = loc.device, loc.dtype
    dim = loc.shape[-1]
    generator = torch.Generator(device=device).manual_seed(seed)

    log_mass = torch.tensor([mode.log_mass for mode in modes], dtype=torch.float64)
    log_share = (log_mass - torch.logsumexp(log_mass, 0)).to(device=device, dtype=dtype)
    components = torch.distributions.MultivariateNormal(
        torch.stack([mode.loc for mode in modes]).to(device=device, dtype=dtype),
        scale_tril=torch.stack([mode.scale_tril for mode in modes]).to(device=device, dtype=dtype),
    )

    def log_weighted_components(z: torch.Tensor) -> torch.Tensor:
        return components.log_prob(z.unsqueeze(-2)) + log_share

    from_q, log_q_own = guide_draws_and_log_q(guide, num_draws, generator)

    which = torch.multinomial(log_share.exp(), num_draws, replacement=True, generator=generator)
    white = torch.randn(num_draws, dim, 1, generator=generator, device=device, dtype=dtype)
    from_m = components.loc[which] + (components.scale_tril[which] @ white).squeeze(-1)
    posterior = guide.get_posterior(*args, **kwargs)
    log_q_m = posterior.log_prob(from_m)

    z = torch.cat([from_q, from_m])
    log_q = torch.cat([log_q_own, log_q_m])
    log_p = points_log_joint(guide, z, args, kwargs)
    if log_p is None:
        return None
    log_components = log_weighted_components(z)
    log_r = torch.logaddexp(log_q, torch.logsumexp(log_components, -1)) - math.log(2.0)
    log_w_r = (log_p - log_r).double().cpu()
    log_w_q = (log_p[:num_draws] - log_q_own).double().cpu()
    # -inf log p (outside the support) is a weight of 0; NaN cannot be judged
    if bool(torch.isnan(log_w_r).any() or torch.isnan(log_w_q).any()):
        return None

    def missed(w_q: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
        log_z_q = torch.logsumexp(w_q, -1) - math.log(w_q.shape[-1])
        log_z_r = torch.logsumexp(w_r, -1) - math.log(w_r.shape[-1])
        return 1.0 - torch.exp(torch.clamp(log_z_q - log_z_r, max=0.0))

    estimate = float(missed(log_w_q, log_w_r))
    # bootstrap, resampling the q draws and the m draws within their halves (stratified)
    boot = torch.Generator().manual_seed(seed + 1)
    index_q = torch.randint(0, num_draws, (_BOOTSTRAP_ROUNDS, num_draws), generator=boot)
    index_m = torch.randint(0, num_draws, (_BOOTSTRAP_ROUNDS, num_draws), generator=boot)
    log_w_r_q, log_w_r_m = log_w_r[:num_draws], log_w_r[num_draws:]
    rounds = missed(log_w_q[index_q], torch.cat([log_w_r_q[index_q], log_w_r_m[index_m]], -1))
    shares = tuple(float(share) for share in log_share.exp())
    # which mode each draw belongs to, one-hot: (2n, K)
    member = torch.nn.functional.one_hot(log_components.argmax(-1).cpu(), len(modes)).double()
    member_q, member_m = member[:num_draws], member[num_draws:]
    guide_share, posterior_share = _shares(member_q, member, log_w_r)
    share_error = _share_error(guide_share, posterior_share)
    boot_errors = _share_error(
        *_shares(
            member_q[index_q],
            torch.cat([member_q[index_q], member_m[index_m]], -2),
            torch.cat([log_w_r_q[index_q], log_w_r_m[index_m]], -1),
        )
    )
    return ModeCoverage(
        len(modes),
        estimate,
        float(rounds.std()),
        shares,
        tuple(float(share) for share in guide_share),
        tuple(float(share) for share in posterior_share),
        float(share_error),
        float(boot_errors.std()),
    )


def _shares(
    member_q: torch.Tensor, member_all: torch.Tensor, log_w_r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guide's share of each mode (the fraction of its draws ``member_q`` in it) and the
    posterior's (the self-normalized weights ``p/r`` of all draws ``member_all`` in it)."""
    weights = torch.softmax(log_w_r, -1).unsqueeze(-1)
    return member_q.mean(-2), (weights * member_all).sum(-2)


def _share_error(guide_share: torch.Tensor, posterior_share: torch.Tensor) -> torch.Tensor:
    """Half the sum of absolute differences (the total variation between share vectors)."""
    return 0.5 * (guide_share - posterior_share).abs().sum(-1)
