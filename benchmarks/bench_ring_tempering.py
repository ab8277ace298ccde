"""Benchmark: the tempering's hold at no isolated mode, on the off-centre development rings.

Where the MAP search ends at no isolated mode (a ring's circle of maxima), ``fit`` holds the
tempering's β at ``anneal_from`` for a quarter of its steps before it rises
(``pyroflows.infer.fit.ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE``, 2000 steps in all). This script
fits a guide family at ``fit``'s defaults on the development rings ``ring_narrow_offcentre``
and ``ring_wide_offcentre`` (bases centred outside the circle, so ``init_to_median`` does not
start at the centre), once as it stands and once as before the hold (no hold, 1500 steps of
rise: the module's two constants patched in the worker), and scores KL(q‖p) = -ELBO (log Z = 0)
from 4000 draws. Only development targets: the held-out ``ring_2`` is
``bench_accuracy.py``'s.

Usage::

    nice python benchmarks/bench_ring_tempering.py --seeds 8 --jobs 2
    nice python benchmarks/bench_ring_tempering.py --guides nsf --targets ring_narrow_offcentre

Output: a table on stdout, ``benchmarks/results/ring_tempering_cpu.json`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyro
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy.harness import evaluate_guide, quality  # noqa: E402
from accuracy.targets import build_target  # noqa: E402

import pyroflows  # noqa: E402

fit_module = importlib.import_module("pyroflows.infer.fit")  # the name fit is the function

RESULTS = HERE / "results"
TARGETS = ("ring_narrow_offcentre", "ring_wide_offcentre")
DRAWS = 4000
#: variant -> (hold fraction, automatic tempering steps at no isolated mode)
VARIANTS = {
    "hold (now)": (
        fit_module.ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE,
        fit_module.AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE,
    ),
    "no hold (before)": (0.0, fit_module.AUTO_ANNEAL_STEPS_SEVERAL_MODES),
}
#: a KL above this counts as a fit that lost part of the ring
BAD_FIT_KL = 0.2


def run_one(job: tuple[str, str, str, int]) -> dict:
    """One fit of ``family`` on one target and seed, under one variant."""
    target_name, family, variant, seed = job
    torch.set_num_threads(1)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    fraction, steps = VARIANTS[variant]
    fit_module.ANNEAL_HOLD_FRACTION_NO_ISOLATED_MODE = fraction
    fit_module.AUTO_ANNEAL_STEPS_NO_ISOLATED_MODE = steps
    target = build_target(target_name)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = pyroflows.make_guide(family, target.model)
    started = time.process_time()
    result = pyroflows.fit(target.model, guide, *target.args, progress=False)
    seconds = time.process_time() - started
    metrics = evaluate_guide(target, guide, DRAWS, reference=None, diagnose=False)
    return {
        "target": target_name,
        "guide": family,
        "variant": variant,
        "seed": seed,
        "kl": quality(target, metrics),
        "steps": result.steps,
        "seconds": seconds,
        "anneal_steps": result.settings["anneal_steps"],
        "anneal_hold": result.settings["anneal_hold"],
        "verdict": result.verdict,
    }


def summarize(records: list[dict]) -> list[dict]:
    """Per (target, guide, variant): median, total and the count of fits above BAD_FIT_KL."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["target"], record["guide"], record["variant"]), []).append(record)
    return [
        {
            "target": target,
            "guide": guide,
            "variant": variant,
            "seeds": len(group),
            "median_kl": statistics.median(r["kl"] for r in group),
            "total_kl": sum(r["kl"] for r in group),
            "bad_fits": sum(r["kl"] > BAD_FIT_KL for r in group),
            "median_steps": statistics.median(r["steps"] for r in group),
            "median_seconds": statistics.median(r["seconds"] for r in group),
        }
        for (target, guide, variant), group in groups.items()
    ]


def table(rows: list[dict]) -> str:
    header = (
        f"{'target':23} {'guide':5} {'variant':17} {'seeds':>5} {'median KL':>9} "
        f"{'total KL':>8} {f'KL > {BAD_FIT_KL:g}':>8} {'steps':>6} {'CPU s':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['target']:23} {row['guide']:5} {row['variant']:17} {row['seeds']:5d} "
            f"{row['median_kl']:9.3f} {row['total_kl']:8.2f} {row['bad_fits']:8d} "
            f"{row['median_steps']:6.0f} {row['median_seconds']:6.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--guides", nargs="+", default=["naf"])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "ring_tempering_cpu.json")
    options = parser.parse_args()
    jobs = [
        (target, family, variant, seed)
        for target in options.targets
        for family in options.guides
        for variant in VARIANTS
        for seed in range(options.seeds)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(options.jobs) as pool:
        records = list(pool.map(run_one, jobs))
    rows = summarize(records)
    text = table(rows)
    print(text)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(
        json.dumps(
            {
                "benchmark": "ring_tempering",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "options": {k: str(v) for k, v in vars(options).items()},
                "environment": {
                    "pyroflows": pyroflows.__version__,
                    "torch": torch.__version__,
                    "pyro": pyro.__version__,
                    "python": platform.python_version(),
                    "threads": 1,
                },
                "wall_seconds": time.perf_counter() - started,
                "summary": rows,
                "records": records,
            },
            indent=1,
        )
    )
    options.output.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
