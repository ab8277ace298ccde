"""Benchmark: ms per training step of the guides, this tree against another checkout.

Runs ``pyroflows.fit``'s loop (at ``lr=1e-2``, 4 particles: the same settings in both trees)
for each guide at its defaults on the built-in models, in
alternating blocks, each block in a fresh subprocess that imports pyroflows from one of the two
trees (``--baseline`` is a path to another checkout, e.g. a ``git worktree`` of an earlier
commit). It reports the median of the blocks' **thread CPU time** per step (one torch thread),
which, unlike wall time, does not count the time the process waits while a shared machine runs
something else; the ratio ``this / baseline`` is the figure of merit.

Usage::

    git worktree add /tmp/base <commit>
    python benchmarks/bench_step_time.py --baseline /tmp/base

It prints a table and writes ``benchmarks/results/step_time_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
RESULTS = HERE / "benchmarks" / "results"

WORKER = r"""
import json, logging, sys, time
import pyro, torch
logging.getLogger("pyro").setLevel(logging.WARNING)
torch.set_num_threads(1)
import pyroflows
from pyroflows.models import builtin_models
config = json.loads(sys.argv[1])
problem = builtin_models()[config["model"]]()
pyro.set_rng_seed(0)
guide = pyroflows.make_guide(config["guide"], problem.model)
same = dict(lr=1e-2, num_particles=4, progress=False, report_samples=None)  # as in both trees
pyroflows.fit(problem.model, guide, *problem.args, steps=20, **same)
start = time.thread_time()
pyroflows.fit(problem.model, guide, *problem.args, steps=config["steps"], **same)
print(json.dumps({"ms_per_step": 1000 * (time.thread_time() - start) / config["steps"],
                  "file": pyroflows.__file__}))
"""


def run_block(tree: Path, config: dict) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(config)], env=env, cwd=tree,
        capture_output=True, text=True, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(tree)), (result["file"], tree)
    return result["ms_per_step"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--guides", nargs="+", default=["iaf", "naf", "planar"])
    parser.add_argument("--models", nargs="+", default=["linreg", "banana", "funnel"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "step_time_cpu.json")
    args = parser.parse_args(argv)
    trees = {"this": HERE, "baseline": args.baseline.resolve()}
    rows = []
    print(f"{'guide':8s} {'model':8s} {'this ms':>8s} {'base ms':>8s} {'ratio':>6s}")
    for guide in args.guides:
        for model in args.models:
            config = {"guide": guide, "model": model, "steps": args.steps}
            times = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    times[name].append(run_block(tree, config))
            this, base = (statistics.median(times[n]) for n in ("this", "baseline"))
            rows.append({"guide": guide, "model": model, "this_ms": this, "baseline_ms": base,
                         "ratio": this / base, "blocks": times})
            print(f"{guide:8s} {model:8s} {this:8.2f} {base:8.2f} {this / base:6.2f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"baseline": str(args.baseline), "rows": rows}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
