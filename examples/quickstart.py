"""Swap AutoNormal for AutoIAF in an existing Pyro script, read the free-energy report, diagnose
the fit and export it to ArviZ.

The model is the classic eight-schools hierarchical model (centered), whose posterior over the
group scale ``tau`` and the school effects has a funnel shape that a diagonal Gaussian misses.

    python examples/quickstart.py --steps 2000
"""

import argparse
import logging
import warnings

import arviz
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoNormal

import pyroflows
from pyroflows.diagnostics import format_reports

EFFECTS = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMAS = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(sigma)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    options = parser.parse_args()
    logging.getLogger("pyro").setLevel(logging.WARNING)

    reports = {}
    for guide_class in (AutoNormal, pyroflows.AutoIAF):  # the one-line swap
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = guide_class(eight_schools)
        result = pyroflows.fit(eight_schools, guide, SIGMAS, EFFECTS, steps=options.steps)
        reports[guide_class.__name__] = result.report
        tau = guide.quantiles([0.05, 0.5, 0.95], SIGMAS, EFFECTS)["tau"]
        print(f"{guide_class.__name__}: tau 5/50/95% = {[round(float(t), 2) for t in tau]}")

    print(format_reports(reports))
    # the fitted guide works with Pyro's tools as any autoguide does
    draws = Predictive(eight_schools, guide=guide, num_samples=1000)(SIGMAS)
    print("posterior predictive sd of obs:", [round(float(s), 1) for s in draws["obs"].std(0)])

    # did it work? PSIS k-hat with Yao et al.'s thresholds, PSIS-corrected moments
    print(pyroflows.diagnose(eight_schools, guide, SIGMAS, EFFECTS))
    # and the draws in ArviZ, with the plate's dim named and labelled
    idata = pyroflows.to_inference_data(
        eight_schools, guide, SIGMAS, EFFECTS, coords={"schools": list("ABCDEFGH")}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(arviz.summary(idata, var_names=["mu", "tau"]))
        print(arviz.loo(idata))


if __name__ == "__main__":
    main()
