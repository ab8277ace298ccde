"""Benchmark: draws with log q per second of every one-pass pyroflows family beside its peers.

Each contender is a flow at the same depth (2 layers) and width (one hidden layer of
``min(3D + 1, 1024)`` units; 8 sigmoids for NAF; 8 bins for splines; planar 16 layers), used
in its one-pass sampling direction:

* pyroflows guides: ``guide.get_posterior()``, then ``rsample`` and ``log_prob`` of the draw
  (served from the cache computed during sampling);
* Pyro: ``AutoIAFNormal``; ``AutoNormalizingFlow`` with ``neural_autoregressive``,
  ``spline_autoregressive``, ``affine_coupling`` and ``planar`` layers;
* zuko's MAF and NSF used in the IAF direction: ``u ~ N(0, I)``, ``x, ladj =
  transform.call_and_ladj(u)`` (one pass per layer), ``log q = log N(u) - ladj``.

Two modes: ``sample`` (no gradient, ``--batch`` draws per call: how fast diagnostics and
predictive draws are) and ``train`` (8 draws, forward and backward of ``mean(log q) + mean(x)``:
the flow's share of an SVI step). One torch thread; the contenders of a row run in alternating
rounds in one process, and the median round is reported; ratios are to the fastest peer. On a
CPU the clock is the thread's CPU time (these machines are shared: wall time counts the other
jobs too); on a GPU, wall time.

Usage::

    python benchmarks/bench_sampling.py                      # D = 10, 100, 500
    python benchmarks/bench_sampling.py --dims 10 --rounds 5 # quick

It prints a table and writes ``benchmarks/results/sampling_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

RESULTS = Path(__file__).resolve().parent / "results"

#: family -> (pyroflows contenders, peer contenders)
GROUPS = {
    "iaf": (["AutoIAF", "AutoIAF(no skip)"], ["AutoIAFNormal", "zuko MAF (IAF dir.)"]),
    "naf": (["AutoNAF"], ["Pyro NAF"]),
    "nsf": (["AutoNSF", "AutoNSF(coupling)"], ["Pyro spline AR", "zuko NSF (IAF dir.)"]),
    "realnvp": (["AutoRealNVP", "AutoNICE"], ["Pyro affine coupling"]),
    "planar": (["AutoPlanar"], ["Pyro planar"]),
}


def gaussian_model(dim: int, device: torch.device):
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(dim, device=device), 1.0).to_event(1))

    return model


def pyro_guide_sampler(guide) -> Callable:
    guide()
    posterior = guide.get_posterior()

    def draw(n: int):
        x = posterior.rsample((n,))
        return x, posterior.log_prob(x)

    return draw


def zuko_sampler(flow, dim: int, device) -> Callable:
    transform = flow.to(device).transform()
    base = dist.Normal(torch.zeros(dim, device=device), 1.0).to_event(1)

    def draw(n: int):
        u = base.rsample((n,))
        x, ladj = transform.call_and_ladj(u)
        return x, base.log_prob(u) - ladj

    return draw


def build(label: str, dim: int, device: torch.device) -> Callable:
    """A ``draw(n) -> (x, log_q)`` for the contender ``label``."""
    import zuko
    from pyro.distributions import transforms as T
    from pyro.infer.autoguide import AutoIAFNormal, AutoNormalizingFlow

    import pyroflows

    hidden = [min(3 * dim + 1, 1024)]
    model = gaussian_model(dim, device)
    pyro.clear_param_store()
    ours = {
        "AutoIAF": lambda: pyroflows.AutoIAF(model, hidden_dims=hidden),
        "AutoIAF(no skip)": lambda: pyroflows.AutoIAF(
            model, hidden_dims=hidden, skip_connection=False
        ),
        "AutoNAF": lambda: pyroflows.AutoNAF(model, hidden_dims=hidden, hidden_units=8),
        "AutoNSF": lambda: pyroflows.AutoNSF(model, hidden_dims=hidden, num_bins=8),
        "AutoNSF(coupling)": lambda: pyroflows.AutoNSF(
            model, hidden_dims=hidden, num_bins=8, structure="coupling"
        ),
        "AutoRealNVP": lambda: pyroflows.AutoRealNVP(model, hidden_dims=hidden, num_transforms=2),
        "AutoNICE": lambda: pyroflows.AutoNICE(model, hidden_dims=hidden, num_transforms=2),
        "AutoPlanar": lambda: pyroflows.AutoPlanar(model, num_transforms=16),
    }
    pyro_flows = {
        "AutoIAFNormal": lambda: AutoIAFNormal(model, hidden_dim=hidden, num_transforms=2),
        "Pyro NAF": lambda: AutoNormalizingFlow(
            model, partial(T.iterated, 2, T.neural_autoregressive, hidden_dims=hidden, width=8)
        ),
        "Pyro spline AR": lambda: AutoNormalizingFlow(
            model, partial(T.iterated, 2, T.spline_autoregressive, hidden_dims=hidden, count_bins=8)
        ),
        "Pyro affine coupling": lambda: AutoNormalizingFlow(
            model, partial(T.iterated, 2, T.affine_coupling, hidden_dims=hidden)
        ),
        "Pyro planar": lambda: AutoNormalizingFlow(model, partial(T.iterated, 16, T.planar)),
    }
    if label in ours:
        return pyro_guide_sampler(ours[label]().to(device))
    if label in pyro_flows:
        return pyro_guide_sampler(pyro_flows[label]().to(device))
    if label == "zuko MAF (IAF dir.)":
        return zuko_sampler(zuko.flows.MAF(dim, transforms=2, hidden_features=hidden), dim, device)
    if label == "zuko NSF (IAF dir.)":
        flow = zuko.flows.NSF(dim, transforms=2, bins=8, hidden_features=hidden)
        return zuko_sampler(flow, dim, device)
    raise ValueError(label)


def time_call(fn: Callable, calls: int, device: torch.device) -> float:
    """Seconds per call: the thread's CPU time on a CPU (which, unlike wall time, does not count
    the time a shared machine gives to other processes), wall time on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
    else:
        start = time.thread_time()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / calls
    return (time.thread_time() - start) / calls


