"""Every preset guide is ``AutoFlow`` with its family's guide defaults: ``AutoNSF(model)`` and
``AutoFlow(model, flow="nsf")`` build the same distribution from the same seed."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.guides.presets import _Preset
from pyroflows.transforms import make_flow
from pyroflows.transforms.registry import NSF_GUIDE_BOUND, NSF_GUIDE_NUM_BINS

PRESETS = sorted(_Preset.__subclasses__(), key=lambda cls: cls.__name__)


def skewed_model():
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    pyro.sample("x", dist.Normal(torch.zeros(3), scale).to_event(1))


def built(guide):
    guide()  # the guide builds its flow at the first call
    return guide


@pytest.mark.parametrize("preset", PRESETS, ids=lambda cls: cls.__name__)
def test_a_preset_is_autoflow_of_its_family(preset):
    pyro.set_rng_seed(0)
    named = built(preset(skewed_model))
    pyro.set_rng_seed(0)
    generic = built(pyroflows.AutoFlow(skewed_model, flow=preset.family))
    named_state, generic_state = named.state_dict(), generic.state_dict()
    assert named_state.keys() == generic_state.keys()
    for key, value in named_state.items():
        assert torch.equal(value, generic_state[key]), key
    shared = named.settings().keys() & generic.settings().keys()
    assert {key: named.settings()[key] for key in shared} == {
        key: generic.settings()[key] for key in shared
    }
    pyro.set_rng_seed(1)
    draws = named.get_posterior().sample((5,))
    pyro.set_rng_seed(1)
    assert torch.equal(draws, generic.get_posterior().sample((5,)))


def test_spline_guides_reach_further_than_the_spline_flows():
    """The guides' splines cover 8 standardized sds with 16 bins (a hierarchy's log scale has
    tails the affine stage alone cannot give, see ``NSF_GUIDE_BOUND``); ``make_flow("nsf")``,
    used for density estimation, keeps 8 bins on [-4, 4]."""
    guide = built(pyroflows.AutoNSF(skewed_model))
    assert (guide.settings()["num_bins"], guide.settings()["bound"]) == (16, 8.0)
    assert (NSF_GUIDE_NUM_BINS, NSF_GUIDE_BOUND) == (16, 8.0)
    assert pyroflows.AutoFlow(skewed_model, flow="nsf").settings()["bound"] == 8.0
    splines = [m for m in make_flow("nsf", 3).modules() if hasattr(m, "num_bins")]
    assert splines and all((m.num_bins, m.bound) == (8, 4.0) for m in splines)
    guide_splines = [m for m in guide.modules() if hasattr(m, "num_bins")]
    assert guide_splines and all((m.num_bins, m.bound) == (16, 8.0) for m in guide_splines)
