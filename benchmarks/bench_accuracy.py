"""Benchmark: how accurate are pyroflows guides at ``fit``'s defaults, against the peers users
already have, at equal time? (issue 10, item 7)

Targets (``benchmarks/accuracy/targets.py``): held-out targets (an ill-conditioned Gaussian far
from the origin, a 10-D funnel, an 8-D banana, two multimodal 2-D densities, a 20-D conjugate
regression, eight schools in both parametrizations, four posteriors on scikit-learn's bundled
data sets) and development targets (small versions of the built-in models, other sizes, seeds
and data), each with an exact ``log Z`` or reference NUTS draws (``accuracy/references/``).

On every target and seed:

1. each pyroflows family in ``--guides`` is fitted by ``pyroflows.fit(model, guide, *args)`` at
   its defaults (capped at ``--max-seconds``);
2. each peer (Pyro's AutoNormal, AutoMultivariateNormal, AutoLaplaceApproximation,
   AutoIAFNormal(4 layers), AutoNormalizingFlow(NAF), zuko's NSF via ZukoToPyro) is trained by
   one plain SVI loop (Adam, lr 5e-3, 8 vectorized particles; the Laplace peer's MAP with 1) for
   the **same time**: the longest time any pyroflows guide took on that target and seed (at
   least ``--min-seconds``), or ``--budget`` seconds if given;
3. every guide is scored from 4000 fresh draws: KL = log Z - ELBO (with its standard error)
   where log Z is known, else mean and sd errors in units of the reference posterior sd (these
   from 16000 draws, ``--moment-samples``, of which the 4000 are the first); the IW gap, PSIS
   k-hat and verdict (``pyroflows.diagnose``), the time, and the time to quality.

Time to quality: guide snapshots are taken at geometrically spaced times during training
(every 30 %), each scored afterwards on 1000 draws with common random numbers; ``tq`` is the
first time the quality (KL, or the sd error ``max_i max(|mean error_i|, |log sd ratio_i|)``) is
within 0.05 nats (0.1 sd) of the guide's own final quality, ``tq_best`` the first time within
that tolerance of the best final quality of any contender on that target and seed (None if
never).

Time is the process's CPU time by default (``--clock process``): with one torch thread it is
the wall time of an unloaded core, and other jobs on a shared machine do not distort it.

Usage::

    nice python benchmarks/bench_accuracy.py                        # held out, 3 seeds
    nice python benchmarks/bench_accuracy.py --set development      # where defaults are tuned
    nice python benchmarks/bench_accuracy.py --quick                # a few minutes
    nice python benchmarks/bench_accuracy.py --targets funnel_10 --guides iaf nsf --seeds 1
    nice python benchmarks/bench_accuracy.py --targets wine_multinomial --update  # one target

It prints the tables and writes ``benchmarks/results/accuracy_cpu.json`` (``--quick``:
``accuracy_cpu_quick.json``) and the same name with ``.txt``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pyro  # noqa: E402
import torch  # noqa: E402
from accuracy.harness import (  # noqa: E402
    PEER_TRAINING,
    PEERS,
    Clock,
    TrainedGuide,
    quality,
    time_to_quality,
    tolerance,
    train_peer,
    train_pyroflows,
)
from accuracy.targets import TARGETS, Target, build_target, target_names  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_GUIDES = ["iaf", "naf"]
QUICK_TARGETS = {
    "heldout": ["linreg_20", "funnel_10", "eight_schools_noncentered"],
    "development": ["linreg_10", "funnel_5", "synthetic_logistic_5"],
    "all": ["linreg_20", "funnel_10", "eight_schools_noncentered"],
}
#: ratios to the best peer use max(quality, RATIO_FLOOR): KL and sd errors below it are noise
RATIO_FLOOR = 0.01


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ``--jobs`` workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def score_run(
    run: TrainedGuide,
    eval_samples: int,
    curve_samples: int,
    reference,
    moment_samples: int | None = None,
) -> dict:
    """Final metrics (``eval_samples`` draws, with k-hat and verdict; the mean and sd errors
    from ``moment_samples`` draws) and the quality curve (every snapshot, ``curve_samples``
    draws, common random numbers)."""
    target = run.target
    final = run.evaluate_state(
        run.final_state, eval_samples, reference, moment_samples=moment_samples
    )
    curve = []
    for seconds, state in run.snapshots:
        metrics = run.evaluate_state(state, curve_samples, reference, diagnose=False)
        curve.append((round(seconds, 3), float(f"{quality(target, metrics):.4g}")))
    record = {
        "target": target.name,
        "guide": run.label,
        "kind": run.kind,
        "seed": run.seed,
        "seconds": run.seconds,
        "budget": run.budget,
        "steps": run.steps,
        "status": run.status,
        "note": run.note,
        "quality": quality(target, final),
        "final": final,
        "curve": curve,
        "extra": run.extra,
    }
    goal = curve[-1][1] + tolerance(target)
    record["tq"] = time_to_quality(curve, goal) if math.isfinite(goal) else None
    return record


def run_target_seed(
    target: Target, seed: int, options: argparse.Namespace, clock: Clock, reference
) -> list[dict]:
    """Every contender on one target and seed, scored; adds ``tq_best`` to each record."""
    runs: list[TrainedGuide] = []
    for family in options.guides:
        run = train_pyroflows(
            target, family, seed, options.max_seconds, clock, snapshot_ratio=options.snapshot_ratio
        )
        log(
            f"  {target.name} seed {seed}: {run.label} {run.seconds:.1f} s, {run.steps} steps, "
            f"{run.status} {run.note}"
        )
        runs.append(run)
    if options.budget is not None:
        budget = options.budget
    else:
        longest = max((r.seconds for r in runs), default=options.min_seconds)
        budget = min(max(longest, options.min_seconds), options.max_seconds)

    def score(run: TrainedGuide) -> dict:
        return score_run(
            run, options.eval_samples, options.curve_samples, reference, options.moment_samples
        )

    records = []
    for run in runs:
        records.append(score(run))
        run.snapshots.clear()
    for label in options.peers:
        run = train_peer(target, label, seed, budget, clock, snapshot_ratio=options.snapshot_ratio)
        log(
            f"  {target.name} seed {seed}: {label} {run.seconds:.1f} s, {run.steps} steps, "
            f"{run.status} {run.note}"
        )
        records.append(score(run))
        run.snapshots.clear()
    best_final = min(r["curve"][-1][1] for r in records)
    for record in records:
        goal = best_final + tolerance(target)
        record["tq_best"] = time_to_quality(record["curve"], goal) if math.isfinite(goal) else None
        record["budget"] = budget if record["kind"] == "peer" else None
    return records


def run_unit(name: str, seed: int, options: argparse.Namespace) -> list[dict]:
    """One target and seed, in this process or a worker (one torch thread each)."""
    torch.set_num_threads(1)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        target = build_target(name)
        records = run_target_seed(
            target, seed, options, Clock(options.clock), target.reference_moments()
        )
    except Exception as error:  # one broken unit must not lose the others' hours
        if options.fail_fast:
            raise
        log(f"{name} seed {seed} FAILED: {type(error).__name__}: {error}")
        return [{"target": name, "seed": seed, "error": f"{type(error).__name__}: {error}"}]
    log(f"{name} seed {seed} done in {time.perf_counter() - started:.0f} s wall")
    return records


# ---------------------------------------------------------------------------------------------
# summaries and tables
# ---------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(records: list[dict], targets: dict[str, Target]) -> list[dict]:
    """One row per (target, guide): medians over seeds and ratios to each seed's best peer."""
    by_target: dict[str, list[dict]] = {}
    for record in records:
        by_target.setdefault(record["target"], []).append(record)
    rows = []
    for name, group in by_target.items():
        seeds = sorted({r["seed"] for r in group})
        best_peer = {}
        for seed in seeds:
            peers = [r for r in group if r["seed"] == seed and r["kind"] == "peer"]
            if peers:
                best_peer[seed] = min(peers, key=lambda r: r["quality"])
        for guide in dict.fromkeys(r["guide"] for r in group):
            mine = [r for r in group if r["guide"] == guide]
            ratios, tq_ratios = [], []
            for r in mine:
                best = best_peer.get(r["seed"])
                if best is None:
                    continue
                ratios.append(max(r["quality"], RATIO_FLOOR) / max(best["quality"], RATIO_FLOOR))
                if r["tq_best"] is not None and best["tq_best"] is not None:
                    tq_ratios.append(r["tq_best"] / max(best["tq_best"], 1e-3))
            finals = [r["final"] for r in mine]
            verdicts: dict[str, int] = {}
            for f in finals:
                verdicts[f.get("verdict", "n/a")] = verdicts.get(f.get("verdict", "n/a"), 0) + 1
            fit_verdicts: dict[str, int] = {}
            for r in mine:
                verdict = r["extra"].get("fit_verdict")
                if verdict is not None:
                    fit_verdicts[verdict] = fit_verdicts.get(verdict, 0) + 1
            rows.append(
                {
                    "target": name,
                    "development": targets[name].development,
                    "truth": targets[name].ground_truth,
                    "latent_dim": targets[name].latent_dim,
                    "guide": guide,
                    "kind": mine[0]["kind"],
                    "seeds": len(mine),
                    "quality_median": _median([r["quality"] for r in mine]),
                    "quality_min": min(r["quality"] for r in mine),
                    "quality_max": max(r["quality"] for r in mine),
                    "ratio_to_best_peer_median": _median(ratios),
                    "ratio_to_best_peer_min": min(ratios) if ratios else None,
                    "ratio_to_best_peer_max": max(ratios) if ratios else None,
                    "best_peers": [best_peer[s]["guide"] for s in seeds if s in best_peer],
                    "kl_se_median": _median([f.get("elbo_se") for f in finals]),
                    "mean_error_max_median": _median([f.get("mean_error_max") for f in finals]),
                    "log_sd_error_max_median": _median([f.get("log_sd_error_max") for f in finals]),
                    "iw_gap_median": _median([f.get("iw_gap") for f in finals]),
                    "khat_median": _median([f.get("khat") for f in finals]),
                    "verdicts": verdicts,
                    "fit_verdicts": fit_verdicts,
                    "seconds_median": _median([r["seconds"] for r in mine]),
                    "tq_median": _median([r["tq"] for r in mine]),
                    "tq_best_median": _median([r["tq_best"] for r in mine]),
                    "tq_best_reached": sum(r["tq_best"] is not None for r in mine),
                    "tq_ratio_to_best_peer_median": _median(tq_ratios),
                    "statuses": sorted({r["status"] for r in mine}),
                }
            )
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    if abs(value) >= 1e4:
        return f"{value:.2g}"
    return f"{value:.{digits}g}"


