"""Benchmark: ``fit(gradients="stl")`` against ``fit(gradients="reparameterized")``.

Issue 10, item 3: sticking-the-landing gradients (Roeder, Wu & Duvenaud 2017) "where log q of
the guide's own draw at detached parameters is cheap; keep whichever is better by measurement".
Each guide is fitted at ``fit``'s defaults, once with each estimator, from the same seed (the
same start, the same first random draws), on the **development** targets of the accuracy
benchmark (never the held-out ones: this measurement chooses a default), and scored like the
accuracy benchmark does: KL(q‖p) = log Z − ELBO where log Z is known, else the largest error
of a posterior mean or log sd in posterior sds, from 4000 fresh draws. CPU seconds (one torch
thread per process) cover the whole ``fit``, its start, pilots and report included.

The table gives, per target and guide, the median quality and seconds of each estimator over
the seeds, and the median and range of the seed-wise ratio STL / reparameterized (< 1: STL is
more accurate; qualities under ``RATIO_FLOOR`` = 1e-3 count as 1e-3, a tie at the floor).

Usage::

    nice python benchmarks/bench_gradients.py                        # dev targets, 4 seeds
    nice python benchmarks/bench_gradients.py --targets funnel_5 --guides naf --seeds 2

Output: a table on stdout, ``benchmarks/results/gradients_cpu.json`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import json
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
from accuracy.targets import build_target, target_names  # noqa: E402

import pyroflows  # noqa: E402

RESULTS = HERE / "results"
ESTIMATORS = ("reparameterized", "stl")
DRAWS = 4000


#: qualities below this count as this in the ratios (a KL of 1e-6 against 2e-6 is a tie)
RATIO_FLOOR = 1e-3


def run_one(job: tuple[str, str, int, str]) -> dict:
    """One ``fit`` at defaults but for ``gradients``; its quality, seconds and verdict."""
    target_name, family, seed, gradients = job
    torch.set_num_threads(1)
    target = build_target(target_name)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.process_time()
    guide = pyroflows.make_guide(family, target.model)
    result = pyroflows.fit(target.model, guide, *target.args, gradients=gradients, progress=False)
    seconds = time.process_time() - start
    metrics = evaluate_guide(target, guide, DRAWS, diagnose=False)
    return {
        "target": target_name,
        "guide": family,
        "seed": seed,
        "gradients": gradients,
        "used": result.settings["gradients"],
        "quality": quality(target, metrics),
        "metric": "kl" if target.log_evidence is not None else "sd_error",
        "seconds": seconds,
        "steps": result.steps,
        "verdict": result.verdict,
    }


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    keys = dict.fromkeys((r["target"], r["guide"]) for r in records)
    for target, family in keys:
        runs = {
            (r["seed"], r["gradients"]): r
            for r in records
            if r["target"] == target and r["guide"] == family
        }
        seeds = sorted({seed for seed, _ in runs})
        row = {"target": target, "guide": family, "seeds": len(seeds)}
        for estimator in ESTIMATORS:
            mine = [runs[s, estimator] for s in seeds if (s, estimator) in runs]
            row[f"{estimator}_quality"] = statistics.median(r["quality"] for r in mine)
            row[f"{estimator}_seconds"] = statistics.median(r["seconds"] for r in mine)
        ratios = [
            max(runs[s, "stl"]["quality"], RATIO_FLOOR)
            / max(runs[s, "reparameterized"]["quality"], RATIO_FLOOR)
            for s in seeds
            if (s, "stl") in runs and (s, "reparameterized") in runs
        ]
        row["ratio_median"] = statistics.median(ratios)
        row["ratio_min"], row["ratio_max"] = min(ratios), max(ratios)
        row["metric"] = next(iter(runs.values()))["metric"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        f"{'target':<20} {'guide':<5} {'metric':<8} {'reparam':>9} {'stl':>9} "
        f"{'ratio (min-max)':>22} {'s reparam':>10} {'s stl':>8}"
    ]
    for row in rows:
        spread = f"{row['ratio_median']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
        lines.append(
            f"{row['target']:<20} {row['guide']:<5} {row['metric']:<8} "
            f"{row['reparameterized_quality']:>9.4f} {row['stl_quality']:>9.4f} {spread:>22} "
            f"{row['reparameterized_seconds']:>10.1f} {row['stl_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=None, help="default: the dev targets")
    parser.add_argument("--guides", nargs="+", default=["iaf", "naf"])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "gradients_cpu.json")
    options = parser.parse_args()
    targets = options.targets or target_names(development=True)
    held_out = [name for name in targets if not build_target(name).development]
    if held_out:
        print(f"note: {held_out} are held-out targets; do not choose defaults on them")
    jobs = [
        (target, family, seed, estimator)
        for target in targets
        for family in options.guides
        for seed in range(options.seeds)
        for estimator in ESTIMATORS
    ]
    with ProcessPoolExecutor(options.jobs) as pool:
        records = list(pool.map(run_one, jobs))
    rows = summarize(records)
    text = table(rows)
    print(text)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seeds": options.seeds,
        "draws": DRAWS,
    }
    options.output.write_text(json.dumps({"meta": meta, "rows": rows, "runs": records}, indent=1))
    options.output.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
