"""Benchmark: how each guide's cost grows with the latent dimension D, and data-parallel SVI.

Part 1, latent dimension. The model has one vector latent of size D and a data plate::

    z ~ N(0, I_D),    x_n | z ~ N(z, I_D),  n = 1..8

For every registered guide (``pyroflows.available_guides()``, so new families are picked up) with
its default settings, beside Pyro's AutoNormal and AutoLowRankMultivariateNormal, and for each D,
a fresh subprocess builds the guide (the seconds of its set-up), then runs steps of
``pyroflows.fit`` (its defaults: 8 vectorized particles, ClippedAdam) and reports

* ms per step (median of short blocks, after two warm-up steps),
* peak memory: on the CPU the peak resident set of the subprocess (VmHWM; the figure includes
  about 0.4 GB of Python, torch and Pyro, also reported alone as ``baseline_mib``); on CUDA
  ``torch.cuda.max_memory_allocated``,
* the number of guide parameters.

A guide whose build or step needs more than ``--memory-cap-gb`` (the subprocess's address space
is limited to its size after start-up plus the cap; on CUDA, a fraction of the device) or more
than ``--time-cap-s`` is reported as capped, and larger D are skipped for it.

Part 2, data parallelism. ``examples/lightning_regression.py`` (SVIModule, AutoIAF, Bayesian
regression with ``--ddp-features`` covariates, ``--ddp-batch`` rows per process and step) on 1
and 2 CPU processes (DDP, gloo), or 1..all GPUs with ``--device cuda``: rows per second and ms per
step.

Usage::

    python benchmarks/bench_scaling.py                          # CPU, D = 10 .. 10000
    python benchmarks/bench_scaling.py --dims 10 100 --guides iaf AutoNormal --no-ddp
    python benchmarks/bench_scaling.py --device cuda            # on a GPU

It prints tables and writes ``benchmarks/results/scaling_<device>.json`` (``--plot``: also a PNG
of ms per step and peak memory against D).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # this checkout's pyroflows, as in the workers (PYTHONPATH=ROOT)
PYRO_GUIDES = ("AutoNormal", "AutoLowRankMultivariateNormal")
NUM_DATA = 8


# ---- the worker: one guide at one D, in its own process ----------------------------------------


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM / VmSize of this process in MiB (Linux), or nan elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _is_out_of_memory(error: BaseException) -> bool:
    markers = ("can't allocate memory", "out of memory", "DefaultCPUAllocator")
    return isinstance(error, MemoryError) or any(marker in str(error) for marker in markers)


def _limit_memory(config: dict) -> None:
    """Caps what the guide may allocate: address space (CPU) or a device fraction (CUDA)."""
    import torch

    cap_bytes = int(config["memory_cap_gb"] * 2**30)
    if config["device"].startswith("cuda"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total))
        return
    import resource

    size = int(_status_mib("VmSize") * 2**20)
    if size > 0:
        resource.setrlimit(resource.RLIMIT_AS, (size + cap_bytes, resource.RLIM_INFINITY))


def build_guide(name: str, model, options: dict | None = None):
    from pyro.infer import autoguide

    from pyroflows import make_guide

    if name in PYRO_GUIDES:
        return getattr(autoguide, name)(model, **(options or {}))
    return make_guide(name, model, **(options or {}))


def run_worker(config: dict) -> dict:
    """Builds one guide at one latent dimension and times steps of ``pyroflows.fit``."""
    import logging

    import pyro
    import pyro.distributions as dist
    import torch

    from pyroflows import fit

    logging.getLogger("pyro").setLevel(logging.WARNING)
    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    dim = config["dim"]
    pyro.set_rng_seed(0)
    data = torch.randn(NUM_DATA, dim, device=device)

    def model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[-1]), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    # warm the libraries up on a tiny guide, so that time and memory are the guide's own
    warm_x = torch.randn(NUM_DATA, 2, device=device)
    fit(
        model,
        build_guide(config["guide"], model, config["options"]),
        warm_x,
        steps=2,
        progress=False,
        report_samples=None,
    )
    pyro.clear_param_store()
    result = {**config, "baseline_mib": _status_mib("VmRSS")}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _limit_memory(config)
    stage = "build"
    try:
        start = time.perf_counter()
        guide = build_guide(config["guide"], model, config["options"])
        guide(data)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["build_s"] = time.perf_counter() - start
        result["parameters"] = sum(p.numel() for p in guide.parameters())
        stage = "step"
        warm = fit(model, guide, data, steps=2, progress=False, report_samples=None)
        per_step = warm.wall_time / 2
        if per_step > config["step_cap_s"]:
            result.update(status="time cap", detail=f"one step took {per_step:.1f} s")
            return _finish(result, device)
        block = max(1, min(10, int(config["block_s"] / max(per_step, 1e-4))))
        blocks = []
        for _ in range(config["blocks"]):
            timed = fit(model, guide, data, steps=block, progress=False, report_samples=None)
            blocks.append(timed.ms_per_step)
        result.update(
            status="ok", ms_per_step=statistics.median(blocks), steps_timed=block * len(blocks)
        )
    except (RuntimeError, MemoryError) as error:
        if not _is_out_of_memory(error):
            raise
        result.update(status="memory cap", detail=f"out of memory in {stage}")
        del error
    return _finish(result, device)


def _finish(result: dict, device) -> dict:
    import torch

    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mib"] = _status_mib("VmHWM")
    return result


# ---- the driver ------------------------------------------------------------------------------


def measure(config: dict) -> dict:
    """Runs one worker in a subprocess, turning a crash or a timeout into a status."""
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
            "detail": f"build and steps took over {config['time_cap_s']} s",
        }
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    status = "memory cap" if completed.returncode in (-9, 137) else "error"
    return {**config, "status": status, "detail": f"exit {completed.returncode}: {tail[:300]}"}


def guide_names(selected: list[str] | None) -> list[str]:
    from pyroflows import available_guides

    names = list(available_guides()) + list(PYRO_GUIDES)
    if not selected:
        return names
    unknown = [name for name in selected if name not in names]
    if unknown:
        raise SystemExit(f"unknown guide(s) {unknown}; choose from {names}")
    return selected


def run_scaling(args, save=lambda rows: None) -> list[dict]:
    """Every guide at every D; ``save(rows)`` after each, so a run cut short keeps its rows."""
    rows = []
    for name in guide_names(args.guides):
        stopped = None
        for dim in args.dims:
            options = args.guide_kwargs.get(name, {})
            label = name + (f" {json.dumps(options)}" if options else "")
            config = {
                "guide": name,
                "label": label,
                "options": options,
                "dim": dim,
                "device": args.device,
                "threads": args.threads,
                "memory_cap_gb": args.memory_cap_gb,
                "time_cap_s": args.time_cap_s,
                "step_cap_s": args.step_cap_s,
                "block_s": args.block_s,
                "blocks": args.blocks,
            }
            if stopped is not None:
                row = {**config, "status": "skipped", "detail": stopped}
            else:
                row = measure(config)
                if row["status"] != "ok":
                    stopped = f"{row['status']} at D = {dim}"
            rows.append(row)
            save(rows)
            print(f"  {label:30s} D={dim:6d}  {_cell(row)}", flush=True)
    return rows


def _cell(row: dict) -> str:
    if row["status"] == "ok":
        return f"{row['ms_per_step']:9.2f} ms {row['peak_mib']:8.0f} MiB"
    return f"{row['status']} ({row.get('detail', '')})"


def _train_once(args, processes: int, accelerator: str) -> dict:
    """One run of the regression example; its throughput, or why there is none."""
    example = ROOT / "examples" / "lightning_regression.py"
    out = RESULTS / f".ddp_{accelerator}_{processes}"
    command = [
        sys.executable,
        str(example),
        "--devices",
        str(processes),
        "--accelerator",
        accelerator,
        "--size",
        str(args.ddp_rows),
        "--features",
        str(args.ddp_features),
        "--batch-size",
        str(args.ddp_batch),
        "--max-steps",
        str(args.ddp_steps),
        "--epochs",
        "1000",
        "--report-samples",
        "0",
        "--threads",
        str(args.threads),
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=args.time_cap_s
        )
    except subprocess.TimeoutExpired:
        return {"status": "time cap"}
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "detail": tail[:300]}
    summary = json.loads((out / "summary.json").read_text())
    for leftover in out.iterdir():
        leftover.unlink()
    out.rmdir()
    return {
        "status": "ok",
        "steps": summary["steps"],
        "ms_per_step": summary["ms_per_step"],
        "rows_per_second": summary["rows_per_second"],
    }


def run_data_parallel(args) -> list[dict]:
    """SVIModule on 1 and 2 CPU processes (or 1..all GPUs): throughput of the same model.

    The process counts alternate over ``--ddp-rounds`` rounds and each reports its median, so
    that load from other work on the machine drifts across all of them alike.
    """
    import torch

    if args.device.startswith("cuda"):
        counts = list(range(1, torch.cuda.device_count() + 1))
        accelerator = "gpu"
    else:
        counts = args.ddp_processes
        accelerator = "cpu"
    runs: dict[int, list[dict]] = {count: [] for count in counts}
    for round_index in range(args.ddp_rounds):
        for processes in counts:
            run = _train_once(args, processes, accelerator)
            runs[processes].append(run)
            shown = (
                f"{run['ms_per_step']:7.2f} ms/step, {run['rows_per_second']:9.0f} rows/s"
                if run["status"] == "ok"
                else run["status"]
            )
            print(
                f"  round {round_index + 1}: SVIModule on {processes} {accelerator} "
                f"process(es): {shown}",
                flush=True,
            )
    rows = []
    for processes, attempts in runs.items():
        ok = [run for run in attempts if run["status"] == "ok"]
        row = {
            "processes": processes,
            "accelerator": accelerator,
            "rows_per_step": args.ddp_batch * processes,
            "runs": attempts,
        }
        if ok:
            row.update(
                status="ok",
                steps=ok[0]["steps"],
                ms_per_step=statistics.median(r["ms_per_step"] for r in ok),
                rows_per_second=statistics.median(r["rows_per_second"] for r in ok),
            )
        else:
            row.update(status=attempts[-1]["status"], detail=attempts[-1].get("detail", ""))
        rows.append(row)
    base = next((r for r in rows if r["status"] == "ok" and r["processes"] == 1), None)
    for row in rows:
        if base is not None and row["status"] == "ok":
            row["speed_up"] = row["rows_per_second"] / base["rows_per_second"]
    print("\n| processes | rows per step | ms per step | rows per second | speed-up |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["status"] == "ok":
            print(
                f"| {row['processes']} {accelerator} | {row['rows_per_step']} | "
                f"{row['ms_per_step']:.1f} | {row['rows_per_second']:.0f} | "
                f"{row.get('speed_up', float('nan')):.2f} |"
            )
        else:
            print(f"| {row['processes']} {accelerator} | {row['status']} | | | |")
    return rows


def format_table(rows: list[dict], dims: list[int]) -> str:
    """One line per guide: ms per step and peak MiB at each D, or why not."""
    names = list(dict.fromkeys(row["label"] for row in rows))
    by_key = {(row["label"], row["dim"]): row for row in rows}

    def cell(row):
        if row is None:
            return "-"
        if row["status"] == "ok":
            return f"{row['ms_per_step']:.1f} ms, {row['peak_mib']:.0f} MiB"
        return row["status"]

    header = "| guide | " + " | ".join(f"D = {d}" for d in dims) + " |"
    lines = [header, "|---" * (len(dims) + 1) + "|"]
    for name in names:
        cells = [cell(by_key.get((name, d))) for d in dims]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(row["label"] for row in rows):
        ok = [r for r in rows if r["label"] == name and r["status"] == "ok"]
        stopped = [r for r in rows if r["label"] == name and r["status"] not in ("ok", "skipped")]
        if not ok:
            continue
        if stopped:
            name += f" ({stopped[0]['status']} at D = {stopped[0]['dim']})"
        dims = [r["dim"] for r in ok]
        time_axis.plot(dims, [r["ms_per_step"] for r in ok], marker="o", label=name)
        memory_axis.plot(dims, [r["peak_mib"] for r in ok], marker="o", label=name)
    for axis, label in ((time_axis, "ms per step"), (memory_axis, "peak memory (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("latent dimension D")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument(
        "--guides",
        nargs="+",
        default=None,
        help="registered names and/or AutoNormal, AutoLowRankMultivariateNormal",
    )
    parser.add_argument(
        "--guide-kwargs",
        type=json.loads,
        default={},
        help="JSON {guide: {keyword: value}}, e.g. "
        '\'{"iaf": {"skip_connection": false}}\' (default: the defaults)',
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0)
    parser.add_argument(
        "--time-cap-s", type=float, default=300.0, help="per guide and D: start-up, build and steps"
    )
    parser.add_argument("--step-cap-s", type=float, default=30.0, help="for one step")
    parser.add_argument("--block-s", type=float, default=1.0, help="seconds per timed block")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--no-scaling", action="store_true", help="data parallelism only")
    parser.add_argument("--no-ddp", action="store_true", help="skip the data-parallel part")
    parser.add_argument("--ddp-processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ddp-rows", type=int, default=262144)
    parser.add_argument("--ddp-features", type=int, default=100)
    parser.add_argument("--ddp-batch", type=int, default=4096, help="rows per process and step")
    parser.add_argument("--ddp-steps", type=int, default=100)
    parser.add_argument(
        "--ddp-rounds",
        type=int,
        default=3,
        help="alternating rounds over the process counts (median reported)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/scaling_<device>.json"
    )
    parser.add_argument("--plot", action="store_true", help="also write a PNG beside the JSON")
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        help="only redraw the PNG of an earlier JSON (beside it)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0
    if args.replot:
        plot(json.loads(args.replot.read_text())["scaling"], args.replot.with_suffix(".png"))
        return 0
    import pyro
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    path = args.json or RESULTS / f"scaling_{kind}.json"
    environment = {
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads_per_process": args.threads,
        "machine": platform.machine(),
    }
    if kind == "cuda":
        environment["gpu"] = torch.cuda.get_device_name()
    report = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "worker"
        },
        "environment": environment,
        "model": f"z ~ N(0, I_D), {NUM_DATA} x_n ~ N(z, I_D)",
    }
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict]) -> None:
        path.write_text(json.dumps({**report, "scaling": rows}, indent=1))

    if not args.no_scaling:
        print(f"latent dimension ({kind}, {args.threads} thread(s) per process):", flush=True)
        report["scaling"] = run_scaling(args, save)
        print("\n" + format_table(report["scaling"], args.dims))
    if not args.no_ddp:
        print(f"\ndata-parallel SVIModule ({kind}):", flush=True)
        report["data_parallel"] = run_data_parallel(args)
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    if args.plot and "scaling" in report:
        plot(report["scaling"], path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
