"""VAE benchmark on binarized MNIST: every posterior at the same architecture, budget and seed.

Runs ``examples/vae_mnist.py`` once per run in its own process (``--jobs`` at a time, one torch
thread each unless ``--threads`` says otherwise), then prints a table and writes JSON with test
-ELBO, test NLL (importance sampling), images per second, and each run's NLL difference from the
diagonal Gaussian and from Pyro's ConditionalAffineAutoregressive posterior, paired over the same
test images (mean and standard error of the per-image difference).

    python benchmarks/bench_vae_mnist.py --epochs 20 --nll-images 1000 \
        --json benchmarks/results/vae_mnist_cpu.json
    python benchmarks/bench_vae_mnist.py --device cuda --arch conv --amp --jobs 1 \
        --json benchmarks/results/vae_mnist_gpu.json
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
    command = [sys.executable, str(EXAMPLE), "--runs", token, "--threads", str(threads),
               "--json", str(out), *passthrough]
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    args, passthrough = parser.parse_known_args(argv)
    tokens = [t for t in args.runs.split(",") if t]
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
    header = (f"{'run':16s} {'-ELBO':>8s} {'NLL':>8s} {'NLL-diag':>14s} {'NLL-pyroIAF':>14s}"
              f" {'img/s':>7s} {'x pyroIAF':>9s} {'flow params':>11s}")
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
    args.json.write_text(json.dumps({
        "config": reports[0]["config"] | {"runs": tokens, "jobs": args.jobs},
        "environment": reports[0]["environment"],
        "results": results,
        "table": table,
    }, indent=1))
    args.json.with_suffix(".txt").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
