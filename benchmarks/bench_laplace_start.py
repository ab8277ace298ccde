"""Benchmark: what the Laplace start costs against the latent dimension D, full Hessian or its
diagonal, and where the thresholds ``FULL_HESSIAN_MAX_DIM`` and ``FULL_AFFINE_MAX_DIM`` sit.

A flow guide's first call runs its set-up: one run of the model, L-BFGS to the MAP, the curvature
there (``init="laplace"``: the full float64 Hessian up to
``pyroflows.guides.start.FULL_HESSIAN_MAX_DIM`` latent dimensions, ``D`` double-backward passes;
above it the diagonal by Hutchinson's estimator, 32 Hessian-vector products), the flow's
construction (its affine stage full-rank up to ``pyroflows.guides.base.FULL_AFFINE_MAX_DIM``)
and the ELBO of each candidate start from 64 draws. This script times that first call and
records its peak memory for each ``--modes``:

* ``full``: the full Hessian at every D (the threshold patched to infinity in the worker),
* ``full-hvp``: as ``full``, with ``torch.autograd.functional.hessian`` replaced in the worker by
  :func:`hessian_by_rows` (one gradient with ``create_graph=True``, then one Hessian-vector
  product per row): not what the library does today, a measured proposal,
* ``diagonal``: the Hessian's diagonal at every D (the threshold patched to 0),
* ``default``: the library's thresholds as they are,
* ``median``: ``init="median"`` (no MAP, no Hessian), the floor under either,

on two models (``--models``):

* ``gaussian``: the scaling benchmark's ``z ~ N(0, I_D)``, 8 observations ``x_n ~ N(z, I_D)``
  (an isotropic posterior: the diagonal is exact),
* ``logistic``: a Bayesian logistic regression, ``w ~ N(0, I_D)``, ``--rows`` rows of
  standard normal covariates, ``y_n ~ Bernoulli(sigmoid(x_n · w))`` with ``w`` drawn from
  ``N(0, I_D / D)`` (a correlated posterior: the full Hessian matters).

Each (model, mode, D) runs in a fresh subprocess with one torch thread, under the scaling
benchmark's memory cap (address space limited to its size after start-up plus
``--memory-cap-gb``) and ``--time-cap-s``; a mode that hits a cap skips the larger D. Recorded:
set-up seconds (the whole first call) and, of them, the MAP and curvature seconds; L-BFGS
evaluations; peak resident memory (VmHWM) and its rise above the process after a warm-up on a
two-dimensional model; the start the guide chose, why, and each candidate's ELBO estimate (how
good a start each curvature gives).

Usage::

    python benchmarks/bench_laplace_start.py                       # both models, D = 50 .. 2000
    python benchmarks/bench_laplace_start.py --dims 50 500 --models logistic --modes full diagonal

It prints a table and writes ``benchmarks/results/laplace_start_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scaling import _is_out_of_memory, _limit_memory, _status_mib  # noqa: E402

MODES = ("full", "full-hvp", "diagonal", "default", "median")
MODELS = ("gaussian", "logistic")
NUM_DATA = 8


def make_problem(name: str, dim: int, rows: int):
    """``(model, args)`` for one of :data:`MODELS` at latent dimension ``dim``."""
    import pyro
    import pyro.distributions as dist
    import torch

    generator = torch.Generator().manual_seed(0)
    if name == "gaussian":
        data = torch.randn(NUM_DATA, dim, generator=generator)

        def gaussian(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[-1]), 1.0).to_event(1))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

        return gaussian, (data,)
    if name == "logistic":
        covariates = torch.randn(rows, dim, generator=generator)
        truth = torch.randn(dim, generator=generator) / dim**0.5
        labels = torch.bernoulli(torch.sigmoid(covariates @ truth), generator=generator)

        def logistic(x, y):
            w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[-1]), 1.0).to_event(1))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("y", dist.Bernoulli(logits=(x * w).sum(-1)), obs=y)

        return logistic, (covariates, labels)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def hessian_by_rows(func, z):
    """The Hessian of a scalar ``func`` at a vector ``z``, one Hessian-vector product per row
    from a single differentiable gradient (what ``full-hvp`` puts in place of
    ``torch.autograd.functional.hessian``)."""
    import torch

    z = z.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(func(z), z, create_graph=True)
    hessian = torch.empty(z.shape[0], z.shape[0], dtype=z.dtype, device=z.device)
    basis = torch.zeros_like(z)
    for row in range(z.shape[0]):
        basis[row] = 1.0
        (hessian[row],) = torch.autograd.grad(gradient, z, basis, retain_graph=True)
        basis[row] = 0.0
    return hessian.detach()


def run_worker(config: dict) -> dict:
    """Times one guide's first call (its set-up) for one model, mode and D."""
    import logging
    import warnings

    import pyro
    import torch

    import pyroflows.guides.base as base
    from pyroflows import make_guide

    logging.getLogger("pyro").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(config["threads"])
    mode = config["mode"]
    if mode in ("full", "full-hvp"):
        base.FULL_HESSIAN_MAX_DIM = sys.maxsize
    if mode == "full-hvp":
        torch.autograd.functional.hessian = hessian_by_rows
    elif mode == "diagonal":
        base.FULL_HESSIAN_MAX_DIM = 0
    init = "median" if mode == "median" else "laplace"

    # the same code paths once on a tiny problem, so that time and memory are the set-up's own
    warm_model, warm_args = make_problem(config["model"], 2, 16)
    make_guide(config["guide"], warm_model, init=init)(*warm_args)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # init_to_median draws from the prior
    model, args = make_problem(config["model"], config["dim"], config["rows"])
    result = {
        **config,
        "full_hessian_max_dim": base.FULL_HESSIAN_MAX_DIM,
        "full_affine_max_dim": base.FULL_AFFINE_MAX_DIM,
        "baseline_mib": _status_mib("VmRSS"),
    }
    try:  # resets VmHWM to the current resident set (Linux 4.0 and later)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    _limit_memory(config)
    try:
        start = time.perf_counter()
        guide = make_guide(config["guide"], model, init=init)
        guide(*args)
        result["setup_s"] = time.perf_counter() - start
    except (RuntimeError, MemoryError) as error:
        if not _is_out_of_memory(error):
            raise
        result.update(status="memory cap", peak_mib=_status_mib("VmHWM"))
        return result
    chosen = guide.start
    details = dict(chosen.details)
    result.update(
        status="ok",
        peak_mib=_status_mib("VmHWM"),
        parameters=sum(p.numel() for p in guide.parameters()),
        affine=guide.flow[-1].structure,
        start=chosen.method,
        reason=chosen.reason[:400],
        map_and_curvature_s=details.pop("seconds", None),
        lbfgs_evaluations=details.pop("lbfgs_evaluations", None),
        hessian_condition=details.pop("hessian_condition", None),
        candidate_elbos={
            key.removeprefix("elbo_"): value
            for key, value in details.items()
            if key.startswith("elbo_")
        },
    )
    result["rise_mib"] = result["peak_mib"] - result["baseline_mib"]
    return result


