"""Benchmark: ``fit`` at its defaults against a plain SVI loop with the same guide, same time.

Issue 10, item 2: "``fit`` at defaults must never be worse than a plain SVI loop with the same
guide at the same wall time." Per target and seed, each pyroflows guide is fitted by
``pyroflows.fit(model, guide, *args)`` at its defaults (as in ``bench_accuracy.py``), and the
same guide (built afresh from the same seed, so with the same Laplace start) is trained by the
accuracy benchmark's plain peer loop (``accuracy.harness.PEER_TRAINING``: Adam 5e-3,
``Trace_ELBO`` with 8 vectorized particles, the loop the issue found better than ``fit``'s old
defaults) for the CPU time the fit took, start and report included. Both are scored like the
accuracy benchmark scores them: KL(q‖p) in nats where log Z is known, else the largest mean or
log-sd error in posterior sds, from 4000 fresh draws (the mean and sd errors from 16000, as
``bench_accuracy.py --moment-samples`` does, to lower the Monte Carlo floor under them).

The table gives per target and guide the median quality of each and the median and range of
the seed-wise ratio fit / loop (< 1: ``fit`` is better; qualities under 0.01 count as 0.01, so
two fits at the floor tie at 1).

Usage::

    nice python benchmarks/bench_fit_vs_loop.py --seeds 2 --jobs 2        # held out, AutoIAF
    nice python benchmarks/bench_fit_vs_loop.py --targets banana_2 --guides iaf naf --seeds 1

Output: a table on stdout, ``benchmarks/results/fit_vs_loop_cpu.json`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy.harness import (  # noqa: E402
    PEER_TRAINING,
    Clock,
    pyroflows_label,
    quality,
    train_peer,
    train_pyroflows,
)
from accuracy.targets import build_target, target_names  # noqa: E402

import pyroflows  # noqa: E402

RESULTS = HERE / "results"
DRAWS = 4000
#: draws for the mean and sd errors (``bench_accuracy.py``'s default ``--moment-samples``)
MOMENT_DRAWS = 16000
#: qualities below this count as this in the ratios
RATIO_FLOOR = 0.01
#: a fit is capped at this many CPU seconds (none of the held-out fits comes near it)
TIME_CAP = 120.0


def run_one(job: tuple[str, str, int]) -> dict:
    """``fit`` and the plain loop with one guide family on one target and seed."""
    target_name, family, seed = job
    torch.set_num_threads(1)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    target = build_target(target_name)
    reference = target.reference_moments()
    clock = Clock("process")
    fitted = train_pyroflows(target, family, seed, TIME_CAP, clock)
    fit_metrics = fitted.evaluate_state(
        fitted.final_state, DRAWS, reference, diagnose=False, moment_samples=MOMENT_DRAWS
    )
    looped = train_peer(
        target,
        f"{fitted.label} (plain SVI)",
        seed,
        fitted.seconds,
        clock,
        build=partial(pyroflows.make_guide, family),
        kind="plain_loop",
    )
    loop_metrics = looped.evaluate_state(
        looped.final_state, DRAWS, reference, diagnose=False, moment_samples=MOMENT_DRAWS
    )
    return {
        "target": target_name,
        "guide": fitted.label,
        "seed": seed,
        "metric": "kl" if target.log_evidence is not None else "sd_error",
        "fit_quality": quality(target, fit_metrics),
        "loop_quality": quality(target, loop_metrics),
        "fit_seconds": fitted.seconds,
        "loop_seconds": looped.seconds,
        "fit_steps": fitted.steps,
        "loop_steps": looped.steps,
        "loop_status": looped.status,
    }


def summarize(records: list[dict]) -> list[dict]:
    """Per (target, guide): medians over seeds and the seed-wise ratio fit / loop."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["target"], record["guide"]), []).append(record)
    rows = []
    for (target, guide), group in groups.items():
        ratios = [
            max(r["fit_quality"], RATIO_FLOOR) / max(r["loop_quality"], RATIO_FLOOR) for r in group
        ]
        rows.append(
            {
                "target": target,
                "guide": guide,
                "metric": group[0]["metric"],
                "fit": statistics.median(r["fit_quality"] for r in group),
                "loop": statistics.median(r["loop_quality"] for r in group),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "seconds": statistics.median(r["fit_seconds"] for r in group),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    header = (
        f"{'target':26} {'guide':8} {'metric':9} {'fit':>9} {'plain loop':>10} "
        f"{'fit/loop (min-max)':>22} {'seconds':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = f"{row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
        lines.append(
            f"{row['target']:26} {row['guide']:8} {row['metric']:9} {row['fit']:9.4g} "
            f"{row['loop']:10.4g} {ratio:>22} {row['seconds']:8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=None, help="default: the held-out ones")
    parser.add_argument("--guides", nargs="+", default=["iaf"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "fit_vs_loop_cpu.json")
    options = parser.parse_args()
    targets = options.targets or target_names(development=False)
    jobs = [(t, g, s) for t in targets for g in options.guides for s in range(options.seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor(options.jobs) as pool:
        records = list(pool.map(run_one, jobs))
    rows = summarize(records)
    text = table(rows)
    print(text)
    meta = {
        "benchmark": "fit_vs_loop",
        "loop": PEER_TRAINING,
        "draws": DRAWS,
        "moment_draws": MOMENT_DRAWS,
        "seeds": options.seeds,
        "wall_seconds": time.perf_counter() - started,
        "pyroflows": pyroflows.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "labels": {g: pyroflows_label(g) for g in options.guides},
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps({"meta": meta, "rows": rows, "runs": records}, indent=1))
    options.output.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
