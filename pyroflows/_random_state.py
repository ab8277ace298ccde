"""Running code that may draw without changing what the draws after it are.

A model run inside a check may draw (Pyro's ``init_loc_fn`` wrapper draws before conditioned
values reach it; an unconditioned site draws from its distribution). Checks and starts that run
the model wrap those runs in :func:`random_state_kept`, so a seeded fit draws the same whatever
checks ran before it.

Example:
    >>> with random_state_kept():
    ...     noise = torch.randn(3)  # the global state is restored on exit
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyro.util import get_rng_state, set_rng_state

__all__ = ["random_state_kept"]


@contextmanager
def random_state_kept() -> Iterator[None]:
    """Restores Pyro's global random state (torch, numpy and Python's ``random``) on exit, also
    when the block raises."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
