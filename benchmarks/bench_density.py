"""Benchmark: density estimation on data sets bundled with scikit-learn, pyroflows' families
against zuko's and Pyro's flows at equal parameter counts and equal budgets.

For each data set (``pyroflows.datasets.load_density_data``: the 8x8 digits dequantized, and
the breast-cancer table; one fixed train/validation/test split, standardized) and each model,
it fits ``pyroflows.fit_density`` (the same loop for every model: Adam, the same batch size,
learning rate, epochs cap and early-stopping rule on the same validation rows) and reports the
test log-likelihood in nats per row:

* pyroflows ``maf``, ``realnvp``, ``nsf`` and ``naf`` (the autoregressive ones in the density
  direction), 5 layers, two hidden layers of a width chosen so that every model has the same
  parameter count (:data:`TARGET_PARAMETERS`) within a few percent;
* zuko's ``MAF`` and ``NSF`` (5 transforms) and Pyro's ``spline_autoregressive`` (5 layers,
  used through its inverse so that the density costs one pass, as for the MAF direction),
  at the same count; each library keeps its own defaults otherwise (activations, spline bounds).

Each model is trained with ``--seeds`` seeds (initialization and minibatch order; the split is
fixed); the table gives the mean over seeds of the test log-likelihood, the standard error over
test rows of the seed-averaged per-row log-likelihood, the spread over seeds, and each model's
paired difference (per test row) to the best peer, the best of each side being picked by its
validation log-likelihood (never by the test rows). Parameters are
counted as ``numel`` of every trainable tensor (masked weights included, for every library).
Times are CPU time of the fitting thread (``time.thread_time``, one torch thread).

Usage::

    python benchmarks/bench_density.py                 # both data sets, 3 seeds
    python benchmarks/bench_density.py --quick         # a smoke run (tiny budget)

It writes ``benchmarks/results/density_cpu.json`` (or ``--output``) and a ``.txt`` of its
tables beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"

OURS = ["maf", "realnvp", "nsf", "naf"]
PEERS = ["zuko-maf", "zuko-nsf", "pyro-spline"]
LABELS = {
    "maf": "pyroflows maf",
    "realnvp": "pyroflows realnvp",
    "nsf": "pyroflows nsf",
    "naf": "pyroflows naf (DSF)",
    "zuko-maf": "zuko MAF",
    "zuko-nsf": "zuko NSF",
    "pyro-spline": "Pyro spline_autoregressive",
}

#: every model's parameter count per data set (within a few percent): the smallest round
#: number at which every model's hidden layers are at least as wide as the data (Pyro's
#: AutoRegressiveNN requires it, and a narrower MADE cannot represent every degree)
TARGET_PARAMETERS = {"digits": 800_000, "breast_cancer": 150_000}


# ---- adaptors: other libraries' flows as pyroflows layers ------------------------------------


def zuko_layer(flow):
    """A zuko ``Flow`` (its transform maps data to noise in one pass) as a pyroflows layer."""
    from pyroflows.transforms.layer import FlowLayer

    class ZukoLayer(FlowLayer):
        def __init__(self, zuko_flow):
            dim = zuko_flow.base().event_shape[-1]
            super().__init__(dim, 0)
            self.zuko_flow = zuko_flow

        def inverse_with_log_det(self, x, context=None):  # data -> noise: one pass
            u, ladj = self.zuko_flow.transform().call_and_ladj(x)
            return u, -ladj

        def forward_with_log_det(self, u, context=None, need_log_det=True):
            x, ladj = self.zuko_flow.transform().inv.call_and_ladj(u)
            return x, ladj

    return ZukoLayer(flow)


def pyro_inverse_layer(transform):
    """A Pyro autoregressive ``TransformModule`` used in its inverse: its one-pass forward map
    takes data to noise (the density direction), its sequential inverse samples."""
    from pyroflows.transforms.layer import FlowLayer

    class PyroInverse(FlowLayer):
        def __init__(self, module):
            super().__init__(module.arn.input_dim if hasattr(module, "arn") else 0, 0)
            self.module = module

        def inverse_with_log_det(self, x, context=None):
            u = self.module._call(x)
            return u, -self.module.log_abs_det_jacobian(x, u)

        def forward_with_log_det(self, u, context=None, need_log_det=True):
            x = self.module._inverse(u)
            return x, -self.module.log_abs_det_jacobian(x, u)

    return PyroInverse(transform)


def build(model: str, dim: int, width: int, layers: int = 5):
    """``(flow argument, options)`` for ``fit_density``."""
    hidden = [width, width]
    if model in OURS:
        options = {"num_transforms": layers, "hidden_dims": hidden}
        if model == "naf":
            options["hidden_units"] = 8
        if model in ("nsf", "naf"):
            # no direct input-to-output path: with 23-24 numbers per coordinate it would hold
            # num_params·D² weights (94k per layer on the digits) for a linear dependence the
            # hidden layers already represent
            options["skip_connection"] = False
        return model, options
    if model == "zuko-maf":
        import zuko

        return [zuko_layer(zuko.flows.MAF(dim, transforms=layers, hidden_features=hidden))], {}
    if model == "zuko-nsf":
        import zuko

        return [zuko_layer(zuko.flows.NSF(dim, transforms=layers, hidden_features=hidden))], {}
    if model == "pyro-spline":
        from pyro.distributions.transforms import spline_autoregressive

        return [
            pyro_inverse_layer(spline_autoregressive(dim, hidden_dims=hidden))
            for _ in range(layers)
        ], {}
    raise ValueError(model)


def parameter_count(model: str, dim: int, width: int) -> int:
    from pyroflows import make_flow

    flow, options = build(model, dim, width)
    if isinstance(flow, str):
        options = dict(options)
        layers = options.pop("num_transforms")
        direction = {} if flow == "realnvp" else {"direction": "maf"}
        flow = [make_flow(flow, dim, num_transforms=layers, **options, **direction)]
    return sum(p.numel() for layer in flow for p in layer.parameters() if p.requires_grad)


def matching_width(model: str, dim: int, target: int) -> int:
    """The width whose parameter count is closest to ``target`` (counts grow with width)."""
    low, high = 2, 4096
    while high - low > 1:
        middle = (low + high) // 2
        if parameter_count(model, dim, middle) < target:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda w: abs(parameter_count(model, dim, w) - target))


def fit_one(model: str, splits, width: int, seed: int, budget: dict) -> dict:
    import pyroflows

    torch.manual_seed(seed)  # the peers' layers are built here, with this seed
    flow, options = build(model, splits.dim, width)
    start = time.thread_time()
    density = pyroflows.fit_density(
        flow,
        splits.train,
        validation=splits.validation,
        seed=seed,
        progress=False,
        **budget,
        **options,
    )
    seconds = time.thread_time() - start
    with torch.no_grad():
        test_ll = density.log_prob(splits.test).double().numpy()
    return {
        "model": model,
        "seed": seed,
        "width": width,
        "test_ll": float(test_ll.mean()),
        "test_ll_se": float(test_ll.std(ddof=1) / math.sqrt(len(test_ll))),
        "test_ll_rows": test_ll.tolist(),
        "best_validation_ll": -density.history.best_validation_loss,
        "best_epoch": density.history.best_epoch,
        "epochs": density.history.epochs,
        "steps": density.history.steps,
        "thread_seconds": seconds,
        "stopped_by": density.history.stopped_by,
    }


def summarize(runs: list[dict], counts: dict, data_set: str) -> dict:
    rows = {}
    for model in OURS + PEERS:
        mine = [r for r in runs if r["model"] == model]
        if not mine:
            continue
        per_row = np.mean([r["test_ll_rows"] for r in mine], axis=0)
        per_seed = [r["test_ll"] for r in mine]
        rows[model] = {
            "label": LABELS[model],
            "parameters": counts[model]["parameters"],
            "width": counts[model]["width"],
            "test_ll": float(per_row.mean()),
            "test_ll_se": float(per_row.std(ddof=1) / math.sqrt(len(per_row))),
            "validation_ll": float(np.mean([r["best_validation_ll"] for r in mine])),
            "per_seed": per_seed,
            "seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
            "best_epoch": [r["best_epoch"] for r in mine],
            "thread_seconds": float(np.mean([r["thread_seconds"] for r in mine])),
            "_rows": per_row,
        }
    ours = [m for m in OURS if m in rows]
    peers = [m for m in PEERS if m in rows]
    comparison = None
    if ours and peers:
        # the best of each side is picked by its validation log-likelihood (the rows early
        # stopping saw), not by the test rows the table reports
        best_ours = max(ours, key=lambda m: rows[m]["validation_ll"])
        best_peer = max(peers, key=lambda m: rows[m]["validation_ll"])
        difference = rows[best_ours]["_rows"] - rows[best_peer]["_rows"]
        comparison = {
            "selected_by": "validation log-likelihood (mean over seeds)",
            "best_pyroflows": best_ours,
            "best_peer": best_peer,
            "difference": float(difference.mean()),
            "difference_se": float(difference.std(ddof=1) / math.sqrt(len(difference))),
        }
        for row in rows.values():  # every model against that best peer, paired over test rows
            gap = row["_rows"] - rows[best_peer]["_rows"]
            row["vs_best_peer"] = float(gap.mean())
            row["vs_best_peer_se"] = float(gap.std(ddof=1) / math.sqrt(len(gap)))
    for row in rows.values():
        # the seed-averaged log-likelihood of each test row, for any other paired comparison
        row["test_ll_rows"] = [round(float(v), 5) for v in row.pop("_rows")]
    return {"data_set": data_set, "models": rows, "comparison": comparison}


def format_table(summary: dict) -> str:
    lines = [
        f"{summary['data_set']}",
        f"{'model':28} {'params':>8} {'width':>5} {'val LL':>8} {'test LL':>16} "
        f"{'vs best peer':>16} {'seed sd':>7} {'best epoch':>14} {'CPU s':>7}",
    ]
    for row in summary["models"].values():
        epochs = "/".join(str(e) for e in row["best_epoch"])
        versus = (
            f"{row['vs_best_peer']:+7.2f} ± {row['vs_best_peer_se']:5.2f}"
            if "vs_best_peer" in row
            else ""
        )
        lines.append(
            f"{row['label']:28} {row['parameters']:8d} {row['width']:5d} "
            f"{row['validation_ll']:8.2f} {row['test_ll']:8.2f} ± {row['test_ll_se']:5.2f} "
            f"{versus:>16} {row['seed_sd']:7.2f} {epochs:>14} {row['thread_seconds']:7.1f}"
        )
    c = summary["comparison"]
    if c:
        lines.append(
            f"best pyroflows ({c['best_pyroflows']}) − best peer ({c['best_peer']}): "
            f"{c['difference']:+.3f} ± {c['difference_se']:.3f} nats on the test rows (paired; "
            "each side's best picked by validation log-likelihood)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-sets", nargs="+", default=["digits", "breast_cancer"])
    parser.add_argument("--models", nargs="+", default=OURS + PEERS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="tiny budget, one seed (smoke)")
    parser.add_argument("--output", type=Path, default=None)
    options = parser.parse_args()
    if options.quick:
        options.seeds, options.max_epochs, options.patience = 1, 3, 2
    torch.set_num_threads(1)
    import logging

    from pyroflows.datasets import load_density_data

    logging.getLogger("pyro").setLevel(logging.WARNING)
    budget = {
        "batch_size": options.batch_size,
        "lr": options.lr,
        "max_epochs": options.max_epochs,
        "patience": options.patience,
    }
    summaries, all_runs, texts = [], [], []
    for data_set in options.data_sets:
        splits = load_density_data(data_set, seed=0)
        dim = splits.dim
        target = TARGET_PARAMETERS[data_set]
        counts = {}
        for model in options.models:
            width = matching_width(model, dim, target)
            counts[model] = {"width": width, "parameters": parameter_count(model, dim, width)}
            print(
                f"{data_set}: {model:12} width {width:5d}, {counts[model]['parameters']} "
                f"parameters (target {target})",
                flush=True,
            )
        runs = []
        for seed in range(options.seeds):
            for model in options.models:  # interleaved, so drifts in machine load hit all
                run = fit_one(model, splits, counts[model]["width"], seed, budget)
                run["data_set"] = data_set
                print(
                    f"{data_set} {model:12} seed {seed}: test LL {run['test_ll']:8.3f} ± "
                    f"{run['test_ll_se']:.3f}, best epoch {run['best_epoch']} of "
                    f"{run['epochs']}, {run['thread_seconds']:.1f} s CPU",
                    flush=True,
                )
                runs.append(run)
        summary = summarize(runs, counts, data_set)
        summary["splits"] = splits.info
        summary["target_parameters"] = target
        summaries.append(summary)
        all_runs.extend(runs)
        texts.append(format_table(summary))
        print("\n" + texts[-1] + "\n", flush=True)
    budget_line = (
        f"budget: Adam lr {options.lr}, batch {options.batch_size}, at most "
        f"{options.max_epochs} epochs, early stopping after {options.patience} epochs without "
        f"a better validation loss (best parameters kept); seeds 0..{options.seeds - 1}; "
        "test LL in nats per row ± its standard error over test rows (seed-averaged)"
    )
    text = budget_line + "\n\n" + "\n\n".join(texts)
    print(text)
    write_results(
        options.output or RESULTS / "density_cpu.json",
        {
            "benchmark": "density",
            "options": {k: str(v) for k, v in vars(options).items()},
            "budget": budget,
            "clock": "time.thread_time of the fitting thread, torch.set_num_threads(1)",
            "summary": summaries,
            "runs": [{k: v for k, v in r.items() if k != "test_ll_rows"} for r in all_runs],
        },
        text,
    )


def write_results(output: Path, record: dict, text: str) -> None:
    """Writes ``record``, with the machine and library versions and ``text`` added, as JSON to
    ``output``, and ``text`` (the printed tables) to the ``.txt`` beside it."""
    import pyro

    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }
    try:
        import zuko

        machine["zuko"] = zuko.__version__
    except ImportError:
        pass
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({**record, "machine": machine, "table": text}, indent=2))
    output.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwrote {output} and {output.with_suffix('.txt').name}")


if __name__ == "__main__":
    main()
