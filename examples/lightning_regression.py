"""Data-parallel SVI with PyTorch Lightning: Bayesian linear regression on N rows, in batches.

The model declares all ``N`` rows in its plate and takes each batch as the plate's subsample, so
every process's loss estimates the full-data free energy; ``Trainer(strategy="ddp", devices=P)``
runs ``P`` processes, each on its own batches, and averages their gradients. The posterior is
Gaussian and known exactly, so the fitted guide's mean is compared with it.

    python examples/lightning_regression.py                          # one process
    python examples/lightning_regression.py --devices 2              # two CPU processes (gloo)
    python examples/lightning_regression.py --accelerator gpu --devices 4 --size 1000000

With ``strategy="ddp"`` Lightning starts the other processes by running this script again, so
everything up to ``trainer.fit`` runs once per process, and the report is printed by rank 0.
``--out DIR`` writes each process's guide parameters (``rank<r>.pt``) and rank 0's summary
(``summary.json``: posterior mean, the exact one, free-energy history, throughput).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import lightning
import pyro
import pyro.distributions as dist
import torch
from torch.utils.data import DataLoader, TensorDataset

import pyroflows
from pyroflows.lightning import SVIModule


def make_data(size: int, features: int, noise: float, seed: int):
    """``X ~ N(0, I)``, ``y = X w* + noise * ε`` with fixed ``w*`` from the seed."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(size, features, generator=generator)
    true_w = torch.randn(features, generator=generator)
    y = X @ true_w + noise * torch.randn(size, generator=generator)
    return X, y


def make_model(size: int, features: int, noise: float):
    """``w ~ N(0, I)``, ``y_n ~ N(x_n · w, noise²)`` for all ``size`` rows; a batch of rows is the
    plate's subsample, so its log likelihood is weighed by ``size / len(batch)``."""

    def model(X: torch.Tensor, y: torch.Tensor) -> None:
        zeros = X.new_zeros(features)
        w = pyro.sample("w", dist.Normal(zeros, 1.0).to_event(1))
        with pyro.plate("data", size, subsample_size=len(y)):
            pyro.sample("y", dist.Normal((X * w).sum(-1), noise), obs=y)

    return model


def exact_posterior(X: torch.Tensor, y: torch.Tensor, noise: float):
    """Mean and standard deviations of the conjugate Gaussian posterior of ``w``."""
    X, y = X.double(), y.double()
    precision = torch.eye(X.shape[1], dtype=X.dtype) + X.T @ X / noise**2
    covariance = torch.linalg.inv(precision)
    mean = covariance @ X.T @ y / noise**2
    return mean, covariance.diagonal().sqrt()


def make_guide(name: str, model):
    if name == "AutoNormal":
        return pyro.infer.autoguide.AutoNormal(model)
    return pyroflows.make_guide(name, model)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="data rows N")
    parser.add_argument("--features", type=int, default=3)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128, help="rows per process and step")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps")
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--guide", default="iaf", help="a registered name, or AutoNormal")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default=None, help="default: ddp when --devices > 1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report-samples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="write parameters and summary here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    X, y = make_data(args.size, args.features, args.noise, args.data_seed)
    model = make_model(args.size, args.features, args.noise)
    lightning.seed_everything(args.seed, verbose=False)
    pyro.clear_param_store()
    guide = make_guide(args.guide, model)
    module = SVIModule(model, guide, lr=args.lr)
    loader = DataLoader(TensorDataset(X, y), batch_size=args.batch_size, shuffle=True)
    trainer = lightning.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy or ("ddp" if args.devices > 1 else "auto"),
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    fit_seconds = time.perf_counter() - start
    rank = trainer.global_rank
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        torch.save(state, args.out / f"rank{rank}.pt")
    if not trainer.is_global_zero:
        return 0
    pyro.set_rng_seed(args.seed)
    with torch.no_grad(), pyro.plate("draws", 4000, dim=-2):  # the model's plate is dim -1
        draws = guide(X[:2], y[:2])["w"].reshape(4000, -1)
    exact_mean, exact_sd = exact_posterior(X, y, args.noise)
    result = module.fit_result(X, y, report_samples=args.report_samples)
    print(result)
    steps = len(module.history)
    summary = {
        "processes": trainer.world_size,
        "accelerator": args.accelerator,
        "guide": args.guide,
        "steps": steps,
        "batch_size_per_process": args.batch_size,
        "train_seconds": module.wall_time,
        "fit_seconds": fit_seconds,
        "rows_per_second": steps * args.batch_size * trainer.world_size / module.wall_time,
        "ms_per_step": 1000 * module.wall_time / steps,
        "posterior_mean": draws.mean(0).tolist(),
        "posterior_sd": draws.std(0).tolist(),
        "exact_mean": exact_mean.tolist(),
        "exact_sd": exact_sd.tolist(),
        "free_energy_history": module.history,
        "report": result.report.as_dict() if result.report else None,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
    }
    print(
        f"{trainer.world_size} process(es): {steps} steps, "
        f"{summary['rows_per_second']:.0f} rows/s; posterior mean "
        f"{[round(v, 4) for v in summary['posterior_mean']]}, exact "
        f"{[round(v, 4) for v in summary['exact_mean']]}"
    )
    if args.out is not None:
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
