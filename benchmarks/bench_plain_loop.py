"""Benchmark: the README's "swap one line" promise in the user's own loop.

Each guide is trained in a plain Pyro SVI loop, exactly as a user who swaps one line would
(``Adam({"lr": 1e-2})``, ``Trace_ELBO()``, 2000 steps, no ``fit``), on the accuracy benchmark's
targets, and ends with its free energy F = -ELBO from fresh draws (lower is better). Issue 10's
goal: every pyroflows guide ends no worse than Pyro's ``AutoNormal``.

A run whose loss turns NaN (or raises) is recorded with the step; its F is ``inf``.

Besides the accuracy benchmark's targets, ``--targets`` takes stress models that have no known
posterior (only F is compared): ``horseshoe_42``, ``horseshoe_102`` and ``horseshoe_202``,
horseshoe regressions with ``D = 2P + 2`` latent dimensions (issue 12, item 7: AutoNAF turned
NaN in this loop on them), ``noncentered_8``, a non-centered hierarchy on synthetic data (a
development analog of the held-out non-centered eight schools), and ``--guides`` takes
``pyro_iaf``, Pyro's ``AutoIAFNormal`` at its defaults, the other guide the README's swap
replaces.

The pyroflows guides run at their defaults: ``sticking_the_landing="auto"``, which in this
loop gives AutoIAF (and the other unimodal guides) sticking-the-landing gradients and AutoNAF
the plain ones. ``--guides iaf-stl naf-stl`` forces them on, ``iaf-plain naf-plain`` off.

Usage::

    nice python benchmarks/bench_plain_loop.py                       # held out, 2 seeds
    nice python benchmarks/bench_plain_loop.py --targets funnel_10 --guides normal iaf --seeds 1
    nice python benchmarks/bench_plain_loop.py --targets horseshoe_42 horseshoe_102 \
        --guides normal pyro_iaf iaf naf --seeds 3 \
        --output benchmarks/results/plain_loop_horseshoe_cpu.json

``--output-step-scale s`` replaces the guides' ``output_step_scale`` default (AutoIAF, AutoNAF
and AutoNSF 0.1, AutoRealNVP and AutoNICE 0.3) by ``s`` for every family with a conditioner.

Output: a table on stdout, ``benchmarks/results/plain_loop_cpu.json`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal
from pyro.optim import Adam

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy.targets import build_target, eight_schools_noncentered, target_names  # noqa: E402

import pyroflows  # noqa: E402
from pyroflows.models import horseshoe_regression  # noqa: E402
from pyroflows.transforms import available_flows, flow_family  # noqa: E402

RESULTS = HERE / "results"
GUIDES = ("normal", "pyro_iaf", "iaf", "naf", "nsf", "realnvp", "nice", "planar")
#: ``<family>-stl`` / ``<family>-plain``: the pyroflows guide with ``sticking_the_landing``
#: True / False in the same loop (the plain family name: the guide's default, ``"auto"``)
STL_GUIDES = tuple(f"{name}-{variant}" for name in GUIDES[2:] for variant in ("stl", "plain"))
REPORT_DRAWS = 2000
#: the stress models: name -> (data rows, coefficients)
HORSESHOES = {"horseshoe_42": (100, 20), "horseshoe_102": (100, 50), "horseshoe_202": (50, 100)}


def horseshoe_target(name: str) -> SimpleNamespace:
    """The stress model ``name``: :func:`pyroflows.models.horseshoe_regression` with 4 of its
    ``P`` coefficients non-zero (data seed 1)."""
    num_rows, num_coefs = HORSESHOES[name]
    model, args = horseshoe_regression(
        num_rows, num_coefs, coefficients=(3.0, -2.0, 1.5, 1.0), seed=1
    )
    return SimpleNamespace(name=name, model=model, args=args)


#: the non-centered hierarchy of eight groups on synthetic data (a development analog of the
#: held-out non-centered eight schools, whose data it does not use)
NONCENTERED = "noncentered_8"


def noncentered_target(seed: int = 1) -> SimpleNamespace:
    """Eight groups, ``eta_j ~ N(0, 1)``, ``y_j ~ N(mu + tau eta_j, sigma_j)`` (the accuracy
    benchmark's non-centered model) on synthetic data from ``seed``: ``sigma_j ~ U(8, 18)``,
    group means ``5 + 6 z_j``, ``y_j`` one draw around them. AutoNSF's plain loop loses to
    AutoNormal here as on the held-out eight schools, with rare draws whose log weights are
    in the thousands below the rest (there: draws past the spline's bound in ``log tau``,
    where its identity tails leave the guide at its affine stage's full width)."""
    generator = torch.Generator().manual_seed(seed)
    sigma = 8.0 + 10.0 * torch.rand(8, generator=generator)
    theta = 5.0 + 6.0 * torch.randn(8, generator=generator)
    y = theta + sigma * torch.randn(8, generator=generator)
    return SimpleNamespace(name=NONCENTERED, model=eight_schools_noncentered, args=(y, sigma))


def load_target(name: str):
    """A stress model by name, else the accuracy benchmark's target."""
    if name in HORSESHOES:
        return horseshoe_target(name)
    if name == NONCENTERED:
        return noncentered_target()
    return build_target(name)


def make(guide_name: str, model):
    """Pyro's AutoNormal for ``"normal"``, its AutoIAFNormal (defaults) for ``"pyro_iaf"``,
    else the pyroflows guide of that family at its defaults (``"iaf-stl"``: with
    sticking-the-landing gradients forced on, ``"iaf-plain"``: off)."""
    if guide_name == "normal":
        return AutoNormal(model)
    if guide_name == "pyro_iaf":
        return AutoIAFNormal(model)
    family, _, variant = guide_name.partition("-")
    guide = pyroflows.make_guide(family, model)
    if variant:
        guide.sticking_the_landing = variant == "stl"
    return guide


def set_output_step_scale(scale: float) -> None:
    """Makes ``scale`` the ``output_step_scale`` guide default of every registered family whose
    guides cap their conditioner's outputs (those with a MADE or an MLP), for this process."""
    for name in available_flows():
        family = flow_family(name)
        if "output_fan_in_cap" in family.guide_defaults:
            family.guide_defaults["output_step_scale"] = scale


def run_one(target, guide_name: str, seed: int, steps: int, lr: float) -> dict:
    """Trains one guide in the plain loop; returns its final F (with its standard error)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make(guide_name, target.model)
    svi = SVI(target.model, guide, Adam({"lr": lr}), Trace_ELBO())
    start = time.process_time()
    failed_at, error = None, None
    for step in range(steps):
        try:
            loss = svi.step(*target.args)
        except (ValueError, RuntimeError) as exception:  # NaN in a distribution's parameters
            failed_at, error = step, f"{type(exception).__name__}: {str(exception)[:120]}"
            break
        if not math.isfinite(loss):
            failed_at, error = step, "non-finite loss"
            break
    seconds = time.process_time() - start
    record = {
        "target": target.name,
        "guide": guide_name,
        "seed": seed,
        "seconds": seconds,
        "failed_at": failed_at,
        "error": error,
        "free_energy": math.inf,
        "free_energy_se": None,
    }
    if failed_at is None:
        with torch.no_grad():
            report = pyroflows.free_energy_report(
                target.model, guide, *target.args, num_samples=REPORT_DRAWS
            )
        record["free_energy"] = float(report.free_energy)
        record["free_energy_se"] = float(report.free_energy_se)
    return record


def summarize(records: list[dict], guides: list[str]) -> list[dict]:
    """Per target and guide: the median F over seeds and the median of F − F(AutoNormal) of
    the same seed, with the largest seed-wise difference."""
    rows = []
    targets = list(dict.fromkeys(r["target"] for r in records))
    for name in targets:
        normal = {
            r["seed"]: r["free_energy"]
            for r in records
            if r["target"] == name and r["guide"] == "normal"
        }
        for guide in guides:
            runs = [r for r in records if r["target"] == name and r["guide"] == guide]
            if not runs:
                continue
            diffs = [r["free_energy"] - normal[r["seed"]] for r in runs if r["seed"] in normal]
            ses = [r["free_energy_se"] for r in runs if r["free_energy_se"] is not None]
            rows.append(
                {
                    "target": name,
                    "guide": guide,
                    "free_energy_median": statistics.median(r["free_energy"] for r in runs),
                    "free_energy_se_median": statistics.median(ses) if ses else None,
                    "minus_normal_median": statistics.median(diffs) if diffs else None,
                    "minus_normal_max": max(diffs) if diffs else None,
                    "failures": sum(r["failed_at"] is not None for r in runs),
                    "seeds": len(runs),
                    "seconds_median": statistics.median(r["seconds"] for r in runs),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "plain Pyro SVI loop: Adam(lr), Trace_ELBO(), fixed steps; F = -ELBO from "
        f"{REPORT_DRAWS} fresh draws (lower is better)",
        "F - F(AutoNormal): same seed, median [max] over seeds; failures: runs that hit NaN",
        "",
        f"{'target':28} {'guide':11} {'F median':>11} {'F se':>7} {'F - F(Normal)':>22} "
        f"{'failures':>8} {'CPU s':>7}",
        "-" * 100,
    ]
    for row in rows:
        diff = (
            "-"
            if row["minus_normal_median"] is None
            else f"{row['minus_normal_median']:.3g} [{row['minus_normal_max']:.3g}]"
        )
        se = "-" if row["free_energy_se_median"] is None else f"{row['free_energy_se_median']:.2g}"
        lines.append(
            f"{row['target']:28} {row['guide']:11} {row['free_energy_median']:11.4g} {se:>7} "
            f"{diff:>22} {row['failures']:>5}/{row['seeds']} {row['seconds_median']:7.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets",
        nargs="+",
        default=None,
        choices=[*target_names(), *HORSESHOES, NONCENTERED],
        help="default: the held-out targets of the accuracy benchmark",
    )
    parser.add_argument("--guides", nargs="+", default=list(GUIDES), choices=[*GUIDES, *STL_GUIDES])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--output", type=Path, default=RESULTS / "plain_loop_cpu.json")
    parser.add_argument(
        "--output-step-scale",
        type=float,
        default=None,
        help="the output_step_scale of every pyroflows guide with a conditioner (default: each "
        "family's guide default; 1 is the plain step)",
    )
    options = parser.parse_args()
    if options.output_step_scale is not None:
        set_output_step_scale(options.output_step_scale)
    if "normal" not in options.guides:
        options.guides = ["normal", *options.guides]
    torch.set_num_threads(1)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    names = options.targets or target_names(development=False)
    records = []
    for name in names:
        target = load_target(name)
        for seed in range(options.seeds):
            for guide in options.guides:
                record = run_one(target, guide, seed, options.steps, options.lr)
                records.append(record)
                print(
                    f"[{time.strftime('%H:%M:%S')}] {name} {guide} seed {seed}: "
                    f"F {record['free_energy']:.4g}"
                    + (f" (failed at step {record['failed_at']})" if record["error"] else ""),
                    flush=True,
                )
    rows = summarize(records, options.guides)
    text = table(rows)
    print(text)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    output = {
        "benchmark": "plain_loop",
        "options": {
            "targets": names,
            "guides": options.guides,
            "seeds": options.seeds,
            "steps": options.steps,
            "lr": options.lr,
            "report_draws": REPORT_DRAWS,
            "output_step_scale": options.output_step_scale,
        },
        "environment": {
            "pyroflows": pyroflows.__version__,
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "summary": rows,
        "runs": records,
    }
    options.output.write_text(json.dumps(output, indent=1, default=str))
    options.output.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