def _ratio(value) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    if value >= 1e4:
        return f"{value:.0e}".replace("e+0", "e").replace("e+", "e")
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _ratio_range(row: dict) -> str:
    if row["ratio_to_best_peer_median"] is None:
        return "-"
    return (
        f"{_ratio(row['ratio_to_best_peer_median'])} "
        f"[{_ratio(row['ratio_to_best_peer_min'])}-{_ratio(row['ratio_to_best_peer_max'])}]"
    )


def _verdicts(counts: dict[str, int]) -> str:
    short = {"good": "g", "ok": "o", "unreliable": "u", "n/a": "?"}
    return " ".join(f"{short.get(k, k[:1])}{v}" for k, v in sorted(counts.items()))


def format_tables(rows: list[dict], options: argparse.Namespace) -> str:
    """Table 1: every guide on every target. Table 2: best pyroflows guide vs best peer."""
    lines = [
        "quality: KL(q||p) in nats where log Z is known (KL se: its Monte Carlo standard error),",
        "  else sd error = max over coordinates of max(|mean error|, |log sd ratio|), in",
        "  reference posterior sds; medians over seeds",
        "x best peer: ratio to that seed's best peer (qualities floored at 0.01), median [min-max]",
        "verdicts: g good, o ok, u unreliable (count over seeds), PSIS k-hat of pyroflows.diagnose",
        "  on the benchmark's draws; fit verdict: FitResult.verdict, where fit gives one",
        "time s: CPU seconds of training",
        "tq: time to within 0.05 nats (0.1 sd) of its own final quality; tq*: time to within",
        "  that of the best final quality of any contender (reached/seeds)",
        "",
    ]
    header = (
        f"{'target':36} {'guide':25} {'quality':>9} {'KL se':>7} {'x best peer':>20} "
        f"{'IW gap':>8} "
        f"{'k-hat':>6} {'verdicts':>9} {'time s':>7} {'tq s':>6} {'tq* s':>11}"
    )
    lines += [header, "-" * len(header)]
    current = None
    for row in rows:
        name = ""
        if row["target"] != current:
            current = row["target"]
            kind = "KL" if row["truth"] == "exact log Z" else "sd"
            name = f"{row['target']} ({row['latent_dim']}-D, {kind})"
        ratio = _ratio_range(row)
        status = (
            ""
            if row["statuses"] == ["ok"]
            else " " + ",".join(s for s in row["statuses"] if s != "ok")
        )
        lines.append(
            f"{name:36} {row['guide']:25} {_fmt(row['quality_median']):>9} "
            f"{_fmt(row['kl_se_median'] if row['truth'] == 'exact log Z' else None, 2):>7} "
            f"{ratio:>20} "
            f"{_fmt(row['iw_gap_median']):>8} {_fmt(row['khat_median'], 2):>6} "
            f"{_verdicts(row['verdicts']):>9} {_fmt(row['seconds_median'], 3):>7} "
            f"{_fmt(row['tq_median'], 2):>6} "
            f"{_fmt(row['tq_best_median'], 2) + ' (' + str(row['tq_best_reached']) + '/' + str(row['seeds']) + ')':>11}"  # noqa: E501
            f"{status}"
        )
    lines += ["", "best pyroflows guide vs best peer (per target, medians over seeds)", ""]
    header = (
        f"{'target':26} {'best peer':25} {'quality':>9} {'best pyroflows':15} "
        f"{'quality':>9} {'ratio [min-max]':>20} {'tq* ratio':>9}  verdict  fit verdict"
    )
    lines += [header, "-" * len(header)]
    for target in dict.fromkeys(r["target"] for r in rows):
        group = [r for r in rows if r["target"] == target]
        peers = [r for r in group if r["kind"] == "peer"]
        ours = [r for r in group if r["kind"] == "pyroflows"]
        if not peers or not ours:
            continue
        best_peer = min(peers, key=lambda r: r["quality_median"])
        best_ours = min(ours, key=lambda r: r["quality_median"])
        ratio = _ratio_range(best_ours)
        lines.append(
            f"{target:26} {best_peer['guide']:25} {_fmt(best_peer['quality_median']):>9} "
            f"{best_ours['guide']:15} {_fmt(best_ours['quality_median']):>9} {ratio:>20} "
            f"{_ratio(best_ours['tq_ratio_to_best_peer_median']):>9}  "
            f"{_verdicts(best_ours['verdicts']):7}  {_verdicts(best_ours['fit_verdicts']) or '-'}"
        )
    return "\n".join(lines)


