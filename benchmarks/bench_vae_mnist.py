"""VAE benchmark on binarized MNIST: every posterior at the same architecture, budget and seed.

Runs ``examples/vae_mnist.py`` once per run in its own process (``--jobs`` at a time, one torch
thread each unless ``--threads`` says otherwise), then prints a table and writes JSON with test
-ELBO, test NLL (importance sampling), images per second, and each run's NLL difference from the
diagonal Gaussian and from Pyro's ConditionalAffineAutoregressive posterior, paired over the same
test images (mean and standard error of the per-image difference).

    python benchmarks/bench_vae_mnist.py --epochs 15 --nll-images 1000 \
        --json benchmarks/results/vae_mnist_cpu.json          # about 30 min on 2 cores
    python benchmarks/bench_vae_mnist.py --device cuda --arch conv --amp --jobs 1 \
        --json benchmarks/results/vae_mnist_gpu.json
    python benchmarks/bench_vae_mnist.py --throughput --rounds 3 \
        --json benchmarks/results/vae_mnist_cpu_throughput.json  # about 4 min
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vae_mnist.py"
# pairs whose throughput is compared run next to each other in the queue
DEFAULT_RUNS = "iaf,pyro-iaf,diag,planar,naf,iaf:maf"


def run_one(token: str, passthrough: list[str], threads: int, workdir: Path) -> dict:
    out = workdir / (token.replace(":", "_") + ".json")
    command = [
        sys.executable,
        str(EXAMPLE),
        "--runs",
        token,
        "--threads",
        str(threads),
        "--json",
        str(out),
        *passthrough,
    ]
    log = workdir / (token.replace(":", "_") + ".log")
    with open(log, "w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise RuntimeError(f"run {token} failed; see {log}:\n{log.read_text()[-2000:]}")
    report = json.loads(out.read_text())
    return report


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-image NLL difference a - b (NLL = -log p)."""
    diffs = [-(x - y) for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(1, len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def throughput(tokens, passthrough, args) -> int:
    """Training images per second only: one run at a time, in alternating rounds, so that every
    posterior sees the same machine load; reports the median over rounds."""
    rates: dict[str, list[float]] = {t: [] for t in tokens}
    short = [
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--train-size",
        str(args.train_images),
        "--test-size",
        "10",
        "--nll-images",
        "2",
        "--nll-samples",
        "2",
    ]
    environment = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for token in tokens:
                report = run_one(token, passthrough + short, args.threads, Path(tmp))
                rates[token].append(report["results"][0]["images_per_second"])
                environment = report["environment"]
    median = {t: sorted(r)[len(r) // 2] for t, r in rates.items()}
    reference = median.get("pyro-iaf") or median.get("pyro-iaf:normal")
    lines = [
        f"training images/s, median of {args.rounds} alternating rounds of one epoch on "
        f"{args.train_images} images, one run at a time; {environment}",
        f"{'run':16s} {'img/s':>8s} {'x pyro-iaf':>10s}  all rounds",
    ]
    for t in tokens:
        ratio = f"{median[t] / reference:.2f}" if reference else ""
        lines.append(
            f"{t:16s} {median[t]:8.0f} {ratio:>10s}  " + " ".join(f"{r:.0f}" for r in rates[t])
        )
    table = "\n".join(lines)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "config": {
                    "runs": tokens,
                    "rounds": args.rounds,
                    "train_images": args.train_images,
                    "threads": args.threads,
                    "passthrough": passthrough,
                },
                "environment": environment,
                "images_per_second": rates,
                "median": median,
                "table": table,
            },
            indent=1,
        )
    )
    args.json.with_suffix(".txt").write_text(table + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="measure training images/s only (alternating one-epoch rounds)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=50000)
    args, passthrough = parser.parse_known_args(argv)
    tokens = [t for t in args.runs.split(",") if t]
    if args.throughput:
        return throughput(tokens, passthrough, args)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, t, passthrough, args.threads, Path(tmp)) for t in tokens]
        reports = [f.result() for f in futures]
    results = [r["results"][0] for r in reports]
    by_name = {r["run"]: r for r in results}
    baselines = [name for name in ("diag:normal", "pyro-iaf:normal") if name in by_name]
    for r in results:
        for base in baselines:
            mean, se = paired_difference(
                r["per_image_log_likelihood"], by_name[base]["per_image_log_likelihood"]
            )
            r[f"nll_minus_{base.split(':')[0]}"] = {"mean": mean, "se": se}
            r[f"images_per_second_ratio_to_{base.split(':')[0]}"] = (
                r["images_per_second"] / by_name[base]["images_per_second"]
            )
    lines = []
    first = results[0]
    lines.append(
        f"arch {reports[0]['config']['arch']}, {first['epochs']} epochs x {first['train_images']} "
        f"images, latent {reports[0]['config']['latent_dim']}, seed {reports[0]['config']['seed']};"
        f" -ELBO on {first['test_images_elbo']} test images (1 draw each); NLL with "
        f"K={first['nll_samples']} on {first['nll_images']} test images evenly spaced; "
        f"{reports[0]['environment']}"
    )
    header = (
        f"{'run':16s} {'-ELBO':>8s} {'NLL':>8s} {'NLL-diag':>14s} {'NLL-pyroIAF':>14s}"
        f" {'img/s':>7s} {'x pyroIAF':>9s} {'flow params':>11s}"
    )
    lines += [header, "-" * len(header)]
    for r in results:
        cells = []
        for base in ("diag", "pyro-iaf"):
            d = r.get(f"nll_minus_{base}")
            cells.append(f"{d['mean']:+7.2f}+-{d['se']:4.2f}" if d else f"{'':14s}")
        ratio = r.get("images_per_second_ratio_to_pyro-iaf")
        lines.append(
            f"{r['run']:16s} {r['test_neg_elbo']:8.2f} {r['test_nll']:8.2f} {cells[0]:>14s} "
            f"{cells[1]:>14s} {r['images_per_second']:7.0f} "
            f"{(f'{ratio:.2f}' if ratio else ''):>9s} {r['flow_parameters']:11d}"
        )
    table = "\n".join(lines)
    print(table)
    for r in results:
        r.pop("per_image_log_likelihood")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "config": reports[0]["config"] | {"runs": tokens, "jobs": args.jobs},
                "environment": reports[0]["environment"],
                "results": results,
                "table": table,
            },
            indent=1,
        )
    )
    args.json.with_suffix(".txt").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
