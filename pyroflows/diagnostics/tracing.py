"""The one code path that draws from a guide and scores the model: every diagnostic uses it.

For ``S`` draws ``z_s ~ q`` it gives ``log q(z_s)``, ``log p(x, z_s)`` and, when asked, every
site's value and log density per draw, on the **full data**:

* **Vectorized** over draws: the model and guide run once per chunk of draws inside an extra
  plate at dim ``-(max_plate_nesting + 1)``.
* **Subsampled plates**: a ``pyro.plate(name, N, subsample_size=B)`` is evaluated on every data
  point by overriding its subsample indices chunk by chunk (``B`` indices at a time, the memory of
  a training step); the ``N / B`` scale of each chunk is removed, so

      log p(x, z) = log p(z) + sum over chunks c of sum_{i in c} log p(x_i | z)

  and the global latents are drawn once per draw and shared by the chunks. A plate given explicit
  indices (``pyro.plate(name, N, subsample=idx)``) cannot be overridden and raises
  :class:`SubsampledPlateError`.
* **Models that are not vectorization-safe** (``X @ w`` with a batched ``w``): detected, either
  by an error in the vectorized run or by its log density disagreeing with a plain run of the
  first draw, and then evaluated draw by draw, with one :class:`NotVectorizableWarning`.
* **A guide built for another model** (latent sites differ) raises
  :class:`ModelGuideMismatchError` naming the sites.

Example:
    >>> for chunk in trace_draws(model, guide, (data,), {}, num_samples=1000):  # doctest: +SKIP
    ...     log_w = chunk.log_joint - chunk.log_q
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace

from pyroflows._pyro_internals import is_subsample_site as site_is_subsample
from pyroflows._random_state import random_state_kept
from pyroflows._validation import NonFiniteDataError, describe_nonfinite_arguments
from pyroflows._vectorization import log_densities_agree

__all__ = [
    "DrawChunk",
    "ModelGuideMismatchError",
    "NotVectorizableWarning",
    "SiteDraws",
    "SubsampledPlateError",
    "max_plate_nesting",
    "quiet_pyro_logging",
    "trace_draws",
    "vectorization_problem",
]

_DRAW_PLATE = "_pyroflows_draws"


class ModelGuideMismatchError(ValueError):
    """The guide's latent sites are not the model's: it was built for another model."""


class SubsampledPlateError(ValueError):
    """A subsampled plate whose indices the diagnostics cannot override to see every data point."""


class NotVectorizableWarning(UserWarning):
    """The model is not vectorization-safe: draws are evaluated one by one (slower)."""


@contextmanager
def quiet_pyro_logging(level: int = logging.WARNING):
    """Raises the ``pyro`` logger's level inside the block only (restored afterwards), so that
    INFO lines such as Pyro's "Guessed max_plate_nesting" are not printed."""
    logger = logging.getLogger("pyro")
    previous = logger.level
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


# ---- the prototype run: structure, nesting, consistency ---------------------------------------


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _is_auxiliary(site: dict) -> bool:
    return bool(site["infer"].get("is_auxiliary", False))


def _is_deterministic(site: dict) -> bool:
    return site["type"] == "sample" and bool(site["infer"].get("_deterministic", False))


@dataclass
class _Prototype:
    """One plain run of the guide and of the model replayed on it."""

    guide_trace: Trace
    model_trace: Trace
    nesting: int
    #: the subsampled plate: (name, full size, subsample size), or None
    subsampled: tuple[str, int, int] | None