def _sanitize(value):
    """JSON without NaN/Infinity: non-finite floats become None."""
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: options that must agree between a results file and a run that updates it
UPDATE_MUST_MATCH = (
    "guides",
    "peers",
    "seeds",
    "max_seconds",
    "min_seconds",
    "budget",
    "eval_samples",
    "moment_samples",
    "curve_samples",
    "snapshot_ratio",
    "clock",
)


def _with_infinities_marked(run: dict) -> dict:
    """``run`` with its infinite numbers (top level and in ``final``: a peer's k-hat, a failed
    fit's quality) named in ``run["infinite"]``, as JSON stores them as null."""
    marked = {}
    for prefix, fields in (("", run), ("final.", run.get("final") or {})):
        for key, value in fields.items():
            if isinstance(value, float) and math.isinf(value):
                marked[prefix + key] = "inf" if value > 0 else "-inf"
    return {**run, "infinite": marked} if marked else run


def _restore(value):
    """Inverse of :func:`_sanitize` for a stored run: the numbers ``run["infinite"]`` names
    are infinite again, and so is a None quality (files written before that record)."""
    value = dict(value)
    infinite = value.pop("infinite", {})
    if any(name.startswith("final.") for name in infinite):
        value["final"] = dict(value["final"])
    for name, sign in infinite.items():
        number = math.inf if sign == "inf" else -math.inf
        if name.startswith("final."):
            value["final"][name.removeprefix("final.")] = number
        else:
            value[name] = number
    if value.get("quality") is None:
        value["quality"] = math.inf
    value["curve"] = [(t, math.inf if q is None else q) for t, q in value["curve"]]
    return value


