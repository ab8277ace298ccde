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


def available_guides() -> list[str]:
    """The registered guide names, sorted.

    Example:
        >>> "iaf" in available_guides()
        True
    """
    return sorted(_GUIDES)


def get_guide_class(name: str) -> type:
    """The guide class registered under ``name``."""
    try:
        return _GUIDES[name]
    except KeyError:
        raise KeyError(
            f"no guide registered as {name!r}; available: {available_guides()}"
        ) from None


def make_guide(name: str, model, **kwargs):
    """Builds the guide registered under ``name`` for ``model``.

    Example:
        >>> guide = make_guide("iaf", model, num_transforms=3)  # doctest: +SKIP
    """
    return get_guide_class(name)(model, **kwargs)
