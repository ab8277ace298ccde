"""Variational autoencoders on statically binarized MNIST with flow posteriors and flow priors.

Trains one VAE per run (same architecture, data order and seed), then reports the test -ELBO
(one posterior draw per test image, whole test set), the test NLL estimated by importance
sampling (``--nll-samples`` draws per image, on ``--nll-images`` test images evenly spaced
through the test set), and the training throughput in images per second. Runs are
``posterior[:prior]`` with posterior one of
``diag``, ``planar``, ``iaf``, ``naf`` or ``pyro-iaf`` (Pyro's ``ConditionalAffineAutoregressive``
at the size of ``iaf``) and prior ``normal`` or ``maf``.

    python examples/vae_mnist.py --runs diag,iaf --epochs 5 --nll-images 500
    python examples/vae_mnist.py --arch conv --device cuda --amp --epochs 100 --runs diag,iaf
    python examples/vae_mnist.py --devices 2 --runs iaf --epochs 5     # DDP, two CPU processes

With ``--devices N`` training goes through :class:`pyroflows.lightning.SVIModule` on PyTorch
Lightning (``strategy="ddp"`` when ``N > 1``, on GPUs with ``--device cuda``): each process takes
``batch-size / N`` images per step, so a step still sees ``batch-size`` images; Lightning starts the
other processes by running this script again, and rank 0 evaluates and reports.

The data file is verified against the ``.sha256`` beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions.transforms as pyro_transforms
import torch
from pyro.infer import SVI, Trace_ELBO

from pyroflows.amortized import (
    AmortizedFlowPosterior,
    Autocast,
    BernoulliVAE,
    MAFPrior,
    gated_conv_decoder,
    gated_conv_encoder,
    mlp,
)
from pyroflows.datasets import load_binarized_mnist
from pyroflows.infer import importance_log_likelihood
from pyroflows.transforms import Permute

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist.npz"
POSTERIORS = ("diag", "planar", "iaf", "naf", "pyro-iaf")
PRIORS = ("normal", "maf")


def parse_run(token: str, default_prior: str) -> tuple[str, str]:
    posterior, _, prior = token.partition(":")
    prior = prior or default_prior
    if posterior not in POSTERIORS:
        raise SystemExit(f"unknown posterior {posterior!r} in --runs; choose from {POSTERIORS}")
    if prior not in PRIORS:
        raise SystemExit(f"unknown prior {prior!r} in --runs; choose from {PRIORS}")
    return posterior, prior


def spread(data: torch.Tensor, count: int | None) -> torch.Tensor:
    """``count`` rows evenly spaced through ``data`` (all rows if None). The test split is
    ordered (its first thousand images are much denser than the second), so a prefix would not
    be representative."""
    if count is None or count >= len(data):
        return data
    return data[torch.linspace(0, len(data) - 1, count).round().long()]


def build_vae(args: argparse.Namespace, posterior_kind: str, prior_kind: str) -> BernoulliVAE:
    """Encoder and decoder first, from the same seed for every run, then the flows."""
    torch.manual_seed(args.seed)
    if args.arch == "mlp":
        feature_dim = args.hidden[-1]
        encoder = mlp([784, *args.hidden])
        decoder = mlp([args.latent_dim, *reversed(args.hidden), 784], last_activation=False)
    else:
        feature_dim = 256
        encoder = gated_conv_encoder(feature_dim)
        decoder = gated_conv_decoder(args.latent_dim)
    if args.amp:
        encoder, decoder = Autocast(encoder), Autocast(decoder)
    torch.manual_seed(args.seed + 1)
    D = args.latent_dim
    hidden_dims = [max(4 * D, 64)] * args.made_layers
    kwargs = {}
    if posterior_kind == "pyro-iaf":
        layers = []
        for index in range(args.num_transforms or 2):
            if index > 0:
                layers.append(Permute.reverse(D))
            layers.append(
                pyro_transforms.conditional_affine_autoregressive(D, feature_dim, hidden_dims)
            )
        flow = layers
    else:
        flow = posterior_kind
        if posterior_kind in ("iaf", "naf"):
            kwargs["hidden_dims"] = hidden_dims
        if posterior_kind != "diag":
            kwargs["num_transforms"] = args.num_transforms
    posterior = AmortizedFlowPosterior(encoder, feature_dim, D, flow=flow, **kwargs)
    prior = MAFPrior(D, hidden_dims=hidden_dims) if prior_kind == "maf" else None
    return BernoulliVAE(posterior, decoder, prior=prior).to(args.device)


@torch.no_grad()
def evaluate(vae: BernoulliVAE, data: torch.Tensor, args: argparse.Namespace) -> dict:
    vae.eval()
    elbo = torch.cat(
        [
            importance_log_likelihood(vae.model, vae.guide, batch, num_samples=1).elbo
            for batch in data.split(args.eval_batch_size)
        ]
    )
    nll_data = spread(data, args.nll_images)
    per_image = []
    per_image_elbo = []
    for batch in nll_data.split(args.nll_batch_size):
        estimate = importance_log_likelihood(
            vae.model, vae.guide, batch, num_samples=args.nll_samples, chunk_size=args.nll_chunk
        )
        per_image.append(estimate.log_likelihood)
        per_image_elbo.append(estimate.elbo)
    log_likelihood = torch.cat(per_image)
    vae.train()
    return {
        "test_neg_elbo": float(-elbo.mean()),
        "test_neg_elbo_se": float(elbo.std() / math.sqrt(len(elbo))),
        "test_images_elbo": len(elbo),
        "test_nll": float(-log_likelihood.mean()),
        "test_nll_se": float(log_likelihood.std() / math.sqrt(len(log_likelihood))),
        "test_neg_elbo_nll_subset": float(-torch.cat(per_image_elbo).mean()),
        "nll_samples": args.nll_samples,
        "nll_images": len(log_likelihood),
        "per_image_log_likelihood": log_likelihood.cpu().tolist(),
    }


def train_one(args, data, posterior_kind: str, prior_kind: str) -> dict | None:
    """Trains one VAE and evaluates it; None on the Lightning processes other than rank 0."""
    pyro.clear_param_store()
    vae = build_vae(args, posterior_kind, prior_kind)
    if args.devices is not None:
        trained = train_with_lightning(args, data, vae, f"{posterior_kind}:{prior_kind}")
        if trained is None:
            return None
        return finish(args, data, vae, posterior_kind, prior_kind, *trained)
    optimizer_class = pyro.optim.Adamax if args.optimizer == "adamax" else pyro.optim.Adam
    optimizer = optimizer_class({"lr": args.lr})
    svi = SVI(vae.model, vae.guide, optimizer, Trace_ELBO())
    train = data["train"][: args.train_size].to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    warmup_steps = args.warmup_epochs * steps_per_epoch
    history, train_time, step = [], 0.0, 0
    name = f"{posterior_kind}:{prior_kind}"
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), generator=generator).to(args.device)
        total, start = 0.0, time.perf_counter()
        for index in order.split(args.batch_size):
            kl_scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
            loss = svi.step(train[index], kl_scale)
            if not math.isfinite(loss):
                raise FloatingPointError(f"{name}: loss {loss} at epoch {epoch + 1}, step {step}")
            total += loss
            step += 1
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        train_time += time.perf_counter() - start
        history.append(total / len(train))
        print(
            f"  {name:14s} epoch {epoch + 1:3d}  train loss {history[-1]:8.3f}  "
            f"({train_time:6.1f} s)",
            flush=True,
        )
    return finish(args, data, vae, posterior_kind, prior_kind, history, train_time, len(train))


def finish(args, data, vae, posterior_kind, prior_kind, history, train_time, train_images) -> dict:
    """The result record of a trained VAE, with its test evaluation."""
    test = spread(data["test"], args.test_size).to(args.device)
    vae.to(args.device)  # Lightning hands the module back on the CPU
    result = {
        "run": f"{posterior_kind}:{prior_kind}",
        "posterior": posterior_kind,
        "prior": prior_kind,
        "parameters": sum(p.numel() for p in vae.parameters()),
        "flow_parameters": sum(p.numel() for p in vae.posterior.transforms.parameters()),
        "epochs": args.epochs,
        "train_images": train_images,
        "train_seconds": train_time,
        "images_per_second": args.epochs * train_images / train_time,
        "devices": args.devices,
        "train_loss_history": history,
    }
    start = time.perf_counter()
    result.update(evaluate(vae, test, args))
    result["eval_seconds"] = time.perf_counter() - start
    return result


def train_with_lightning(args, data, vae: BernoulliVAE, name: str):
    """Trains through SVIModule on ``args.devices`` processes; on rank 0 returns the per-epoch
    train loss per image, the training seconds and the number of training images."""
    import logging

    import lightning
    from torch.utils.data import DataLoader, TensorDataset

    from pyroflows.lightning import SVIModule

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    train = data["train"][: args.train_size]
    per_device = args.batch_size // args.devices
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    warmup_steps = args.warmup_epochs * steps_per_epoch

    def kl_warmup(step: int) -> dict:
        return {"kl_scale": min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0}

    optimizer_class = torch.optim.Adamax if args.optimizer == "adamax" else torch.optim.Adam
    module = SVIModule(
        vae.model,
        vae.guide,
        step_kwargs=kl_warmup,
        optimizer=lambda params: optimizer_class(params, lr=args.lr),
    )
    history: list[float] = []

    class EpochLog(lightning.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            steps = pl_module.history[len(history) * steps_per_epoch :]
            history.append(sum(steps) / max(len(steps), 1) / per_device)
            if trainer.is_global_zero:
                print(
                    f"  {name:14s} epoch {len(history):3d}  train loss {history[-1]:8.3f}  "
                    f"({time.perf_counter() - pl_module._train_start:6.1f} s)",
                    flush=True,
                )

    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        TensorDataset(train), batch_size=per_device, shuffle=True, generator=generator
    )
    trainer = lightning.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochLog()],
    )
    trainer.fit(module, loader)
    if not trainer.is_global_zero:
        return None
    return history, module.wall_time, len(train)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="binarized_mnist.npz (a .sha256 file must lie beside it)",
    )
    parser.add_argument(
        "--runs", default="diag,planar,iaf,naf", help="comma-separated posterior[:prior] runs"
    )
    parser.add_argument(
        "--prior", choices=PRIORS, default="normal", help="prior for runs that name none"
    )
    parser.add_argument("--arch", choices=("mlp", "conv"), default="mlp")
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[300, 300],
        help="MLP widths (encoder; reversed for the decoder)",
    )
    parser.add_argument("--latent-dim", type=int, default=None, help="default 32 mlp, 64 conv")
    parser.add_argument(
        "--num-transforms",
        type=int,
        default=None,
        help="flow layers (default planar 8, iaf 2, naf 2)",
    )
    parser.add_argument("--made-layers", type=int, default=1, help="hidden layers per MADE")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--train-size", type=int, default=None, help="use the first N images")
    parser.add_argument(
        "--test-size", type=int, default=None, help="evaluate on N test images, evenly spaced"
    )
    parser.add_argument(
        "--optimizer",
        choices=("adam", "adamax"),
        default=None,
        help="default adam (mlp), adamax (conv)",
    )
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 adam, 5e-4 adamax")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=2,
        help="KL warm-up: the KL weight rises linearly from 0 to 1 (0: none)",
    )
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--nll-images", type=int, default=10000)
    parser.add_argument("--nll-batch-size", type=int, default=100)
    parser.add_argument(
        "--nll-chunk",
        type=int,
        default=500,
        help="importance samples drawn at once per image batch",
    )
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="train through pyroflows.lightning.SVIModule on N processes (DDP)",
    )
    parser.add_argument(
        "--amp", action="store_true", help="bfloat16 autocast for the encoder and decoder networks"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.latent_dim is None:
        args.latent_dim = 32 if args.arch == "mlp" else 64
    if args.optimizer is None:
        args.optimizer = "adam" if args.arch == "mlp" else "adamax"
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else 5e-4
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    if args.devices is not None:
        if args.devices < 1 or args.batch_size % args.devices:
            parser.error(
                f"--batch-size {args.batch_size} must be a multiple of --devices "
                f"{args.devices} (each process takes batch-size / devices images)"
            )
        if args.device.startswith("cuda") and args.devices > torch.cuda.device_count():
            parser.error(
                f"--devices {args.devices} asked for, but torch sees "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [parse_run(token, args.prior) for token in args.runs.split(",") if token]
    data = load_binarized_mnist(args.data)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = []
    for posterior_kind, prior_kind in runs:
        result = train_one(args, data, posterior_kind, prior_kind)
        if result is None:  # a Lightning process other than rank 0: rank 0 reports
            continue
        results.append(result)
        r = results[-1]
        print(
            f"{r['run']:14s} test -ELBO {r['test_neg_elbo']:7.2f}  NLL {r['test_nll']:7.2f} "
            f"(K={r['nll_samples']}, {r['nll_images']} images)  "
            f"{r['images_per_second']:7.0f} img/s",
            flush=True,
        )
    if not results:
        return 0
    print(f"\n{'run':14s} {'-ELBO':>8s} {'NLL':>8s} {'img/s':>8s} {'params':>9s}")
    for r in results:
        print(
            f"{r['run']:14s} {r['test_neg_elbo']:8.2f} {r['test_nll']:8.2f} "
            f"{r['images_per_second']:8.0f} {r['parameters']:9d}"
        )
    if args.json:
        environment = {
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
        }
        if args.device.startswith("cuda"):
            environment["gpu"] = torch.cuda.get_device_name()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"config": config, "environment": environment, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