def _cpu_model() -> str | None:
    """The processor's model name (Linux), or ``None``: runs on two machines of one
    architecture differ in speed, and can differ in rounding."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit(directory: Path) -> str | None:
    """The commit checked out at ``directory`` (with ``+dirty`` if it has uncommitted
    changes), or ``None`` outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment() -> dict:
    """What a results file needs to be reproduced: versions (zuko's too, ``None`` if it is
    not installed), the pyroflows commit that ran, and the machine."""
    import pyroflows

    zuko = importlib.util.find_spec("zuko")
    return {
        "pyroflows": pyroflows.__version__,
        "pyroflows_path": pyroflows.__file__,
        "commit": _git_commit(Path(pyroflows.__file__).resolve().parent),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "zuko": importlib.metadata.version("zuko") if zuko is not None else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
    }


def merge_previous(
    options: argparse.Namespace, records: list[dict], errors: list[dict], runtime: dict
) -> tuple[list[dict], list[dict], list[dict]]:
    """``--update``: the runs of ``options.output`` for targets not rerun now, plus this run's.

    Raises:
        ValueError: the file was written with other settings (:data:`UPDATE_MUST_MATCH`).
    """
    previous = json.loads(options.output.read_text())
    stored = dict(previous["options"])
    # files from before --moment-samples took the mean and sd errors from the eval draws
    stored.setdefault("moment_samples", stored.get("eval_samples"))
    mismatched = {
        k: (stored.get(k), getattr(options, k))
        for k in UPDATE_MUST_MATCH
        if stored.get(k) != getattr(options, k)
    }
    if mismatched:
        raise ValueError(
            f"--update: {options.output} was written with other settings "
            f"(stored, now): {mismatched}"
        )
    rerun = set(options.targets)
    kept = [_restore(r) for r in previous["runs"] if r["target"] not in rerun]
    kept_errors = [e for e in previous.get("errors", []) if e["target"] not in rerun]
    order = list(TARGETS)
    merged = sorted(kept + records, key=lambda r: (order.index(r["target"]), r["seed"]))
    updates = previous.get("updates", [])
    if not updates:
        updates = [
            {
                "targets": previous["options"]["targets"],
                "created": previous["created"],
                "runtime": previous.get("runtime"),
            }
        ]
    updates.append(
        {
            "targets": options.targets,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "runtime": runtime,
            "environment": environment(),
        }
    )
    options.targets = list(dict.fromkeys(r["target"] for r in merged))
    return merged, kept_errors + errors, updates


