"""Guides register under a short name, so scripts and benchmarks can pick them by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["available_guides", "get_guide_class", "make_guide", "register_guide"]

_GUIDES: dict[str, type] = {}
GuideClass = TypeVar("GuideClass", bound=type)


def register_guide(name: str) -> Callable[[GuideClass], GuideClass]:
    """Class decorator registering a guide under ``name``.

    Example:
        >>> @register_guide("my-flow")  # doctest: +SKIP
        ... class AutoMyFlow(AutoFlowGuide): ...
    """

    def decorate(cls: GuideClass) -> GuideClass:
        if name in _GUIDES and _GUIDES[name] is not cls:
            raise ValueError(f"a guide is already registered as {name!r}: {_GUIDES[name]}")
        _GUIDES[name] = cls
        cls.registry_name = name
        return cls

    return decorate


def _one_pass_flows() -> list[str]:
    from pyroflows.transforms.registry import available_flows

    return available_flows(one_pass_sampling=True)


def available_guides() -> list[str]:
    """The guide names, sorted: every registered guide, and every flow family that samples in
    one pass (``pyroflows.transforms.available_flows``), which :func:`make_guide` builds as an
    :class:`~pyroflows.AutoFlow` when no guide class is registered under its name.

    Example:
        >>> {"iaf", "naf", "nsf", "planar", "realnvp"} <= set(available_guides())
        True
    """
    return sorted(set(_GUIDES) | set(_one_pass_flows()))


def get_guide_class(name: str) -> type:
    """The guide class registered under ``name`` (``AutoFlow`` for a one-pass flow family
    without a class of its own)."""
    if name in _GUIDES:
        return _GUIDES[name]
    if name in _one_pass_flows():
        from pyroflows.guides.flow import AutoFlow

        return AutoFlow
    raise KeyError(f"no guide registered as {name!r}; available: {available_guides()}")


def make_guide(name: str, model, **kwargs):
    """Builds the guide registered under ``name`` for ``model``.

    Example:
        >>> guide = make_guide("iaf", model, num_transforms=3)  # doctest: +SKIP
    """
    cls = get_guide_class(name)
    if name not in _GUIDES:
        return cls(model, flow=name, **kwargs)
    return cls(model, **kwargs)