def measure(config: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(config["threads"]))
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=config["time_cap_s"]
        )
    except subprocess.TimeoutExpired:
        return {
            **config,
            "status": "time cap",
            "detail": f"start-up and set-up took over {config['time_cap_s']} s",
        }
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    status = "memory cap" if completed.returncode in (-9, 137) else "error"
    return {**config, "status": status, "detail": f"exit {completed.returncode}: {tail[:300]}"}


def _cell(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"{row['setup_s']:.1f} s, +{row['rise_mib']:.0f} MiB"


def format_table(rows: list[dict], dims: list[int]) -> str:
    """Per model and mode: set-up seconds and memory rise at each D, then the start's ELBO."""
    by_key = {(row["model"], row["mode"], row["dim"]): row for row in rows}
    keys = list(dict.fromkeys((row["model"], row["mode"]) for row in rows))
    header = "| model, start | " + " | ".join(f"D = {d}" for d in dims) + " |"
    lines = [
        "set-up seconds (first call of the guide) and peak memory above the warmed process:",
        header,
        "|---" * (len(dims) + 1) + "|",
    ]
    for model, mode in keys:
        cells = [
            _cell(by_key[(model, mode, d)]) if (model, mode, d) in by_key else "-" for d in dims
        ]
        lines.append(f"| {model}, {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "ELBO estimate of the chosen start (64 draws):",
        header,
        "|---" * (len(dims) + 1) + "|",
    ]
    for model, mode in keys:
        cells = []
        for d in dims:
            row = by_key.get((model, mode, d))
            if row is None or row["status"] != "ok":
                cells.append("-")
            elif not row["candidate_elbos"]:
                cells.append(f"not compared ({row['start']})")
            else:
                elbo = max(row["candidate_elbos"].values(), default=float("nan"))
                cells.append(f"{elbo:.1f} ({row['start']})")
        lines.append(f"| {model}, {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[50, 100, 200, 500, 1000, 2000])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["full", "diagonal"])
    parser.add_argument("--guide", default="iaf", help="a registered flow guide (default iaf)")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the logistic regression")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0)
    parser.add_argument(
        "--time-cap-s", type=float, default=300.0, help="per model, mode and D: start-up and set-up"
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "laplace_start_cpu.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0
    import pyro
    import torch

    import pyroflows.guides.base as base

    report = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "worker"
        },
        "environment": {
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads_per_process": args.threads,
            "machine": platform.machine(),
            "load_average_at_start": os.getloadavg(),
        },
        "library_thresholds": {
            "FULL_HESSIAN_MAX_DIM": base.FULL_HESSIAN_MAX_DIM,
            "FULL_AFFINE_MAX_DIM": base.FULL_AFFINE_MAX_DIM,
        },
        "rows": [],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        for mode in args.modes:
            stopped = None
            for dim in args.dims:
                config = {
                    "model": model,
                    "mode": mode,
                    "dim": dim,
                    "guide": args.guide,
                    "rows": args.rows,
                    "threads": args.threads,
                    "device": "cpu",
                    "memory_cap_gb": args.memory_cap_gb,
                    "time_cap_s": args.time_cap_s,
                }
                if stopped is not None:
                    row = {**config, "status": "skipped", "detail": stopped}
                else:
                    row = measure(config)
                    if row["status"] != "ok":
                        stopped = f"{row['status']} at D = {dim}"
                report["rows"].append(row)
                report["environment"]["load_average_at_end"] = os.getloadavg()
                args.json.write_text(json.dumps(report, indent=1))
                print(
                    f"  {model:9s} {mode:8s} D={dim:5d}  {_cell(row)}"
                    + (
                        f"  start {row['start']}"
                        if row["status"] == "ok"
                        else f"  {row.get('detail', '')}"
                    ),
                    flush=True,
                )
    print("\n" + format_table(report["rows"], args.dims))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