def measure_row(labels, dim, mode, batch, rounds, device) -> dict[str, float]:
    """Draws per second of each contender (median over alternating rounds)."""
    samplers = {label: build(label, dim, device) for label in labels}

    def work(draw):
        if mode == "sample":
            with torch.no_grad():
                draw(batch)
            return
        x, log_q = draw(8)
        (log_q.mean() + x.mean()).backward()

    size = batch if mode == "sample" else 8
    calls = {}
    for label, draw in samplers.items():  # warm up, and size each round to ~0.2 s
        work(draw)
        seconds = time_call(lambda d=draw: work(d), 3, device)
        calls[label] = max(1, int(0.2 / max(seconds, 1e-6)))
    times: dict[str, list[float]] = {label: [] for label in samplers}
    for _ in range(rounds):
        for label, draw in samplers.items():
            times[label].append(time_call(lambda d=draw: work(d), calls[label], device))
    return {label: size / statistics.median(t) for label, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--families", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--modes", nargs="+", default=["sample", "train"])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    rows = []
    print(f"{'family':8s} {'mode':6s} {'D':>5s}  contender: draws/s (x fastest peer)")
    for family in args.families:
        ours, peers = GROUPS[family]
        for mode in args.modes:
            for dim in args.dims:
                pyro.set_rng_seed(0)
                rates = measure_row(ours + peers, dim, mode, args.batch, args.rounds, device)
                best_peer = max(rates[p] for p in peers)
                row = {
                    "family": family, "mode": mode, "dim": dim,
                    "batch": args.batch if mode == "sample" else 8,
                    "draws_per_s": rates,
                    "ratio_to_fastest_peer": {k: v / best_peer for k, v in rates.items()},
                }
                rows.append(row)
                cells = "  ".join(f"{k}: {v:.0f} ({v / best_peer:.2f})" for k, v in rates.items())
                print(f"{family:8s} {mode:6s} {dim:5d}  {cells}", flush=True)
    output = Path(args.output) if args.output else RESULTS / f"sampling_{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__, "pyro": pyro.__version__, "threads": 1,
        "machine": platform.processor() or platform.machine(), "rounds": args.rounds,
    }
    output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