def _plate_nesting(*traces: Trace) -> int:
    dims = [
        -frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def _subsampled_plates(*traces: Trace) -> dict[str, tuple[int, int]]:
    """Plates that see part of their data: name -> (full size, subsample size)."""
    found: dict[str, tuple[int, int]] = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or not site_is_subsample(site):
                continue
            fn, value = site["fn"], site["value"]
            size = int(fn.size)
            length = int(value.shape[0]) if isinstance(value, torch.Tensor) else len(value)
            if length >= size:
                continue
            if fn.subsample_size is None:
                raise SubsampledPlateError(
                    f"pyro.plate({name!r}, {size}, subsample=...) is given {length} explicit "
                    f"indices, so the model chooses its own minibatch and pyroflows cannot score "
                    f"the other {size - length} data points; the report, diagnose and the export "
                    f"need every one. Call the model so that the plate covers all {size} points "
                    f"(e.g. subsample=None, or all indices), or use "
                    f"pyro.plate({name!r}, {size}, subsample_size=B), whose indices pyroflows "
                    "overrides chunk by chunk."
                )
            found[name] = (size, int(fn.subsample_size))
    return found


def _check_guide_matches_model(model_trace: Trace, guide_trace: Trace) -> None:
    model_latents = {n for n, s in model_trace.nodes.items() if _is_latent(s)}
    guide_latents = {
        n for n, s in guide_trace.nodes.items() if _is_latent(s) and not _is_auxiliary(s)
    }
    missing = sorted(model_latents - guide_latents)
    extra = sorted(guide_latents - model_latents)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the model's latent site(s) {missing} are not in the guide")
        if extra:
            parts.append(f"the guide samples {extra}, which the model does not have")
        raise ModelGuideMismatchError(
            "the guide does not match the model: " + "; ".join(parts) + ". Was the guide built "
            "for another model? Pass the model the guide was fitted to, or build the guide from "
            "this model (e.g. AutoIAF(model)) and fit it. (Model latents: "
            f"{sorted(model_latents)}; guide latents: {sorted(guide_latents)}.)"
        )


def _check_order(model: Callable, guide: Callable) -> None:
    """pyroflows < 0.2 took ``(guide, model)`` in ``diagnose`` and ``to_inference_data``."""
    if isinstance(model, AutoGuide) and not isinstance(guide, AutoGuide):
        raise TypeError(
            f"the first argument is a guide ({type(model).__name__}) and the second is not: "
            "pyroflows takes (model, guide, *args) everywhere, as fit and Pyro's SVI do "
            "(diagnose and to_inference_data took (guide, model) before 0.2)"
        )


def _prototype(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> _Prototype:
    _check_order(model, guide)
    try:
        with torch.no_grad(), poutine.block(), quiet_pyro_logging():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
    except Exception as error:
        _raise_if_data_is_not_finite(args, kwargs, error)
        raise
    _check_guide_matches_model(model_trace, guide_trace)
    plates = _subsampled_plates(guide_trace, model_trace)
    if len(plates) > 1:
        raise SubsampledPlateError(
            f"the model subsamples {len(plates)} plates {sorted(plates)}; pyroflows' diagnostics "
            "evaluate the full data of one subsampled plate. Call the model with full plates "
            "(subsample_size=None) for the report, diagnose and the export."
        )
    subsampled = next(((n, *sizes) for n, sizes in plates.items()), None)
    nesting = _plate_nesting(guide_trace, model_trace)
    return _Prototype(guide_trace, model_trace, nesting, subsampled)


def max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The number of plate dimensions the model and guide use (what Pyro's ELBOs would guess).

    The single place pyroflows computes it: :func:`pyroflows.fit` passes it to the ELBO, and the
    diagnostics vectorize draws in the dimension to its left. Runs the guide and the model once
    (without recording params or changing the global random state).

    Example:
        >>> max_plate_nesting(model, guide, data)  # doctest: +SKIP
        1
    """
    with random_state_kept():
        return _prototype(model, guide, args, kwargs).nesting


# ---- overriding subsample indices ---------------------------------------------------------------


class _SubsampleOverride(Messenger):
    """Sets the indices of the subsampled plate ``name`` (outermost handler: after replay)."""

    def __init__(self, name: str, indices: torch.Tensor):
        super().__init__()
        self.name = name
        self.indices = indices

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["name"] == self.name and site_is_subsample(msg):
            device = getattr(msg["fn"], "device", None)
            msg["value"] = self.indices.to(device) if device is not None else self.indices
            msg["done"] = True


@dataclass(frozen=True)
class _DataChunk:
    indices: torch.Tensor | None
    #: positions at the start of this chunk already covered by an earlier chunk
    skip: int = 0


def _data_chunks(subsampled: tuple[str, int, int] | None) -> list[_DataChunk]:
    if subsampled is None:
        return [_DataChunk(None)]
    _, size, batch = subsampled
    chunks = []
    for start in range(0, size, batch):
        if start + batch <= size:
            chunks.append(_DataChunk(torch.arange(start, start + batch)))
        else:  # the last chunk must also hold `batch` indices: it overlaps the previous one
            chunks.append(_DataChunk(torch.arange(size - batch, size), start - (size - batch)))
    return chunks


# ---- per-site draws in one layout ------------------------------------------------------------


@dataclass
class SiteDraws:
    """One site over a chunk of draws, on the full data.

    ``value`` has shape ``(draws, *batch, *event)`` and ``log_prob`` ``(draws, *batch)``, where
    ``batch`` has exactly ``max_plate_nesting`` axes (size 1 where the site has no plate);
    ``log_prob`` carries the site's scale (``poutine.scale``) and mask but not the ``N / B`` scale
    of subsampling, and is ``None`` for deterministic sites.
    """

    name: str
    value: torch.Tensor
    log_prob: torch.Tensor | None
    #: the plate name of each batch axis (None where no plate owns it)
    plates: list[str | None]
    event_ndim: int
    is_observed: bool
    is_deterministic: bool
    is_auxiliary: bool
    #: the site's own scale (``poutine.scale``), without the subsampling factor
    scale: float | torch.Tensor = 1.0


@dataclass
class DrawChunk:
    """A chunk of draws: per-draw totals, and per-site draws when asked for."""

    log_q: torch.Tensor
    log_joint: torch.Tensor
    guide_sites: dict[str, SiteDraws] = field(default_factory=dict)
    model_sites: dict[str, SiteDraws] = field(default_factory=dict)
    predictive: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the model's sites on the first data chunk only (to check vectorization)
    first_data_chunk: dict[str, SiteDraws] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return self.log_q.shape[0]


def _site_batch_ndim(site: dict, value: torch.Tensor) -> int:
    if _is_deterministic(site):
        dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        return min(max(dims, default=0), value.dim())
    return len(site["fn"].batch_shape)


def _subsample_factor(site: dict) -> float:
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        full = getattr(frame, "full_size", None)
        if frame.vectorized and full is not None and frame.size and full != frame.size:
            factor *= full / frame.size
    return factor


class _NotVectorized(Exception):
    """A vectorized trace whose shapes do not have the draw axis where it must be."""


def _layout(
    trace: Trace, nesting: int, vectorized: bool, draws: int, only_plate: str | None = None
) -> dict[str, SiteDraws]:
    """Every non-subsample sample site of ``trace`` in the ``(draws, *batch, *event)`` layout
    (with ``only_plate``, only the sites inside that plate)."""
    width = nesting + 1
    sites = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if only_plate is not None and not any(
            f.name == only_plate for f in site["cond_indep_stack"]
        ):
            continue
        deterministic = _is_deterministic(site)
        value = site["value"]
        if not deterministic:
            value = value.expand(site["fn"].batch_shape + site["fn"].event_shape)
        batch_ndim = _site_batch_ndim(site, value)
        event_shape = value.shape[batch_ndim:]
        batch_shape = value.shape[:batch_ndim]
        if vectorized:
            if batch_ndim > width:
                raise _NotVectorized(name)
            batch_shape = (1,) * (width - batch_ndim) + tuple(batch_shape)
            if batch_shape[0] not in (1, draws):
                raise _NotVectorized(name)
            value = value.reshape(batch_shape + tuple(event_shape))
            value = value.expand((draws,) + value.shape[1:])
        else:
            if batch_ndim > nesting:
                raise ValueError(
                    f"site {name!r} has batch shape {tuple(batch_shape)} with more axes than "
                    f"the {nesting} plate(s) around it: declare them with pyro.plate or "
                    ".to_event()"
                )
            batch_shape = (1,) + (1,) * (nesting - batch_ndim) + tuple(batch_shape)
            value = value.reshape(batch_shape + tuple(event_shape))
        log_prob = None
        scale = site["scale"]
        factor = _subsample_factor(site)
        if factor != 1.0:
            scale = scale / factor
        if not deterministic:
            # the very value the distribution sampled: a flow's log q of its own sample is kept
            unscaled = site["fn"].log_prob(site["value"])
            log_prob = scale_and_mask(unscaled, scale, site["mask"])
            log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
            log_prob = log_prob.expand(value.shape[: value.dim() - len(event_shape)])
        by_dim = {
            f.dim: f.name
            for f in site["cond_indep_stack"]
            if f.vectorized and f.dim is not None and f.name != _DRAW_PLATE
        }
        plates = [by_dim.get(axis - nesting) for axis in range(nesting)]
        sites[name] = SiteDraws(
            name=name,
            value=value,
            log_prob=log_prob,
            plates=plates,
            event_ndim=len(event_shape),
            is_observed=bool(site["is_observed"]) and not deterministic,
            is_deterministic=deterministic,
            is_auxiliary=_is_auxiliary(site),
            scale=scale,
        )
    return sites


def _in_plate(site: SiteDraws, plate: str | None) -> bool:
    return plate is not None and plate in site.plates


# ---- running one chunk -----------------------------------------------------------------------


def _vectorize(fn: Callable, size: int, width: int) -> Callable:
    def vectorized(*args, **kwargs):
        with pyro.plate(_DRAW_PLATE, size, dim=-width):
            return fn(*args, **kwargs)

    return vectorized


def _run_pair(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    plate: str | None,
    chunk: _DataChunk,
    global_trace: Trace | None,
    predictive: bool,
):
    """Guide trace, model trace replayed on it and, optionally, a posterior predictive trace,
    with the subsample indices of ``plate`` set to ``chunk.indices``; global guide sites come
    from ``global_trace`` when given."""

    def overridden(fn):
        if plate is None:
            return fn
        return _SubsampleOverride(plate, chunk.indices)(fn)

    if global_trace is not None:
        guide = poutine.replay(guide, trace=global_trace)
    guide_trace = poutine.trace(overridden(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(overridden(poutine.replay(model, trace=guide_trace))).get_trace(
        *args, **kwargs
    )
    predictive_trace = None
    if predictive:
        predictive_trace = poutine.trace(
            overridden(poutine.uncondition(poutine.replay(model, trace=guide_trace)))
        ).get_trace(*args, **kwargs)
    return guide_trace, model_trace, predictive_trace


def _global_part(guide_trace: Trace, plate: str) -> Trace:
    """The guide sites outside ``plate``, to replay in the later data chunks."""
    partial = Trace()
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if any(f.name == plate for f in site["cond_indep_stack"]):
            continue
        if site_is_subsample(site) and name == plate:
            continue
        partial.add_node(name, **site)
    return partial


def _plate_axis(site: SiteDraws, plate: str) -> int:
    """Axis of ``plate`` in the ``(draws, *batch, ...)`` layout."""
    return 1 + site.plates.index(plate)


def _drop_overlap(tensor: torch.Tensor, axis: int, skip: int) -> torch.Tensor:
    return tensor.narrow(axis, skip, tensor.shape[axis] - skip) if skip else tensor


def _sum_per_draw(log_prob: torch.Tensor) -> torch.Tensor:
    return log_prob.reshape(log_prob.shape[0], -1).sum(-1)


def _site_total(site: SiteDraws, plate: str | None, chunk: _DataChunk) -> torch.Tensor:
    log_prob = site.log_prob
    if _in_plate(site, plate) and chunk.skip:
        log_prob = _drop_overlap(log_prob, _plate_axis(site, plate), chunk.skip)
    return _sum_per_draw(log_prob)


def _evaluate_chunk(
    model,
    guide,
    args,
    kwargs,
    proto: _Prototype,
    draws: int,
    vectorized: bool,
    keep_sites: bool,
    predictive: bool,
    first_data_chunk_only: bool = False,
) -> DrawChunk:
    """Every data chunk (or only the first) for one chunk of ``draws`` draws (vectorized) or for
    one draw (not)."""
    width = proto.nesting + 1
    plate = proto.subsampled[0] if proto.subsampled else None
    if vectorized:
        model_fn = _vectorize(model, draws, width)
        guide_fn = _vectorize(guide, draws, width)
    else:
        model_fn, guide_fn = model, guide
    log_q = torch.zeros(draws)
    log_joint = torch.zeros(draws)
    result = DrawChunk(log_q, log_joint)
    pieces: dict[tuple[str, str], dict[str, list[torch.Tensor]]] = {}
    global_trace = None
    chunks = _data_chunks(proto.subsampled)
    for index, chunk in enumerate(chunks[:1] if first_data_chunk_only else chunks):
        guide_trace, model_trace, predictive_trace = _run_pair(
            model_fn, guide_fn, args, kwargs, plate, chunk, global_trace, predictive
        )
        # global sites count once, from the first data chunk
        only = plate if index > 0 else None
        groups = {
            "guide": _layout(guide_trace, proto.nesting, vectorized, draws, only),
            "model": _layout(model_trace, proto.nesting, vectorized, draws, only),
        }
        if predictive_trace is not None:
            observed = {n for n, site in groups["model"].items() if site.is_observed}
            groups["predictive"] = {
                n: site
                for n, site in _layout(
                    predictive_trace, proto.nesting, vectorized, draws, only
                ).items()
                if n in observed
            }
        if index == 0:
            if plate is not None:
                global_trace = _global_part(guide_trace, plate)
            result.first_data_chunk = groups["model"]
        for group, sites in groups.items():
            for name, site in sites.items():
                if group != "predictive" and site.log_prob is not None:
                    total = _site_total(site, plate, chunk)
                    if group == "guide" and not site.is_observed:
                        log_q = log_q.to(total) + total
                    elif group == "model":
                        log_joint = log_joint.to(total) + total
                if not keep_sites:
                    continue
                if index == 0:
                    if group == "predictive":
                        result.predictive[name] = site.value
                    else:
                        target = result.guide_sites if group == "guide" else result.model_sites
                        target[name] = site
                if _in_plate(site, plate):
                    axis = _plate_axis(site, plate)
                    store = pieces.setdefault((group, name), {"value": [], "log_prob": []})
                    store["value"].append(_drop_overlap(site.value, axis, chunk.skip))
                    if site.log_prob is not None:
                        store["log_prob"].append(_drop_overlap(site.log_prob, axis, chunk.skip))
    result.log_q, result.log_joint = log_q, log_joint
    for (group, name), store in pieces.items():
        if group == "predictive":
            axis = _plate_axis(result.model_sites[name], plate)
            result.predictive[name] = torch.cat(store["value"], axis)
            continue
        site = (result.guide_sites if group == "guide" else result.model_sites)[name]
        site = SiteDraws(**site.__dict__)  # the first data chunk's record stays as it was
        axis = _plate_axis(site, plate)
        site.value = torch.cat(store["value"], axis)
        if store["log_prob"]:
            site.log_prob = torch.cat(store["log_prob"], axis)
        (result.guide_sites if group == "guide" else result.model_sites)[name] = site
    return result


def _concat_chunks(chunks: list[DrawChunk]) -> DrawChunk:
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    result = DrawChunk(
        torch.cat([c.log_q for c in chunks]), torch.cat([c.log_joint for c in chunks])
    )
    for attr in ("guide_sites", "model_sites"):
        for name, site in getattr(first, attr).items():
            merged = SiteDraws(**{**site.__dict__})
            merged.value = torch.cat([getattr(c, attr)[name].value for c in chunks])
            if site.log_prob is not None:
                merged.log_prob = torch.cat([getattr(c, attr)[name].log_prob for c in chunks])
            getattr(result, attr)[name] = merged
    for name in first.predictive:
        result.predictive[name] = torch.cat([c.predictive[name] for c in chunks])
    return result


def _draw_latents(sites: dict[str, SiteDraws], proto: _Prototype, draw: int) -> dict:
    """The latent values of one draw, in the shapes of a plain (unvectorized) run."""
    values = {}
    for name, site in sites.items():
        if site.is_observed or site.is_deterministic:
            continue
        shape = proto.model_trace.nodes[name]["value"].shape
        values[name] = site.value[draw].reshape(shape)
    return values


def _vectorized_agrees_with_plain_run(model, args, kwargs, proto: _Prototype, chunk) -> bool:
    """Scores the first and the last draw of a vectorized chunk with plain runs of the model on
    the first data chunk: their log densities and deterministic values must agree (a model that
    mixes draws, e.g. by flattening a batched latent, fails this even where shapes fit)."""
    vectorized = chunk.first_data_chunk
    plate = proto.subsampled[0] if proto.subsampled else None
    for draw in sorted({0, chunk.size - 1}):
        conditioned = poutine.condition(model, data=_draw_latents(vectorized, proto, draw))
        if plate is not None:
            indices = _data_chunks(proto.subsampled)[0].indices
            conditioned = _SubsampleOverride(plate, indices)(conditioned)
        trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
        for name, site in _layout(trace, proto.nesting, False, 1).items():
            other = vectorized.get(name)
            if other is None:
                return False
            if site.log_prob is not None:
                expected = site.log_prob.double().sum()
                actual = other.log_prob[draw].double().sum()
                if not log_densities_agree(actual, expected):
                    return False
            else:
                value = other.value[draw]
                if value.numel() != site.value.numel() or not torch.allclose(
                    value.reshape(site.value.shape).double(),
                    site.value.double(),
                    rtol=1e-4,
                    atol=1e-5,
                ):
                    return False
    return True


_VECTORIZE_ADVICE = (
    "To vectorize, write the model so that latent values may carry extra batch axes on the left "
    "(e.g. instead of X @ w: (X @ w.unsqueeze(-1)).squeeze(-1))."
)


@torch.no_grad()
def vectorization_problem(model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """Why ``model`` is not vectorization-safe (a short text), or None if it is.

    Runs two draws inside a plate on the left of the model's plates (the first data chunk of a
    subsampled plate only) and compares them with plain runs; the global random state is left as
    it was. :func:`pyroflows.fit` uses it to choose vectorized or sequential ELBO particles.
    """
    with random_state_kept(), quiet_pyro_logging():
        proto = _prototype(model, guide, args, kwargs)
        chunk, failure = None, None
        try:
            chunk = _evaluate_chunk(
                model, guide, args, kwargs, proto, 2, True, False, False, first_data_chunk_only=True
            )
        except (RuntimeError, ValueError, IndexError, _NotVectorized) as error:
            failure = error
        if chunk is not None and _vectorized_agrees_with_plain_run(
            model, args, kwargs, proto, chunk
        ):
            return None
        _check_plain_run_works(model, guide, args, kwargs, proto, failure, True)
    if failure is not None:
        return f"{type(failure).__name__}: {_first_line(failure)}"
    return "a plain run and a vectorized run of the same draw disagree"


@torch.no_grad()
def trace_draws(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_samples: int,
    chunk_size: int = 500,
    keep_sites: bool = False,
    predictive: bool = False,
) -> Iterator[DrawChunk]:
    """Draws ``num_samples`` from ``guide`` and scores ``model`` on the full data, in chunks of
    ``chunk_size`` draws (vectorized) or, for a model that is not vectorization-safe, one draw
    at a time (with one :class:`NotVectorizableWarning`).

    Each yielded :class:`DrawChunk` holds ``log_q`` and ``log_joint`` per draw; with
    ``keep_sites`` also every site's draws (:class:`SiteDraws`) and, with ``predictive``, a
    posterior predictive draw of every observed site.

    Raises:
        ModelGuideMismatchError: the guide's latent sites are not the model's.
        SubsampledPlateError: a plate's data cannot all be scored (explicit indices, or more than
            one subsampled plate).
    """
    proto = _prototype(model, guide, args, kwargs)
    vectorized = True
    remaining = num_samples
    first = True
    with quiet_pyro_logging():
        while remaining > 0:
            size = min(chunk_size, remaining)
            if vectorized:
                chunk = None
                try:
                    chunk = _evaluate_chunk(
                        model,
                        guide,
                        args,
                        kwargs,
                        proto,
                        size,
                        True,
                        keep_sites,
                        predictive,
                    )
                    failure = None
                except (RuntimeError, ValueError, IndexError, _NotVectorized) as error:
                    failure = error
                if first:
                    agrees = chunk is not None and _vectorized_agrees_with_plain_run(
                        model, args, kwargs, proto, chunk
                    )
                    if not agrees:
                        _check_plain_run_works(model, guide, args, kwargs, proto, failure)
                        vectorized = False
                        warnings.warn(
                            "the model is not vectorization-safe (a plain run and a run inside "
                            f"a plate of {size} draws disagree"
                            + (
                                f": {type(failure).__name__}: {_first_line(failure)}"
                                if failure is not None
                                else ""
                            )
                            + "), so pyroflows evaluates the draws one by one, which is slower. "
                            + _VECTORIZE_ADVICE,
                            NotVectorizableWarning,
                            stacklevel=3,
                        )
                    first = False
                elif failure is not None:
                    raise failure
                if vectorized:
                    chunk.first_data_chunk = {}
                    if not keep_sites:
                        chunk.guide_sites, chunk.model_sites = {}, {}
                    yield chunk
                    remaining -= size
                    continue
            draws = [
                _evaluate_chunk(model, guide, args, kwargs, proto, 1, False, keep_sites, predictive)
                for _ in range(size)
            ]
            yield _concat_chunks(draws)
            remaining -= size


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else ""


def _check_plain_run_works(
    model, guide, args, kwargs, proto, failure, first_data_chunk_only: bool = False
) -> None:
    """If even one plain draw fails, the vectorized error is the real one: raise it."""
    try:
        _evaluate_chunk(
            model, guide, args, kwargs, proto, 1, False, False, False, first_data_chunk_only
        )
    except Exception as error:
        _raise_if_data_is_not_finite(args, kwargs, failure or error)
        if failure is not None:
            raise failure from None
        raise


def _raise_if_data_is_not_finite(args: tuple, kwargs: dict, error: BaseException) -> None:
    """A model that fails with NaN or infinite data: name the data, not the symptom."""
    problems = describe_nonfinite_arguments(args, kwargs)
    if problems:
        raise NonFiniteDataError(
            "the model fails on its data, which hold non-finite values: "
            + "; ".join(problems)
            + f" ({type(error).__name__}: {_first_line(error)}). Remove or impute them (or mask "
            "them with pyro.sample(..., obs_mask=...))."
        ) from error