def _json_text(output: dict) -> str:
    """Indented JSON with one line per run (the runs hold long curves)."""
    runs = output.pop("runs")
    text = json.dumps({**output, "runs": "__RUNS__"}, indent=1)
    lines = ",\n  ".join(json.dumps(run, separators=(",", ":")) for run in runs)
    return text.replace('"__RUNS__"', "[\n  " + lines + "\n ]") + "\n"


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--set", choices=["heldout", "development", "all"], default="heldout", dest="target_set"
    )
    parser.add_argument("--targets", nargs="+", default=None, help="names (overrides --set)")
    parser.add_argument(
        "--guides",
        nargs="+",
        default=None,
        help=f"pyroflows families (default {' '.join(DEFAULT_GUIDES)})",
    )
    parser.add_argument(
        "--peers", nargs="+", default=None, choices=list(PEERS), help="default: all"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="cap on every fit (pyroflows) and on the peers' budget",
    )
    parser.add_argument("--min-seconds", type=float, default=2.0, help="least time a peer gets")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="fixed seconds for every peer (default: the pyroflows guides' time)",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=4000,
        help="draws that score each final guide (ELBO, KL, IW gap, k-hat, verdict)",
    )
    parser.add_argument(
        "--moment-samples",
        type=int,
        default=16000,
        help="draws for the mean and sd errors (at least --eval-samples): a mean's Monte Carlo "
        "error is 1/sqrt(draws) sd, and the sd error is a max over coordinates",
    )
    parser.add_argument("--curve-samples", type=int, default=1000)
    parser.add_argument("--snapshot-ratio", type=float, default=1.3)
    parser.add_argument("--clock", choices=["process", "wall"], default="process")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(target, seed) units run in parallel processes (each 1 thread)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 targets, 1 seed, fits capped at 5 s, AutoIAF only"
    )
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first failing (target, seed) instead of recording it",
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only the rerun targets' runs in an existing --output",
    )
    options = parser.parse_args(argv)
    if options.quick:
        options.seeds = 1
        options.max_seconds = min(options.max_seconds, 5.0)
        options.guides = options.guides or ["iaf"]
        options.targets = options.targets or QUICK_TARGETS[options.target_set]
    options.guides = options.guides or list(DEFAULT_GUIDES)
    options.peers = options.peers or list(PEERS)
    if options.moment_samples < options.eval_samples:
        parser.error(
            f"--moment-samples {options.moment_samples} is below --eval-samples "
            f"{options.eval_samples}: the moment draws include the eval draws, so pass at least "
            f"{options.eval_samples}"
        )
    if "zuko NSF" in options.peers and importlib.util.find_spec("zuko") is None:
        parser.error(
            "the peer 'zuko NSF' needs zuko, which is not installed: python3 -m pip install -e "
            "'.[bench]', or leave it out with --peers"
        )
    if options.targets is None:
        development = {"heldout": False, "development": True, "all": None}[options.target_set]
        options.targets = target_names(development)
    unknown = [t for t in options.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    if options.output is None:
        options.output = RESULTS / (
            "accuracy_cpu_quick.json" if options.quick else "accuracy_cpu.json"
        )
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    import pyroflows

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    logging.getLogger("pyro").setLevel(logging.WARNING)
    log(
        f"pyroflows from {pyroflows.__file__}; targets {options.targets}; guides "
        f"{options.guides}; peers {options.peers}; {options.seeds} seeds; clock {options.clock}"
    )
    started_wall, started_cpu = time.perf_counter(), _cpu_seconds()
    targets: dict[str, Target] = {}
    records: list[dict] = []
    skipped: dict[str, str] = {}
    for name in options.targets:
        try:
            targets[name] = build_target(name)
        except ImportError as error:
            skipped[name] = str(error)
            log(f"skipping {name}: {error}")
    units = [(name, seed) for name in targets for seed in range(options.seeds)]
    if options.jobs == 1:
        for name, seed in units:
            records += run_unit(name, seed, options)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(options.jobs, mp_context=context) as pool:
            for unit_records in pool.map(
                run_unit, *zip(*units, strict=True), [options] * len(units)
            ):
                records += unit_records
    order = {(name, seed): i for i, (name, seed) in enumerate(units)}
    records.sort(key=lambda r: order[(r["target"], r["seed"])])
    errors = [r for r in records if "error" in r]
    records = [r for r in records if "error" not in r]
    runtime = {
        "wall_seconds": time.perf_counter() - started_wall,
        "cpu_seconds": _cpu_seconds() - started_cpu,
        "jobs": options.jobs,
    }
    updates = []
    if options.update:
        records, errors, updates = merge_previous(options, records, errors, runtime)
        for name in dict.fromkeys(r["target"] for r in records):
            if name not in targets:
                targets[name] = build_target(name)
    # in the registry's order (an --update built its rerun targets first)
    targets = {
        n: targets[n] for n in TARGETS if n in targets and any(r["target"] == n for r in records)
    }
    rows = summarize(records, targets)
    table = format_tables(rows, options)
    for error in errors:
        table += f"\nFAILED {error['target']} seed {error['seed']}: {error['error']}"
    print(table)
    print(f"\nruntime: {runtime['wall_seconds']:.0f} s wall, {runtime['cpu_seconds']:.0f} s CPU")
    output = {
        "benchmark": "accuracy",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        "peer_training": PEER_TRAINING,
        "targets": {
            n: {
                "description": t.description,
                "development": t.development,
                "latent_dim": t.latent_dim,
                "truth": t.ground_truth,
                "log_evidence": t.log_evidence,
                "reference_file": t.reference_file,
                "tags": list(t.tags),
            }
            for n, t in targets.items()
        },
        "skipped": skipped,
        "errors": errors,
        "environment": environment(),
        "runtime": runtime,
        "updates": updates,
        "summary": rows,
        "runs": [_with_infinities_marked(run) for run in records],
        "table": table,
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(_json_text(_sanitize(output)))
    options.output.with_suffix(".txt").write_text(table + "\n")
    log(f"wrote {options.output}")


if __name__ == "__main__":
    main()
