"""Benchmark: pyroflows guides against Pyro's own, on models with known log evidence.

For each model (conjugate linear regression: log Z in closed form; banana and funnel: normalized
by construction) and each guide pair at the same depth and hidden sizes, it fits both with the
same optimizer, steps and particles, then reports

* ms per SVI step: both guides in one process, alternating 50-step blocks of
  ``pyroflows.fit``'s loop, median block (one thread),
* KL(q || p) = log Z - ELBO after equal steps (ELBO from fresh draws, with its standard error),
* the importance-weighted gap and PSIS k-hat,
* posterior samples per second (``guide.get_posterior().sample``),
* peak memory: CUDA max allocated on a GPU, the growth of peak RSS on the CPU (each run is a
  fresh subprocess so the figure is its own).

Usage::

    python benchmarks/bench_guides.py                  # CPU, 3 seeds, prints a table
    python benchmarks/bench_guides.py --device cuda    # on a GPU
    python benchmarks/bench_guides.py --steps 500 --seeds 1 --models banana   # quick

It writes ``benchmarks/results/guides_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

#: (our guide name, Pyro's counterpart) compared at equal depth and width
PAIRS = {
    "iaf": ("AutoIAF", "AutoIAFNormal"),
    "planar": ("AutoPlanar", "PyroPlanar"),
    "naf": ("AutoNAF", "PyroNAF"),
}


def _rss_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux), or nan elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def build_guide(label: str, model, depth: int, hidden: list[int], width: int = 8):
    """Our guide or Pyro's counterpart, at the same depth (layers) and hidden sizes.

    Pyro's planar and NAF guides are ``AutoNormalizingFlow`` with ``iterated`` ``planar`` /
    ``neural_autoregressive`` layers (DSF with ``width`` sigmoids, as our AutoNAF default).
    """
    from functools import partial

    from pyro.distributions.transforms import iterated, neural_autoregressive, planar
    from pyro.infer.autoguide import AutoIAFNormal, AutoNormalizingFlow

    from pyroflows import AutoIAF, AutoNAF, AutoPlanar

    if label == "AutoIAF":
        return AutoIAF(model, num_transforms=depth, hidden_dims=hidden)
    if label == "AutoIAFNormal":
        return AutoIAFNormal(model, hidden_dim=hidden, num_transforms=depth)
    if label == "AutoPlanar":
        return AutoPlanar(model, num_transforms=depth)
    if label == "PyroPlanar":
        return AutoNormalizingFlow(model, partial(iterated, depth, planar))
    if label == "AutoNAF":
        return AutoNAF(model, num_transforms=depth, hidden_dims=hidden, hidden_units=width)
    if label == "PyroNAF":
        return AutoNormalizingFlow(
            model, partial(iterated, depth, neural_autoregressive, hidden_dims=hidden, width=width)
        )
    raise ValueError(label)


def prepare(config: dict):
    """The model of ``config`` on its device: (problem, args, device, hidden widths)."""
    import torch

    from pyroflows.models import builtin_models

    logging.getLogger("pyro").setLevel(logging.WARNING)
    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    problem = builtin_models()[config["model"]]()
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in problem.args)
    if config["model"] != "linreg":
        torch.set_default_device(device)
    hidden = [config["hidden"] or 3 * problem.latent_dim + 1]
    return problem, args, device, hidden


def run_one(config: dict) -> dict:
    """Fits one guide on one model (in a fresh process) and measures it."""
    import pyro
    import torch

    from pyroflows import fit

    problem, args, device, hidden = prepare(config)
    dim = problem.latent_dim
    # warm up the libraries on a throwaway guide, so memory and time are the guide's own
    warmup = build_guide(config["guide"], problem.model, config["depth"], hidden)
    fit(problem.model, warmup, *args, steps=5, progress=False, report_samples=None)
    pyro.clear_param_store()
    pyro.set_rng_seed(config["seed"])
    guide = build_guide(config["guide"], problem.model, config["depth"], hidden)
    guide(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mib("VmRSS")

    result = fit(
        problem.model,
        guide,
        *args,
        steps=config["steps"],
        lr=config["lr"],
        lr_decay=config["lr_decay"],
        num_particles=config["particles"],
        progress=False,
        report_samples=None,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    from pyroflows.diagnostics import free_energy_report

    report = free_energy_report(problem.model, guide, *args, num_samples=config["report_samples"])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_mib("VmHWM") - rss_before
    with torch.no_grad():
        posterior = guide.get_posterior(*args)
        posterior.sample((100,))
        start = time.perf_counter()
        posterior.sample((config["sample_batch"],))
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples_per_s = config["sample_batch"] / (time.perf_counter() - start)
    return {
        **config,
        "latent_dim": dim,
        "hidden_dims": hidden,
        "ms_per_step": result.ms_per_step,
        "kl": problem.log_evidence + report.free_energy,
        "kl_se": report.free_energy_se,
        "iw_gap": report.kl_lower_bound,
        "khat": report.khat,
        "samples_per_s": samples_per_s,
        "peak_mib": peak,
        "final_train_free_energy": statistics.fmean(result.free_energy[-100:].tolist()),
    }


def time_pair(config: dict) -> dict[str, float]:
    """ms per step of both guides of a pair, measured in one process in alternating blocks.

    Machine load drifts; alternating short blocks and taking each guide's median block makes
    the ratio between the two guides robust to it.
    """
    import pyro
    import torch

    from pyroflows import fit

    problem, args, device, hidden = prepare(config)
    pyro.clear_param_store()
    guides = {}
    for label in config["guides"]:
        guides[label] = build_guide(label, problem.model, config["depth"], hidden)
    timings: dict[str, list[float]] = {label: [] for label in guides}

    def run_block(label: str, steps: int) -> float:
        start = time.perf_counter()
        fit(
            problem.model,
            guides[label],
            *args,
            steps=steps,
            num_particles=config["particles"],
            progress=False,
            report_samples=None,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return 1000.0 * (time.perf_counter() - start) / steps

    for label in guides:
        run_block(label, 20)  # warm-up
    for _ in range(config["rounds"]):
        for label in guides:
            timings[label].append(run_block(label, config["block"]))
    return {label: statistics.median(values) for label, values in timings.items()}


def summarize(runs: list[dict]) -> list[dict]:
    """Averages over seeds; one row per (model, guide)."""
    rows = {}
    for run in runs:
        rows.setdefault((run["model"], run["guide"]), []).append(run)
    table = []
    for (model, guide), group in rows.items():
        mean = lambda key, g=group: statistics.fmean(r[key] for r in g)  # noqa: E731
        table.append(
            {
                "model": model,
                "guide": guide,
                "seeds": len(group),
                "ms_per_step": mean("ms_per_step"),
                "kl": mean("kl"),
                "kl_worst": max(r["kl"] for r in group),
                "iw_gap": mean("iw_gap"),
                "khat": mean("khat"),
                "samples_per_s": mean("samples_per_s"),
                "peak_mib": mean("peak_mib"),
            }
        )
    return table


def format_table(table: list[dict], ours: str, theirs: str) -> str:
    header = (
        f"{'model':8} {'guide':14} {'ms/step':>8} {'KL (nats)':>10} {'worst KL':>9} "
        f"{'IW gap':>7} {'k-hat':>6} {'samples/s':>10} {'peak MiB':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in table:
        lines.append(
            f"{row['model']:8} {row['guide']:14} {row['ms_per_step']:8.2f} {row['kl']:10.3f} "
            f"{row['kl_worst']:9.3f} {row['iw_gap']:7.3f} {row['khat']:6.2f} "
            f"{row['samples_per_s']:10.0f} {row['peak_mib']:9.1f}"
        )
    lines.append("")
    lines.append(f"ratios {ours} / {theirs} (below 1 is better for {ours}):")
    by_key = {(r["model"], r["guide"]): r for r in table}
    for model in dict.fromkeys(r["model"] for r in table):
        a, b = by_key.get((model, ours)), by_key.get((model, theirs))
        if a and b:
            lines.append(
                f"  {model:8} time/step {a['ms_per_step'] / b['ms_per_step']:.2f}   "
                f"KL {a['kl'] / b['kl']:.2f}   ({a['kl']:.3f} vs {b['kl']:.3f} nats)"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["linreg", "banana", "funnel"])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="iaf")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--depth", type=int, default=None, help="flow layers, same for both (2; planar 16)"
    )
    parser.add_argument("--hidden", type=int, default=0, help="hidden width (0: 3D+1)")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lr-decay", type=float, default=0.1, help="final lr / lr (fit's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--timing-rounds", type=int, default=10, help="alternating 50-step blocks per guide"
    )
    parser.add_argument("--report-samples", type=int, default=10000)
    parser.add_argument("--sample-batch", type=int, default=10000)
    parser.add_argument("--output", type=Path, default=None)
    options = parser.parse_args()

    ours, theirs = PAIRS[options.pair]
    if options.depth is None:
        options.depth = 16 if options.pair == "planar" else 2
    configs = [
        {
            "model": model,
            "guide": guide,
            "seed": seed,
            "device": options.device,
            "steps": options.steps,
            "lr_decay": options.lr_decay,
            "depth": options.depth,
            "hidden": options.hidden,
            "particles": options.particles,
            "lr": options.lr,
            "threads": options.threads,
            "report_samples": options.report_samples,
            "sample_batch": options.sample_batch,
        }
        for model in options.models
        for seed in range(options.seeds)
        for guide in (ours, theirs)  # interleaved, so drifts in machine load hit both
    ]
    context = multiprocessing.get_context("spawn")
    runs = []
    for config in configs:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            run = pool.submit(run_one, config).result()
        print(
            f"{run['model']:8} {run['guide']:14} seed {run['seed']}: KL {run['kl']:.3f} "
            f"± {run['kl_se']:.3f}, {run['ms_per_step']:.2f} ms/step",
            flush=True,
        )
        runs.append(run)
    table = summarize(runs)
    for model in options.models:
        timing_config = {
            **configs[0],
            "model": model,
            "guides": [ours, theirs],
            "block": 50,
            "rounds": options.timing_rounds,
        }
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            paired = pool.submit(time_pair, timing_config).result()
        for row in table:
            if row["model"] == model:
                row["ms_per_step_in_fit"] = row["ms_per_step"]
                row["ms_per_step"] = paired[row["guide"]]
        print(f"timing {model}: " + ", ".join(f"{k} {v:.2f} ms/step" for k, v in paired.items()))
    text = format_table(table, ours, theirs)
    print()
    print(
        f"{options.steps} steps, lr {options.lr} decaying to {options.lr * options.lr_decay:g}, "
        f"{options.particles} particles, "
        f"depth {options.depth}, {options.seeds} seeds, device {options.device}"
    )
    print(text)
    import pyro
    import torch

    output = options.output or RESULTS / f"guides_{options.pair}_{options.device}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "benchmark": "guides",
                "pair": [ours, theirs],
                "options": {k: str(v) for k, v in vars(options).items()},
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "pyro": pyro.__version__,
                    "cuda_device": torch.cuda.get_device_name()
                    if torch.cuda.is_available()
                    else None,
                },
                "summary": table,
                "runs": runs,
                "table": text,
            },
            indent=2,
        )
    )
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
