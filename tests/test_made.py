"""MADE: the autoregressive property, checked on the Jacobian of the network."""

import pytest
import torch
from torch.autograd.functional import jacobian

from pyroflows.nn import MADE


def _randomize(made: MADE) -> None:
    """Give every weight a nonzero value, so masks alone decide the dependency structure."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in made.parameters():
            p.normal_()


@pytest.mark.parametrize("hidden_dims", [[], [7], [12, 12], [3]])
@pytest.mark.parametrize("skip_connection", [True, False])
@pytest.mark.parametrize("ordering", [None, [3, 0, 4, 1, 2]])
def test_output_depends_only_on_earlier_inputs(hidden_dims, skip_connection, ordering):
    dim, num_params = 5, 3
    made = MADE(
        dim, hidden_dims, num_params=num_params, ordering=ordering, skip_connection=skip_connection
    )
    _randomize(made)
    order = list(range(dim)) if ordering is None else ordering
    rank = {var: k for k, var in enumerate(order)}
    x = torch.randn(dim, dtype=torch.float64)
    jac = jacobian(lambda v: made.double()(v), x)  # (num_params, dim, dim)
    assert jac.shape == (num_params, dim, dim)
    for i in range(dim):
        for j in range(dim):
            if rank[j] >= rank[i]:
                assert torch.all(jac[:, i, j] == 0), (i, j)
    # with a wide enough network the allowed dependencies are really there
    if hidden_dims and min(hidden_dims) >= dim - 1 or skip_connection and hidden_dims:
        allowed = [(i, j) for i in range(dim) for j in range(dim) if rank[j] < rank[i]]
        assert all(jac[:, i, j].abs().sum() > 0 for i, j in allowed)


def test_output_layer_starts_at_zero():
    made = MADE(4, [8], num_params=2)
    out = made(torch.randn(6, 4))
    assert out.shape == (6, 2, 4)
    assert torch.all(out == 0)


def test_context_reaches_every_output_and_checks_its_size():
    made = MADE(3, [8], num_params=2, context_dim=5)
    _randomize(made)
    x = torch.randn(3, dtype=torch.float64)
    made = made.double()
    jac_c = jacobian(lambda c: made(x, c), torch.randn(5, dtype=torch.float64))
    assert torch.all(jac_c.abs().sum(-1) > 0)
    with pytest.raises(ValueError, match="context has size 4"):
        made(x, torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a context of size 5"):
        made(x)


def test_bad_ordering_is_rejected():
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, [8], ordering=[0, 0, 1])


@pytest.mark.parametrize(
    "options",
    [
        {"hidden_dims": [12, 10]},
        {"hidden_dims": []},
        {"hidden_dims": [12], "context_dim": 3},
        {"hidden_dims": [], "context_dim": 3},
        {"hidden_dims": [12], "skip_connection": True, "ordering": [2, 0, 3, 1]},
        {"hidden_dims": [40], "output_fan_in_cap": 16, "output_step_scale": 0.3},
    ],
)
def test_forward_coordinate_is_that_coordinate_of_forward(options):
    """The one-coordinate pass that the autoregressive inverse uses, on non-zero weights."""
    torch.manual_seed(0)
    hidden_dims = options.pop("hidden_dims")
    made = MADE(4, hidden_dims, num_params=3, **options)
    with torch.no_grad():
        for param in made.parameters():
            param.normal_()
    x = torch.randn(7, 4)
    context = torch.randn(7, 3) if made.context_dim else None
    full = made(x, context)
    for coordinate in range(4):
        alone = made.forward_coordinate(x, coordinate, context)
        assert alone.shape == (7, 3, 1)
        assert torch.allclose(alone, full[..., coordinate : coordinate + 1], atol=1e-5)
    with pytest.raises(ValueError, match=r"coordinate must be in \[0, 4\)"):
        made.forward_coordinate(x, 4, context)
