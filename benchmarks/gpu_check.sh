#!/usr/bin/env bash
# GPU check: the CUDA tests and the GPU benchmarks in one call, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh             # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: the same commands on the CPU with tiny
#                                            # budgets, results in a temporary folder
#
# Needs pyroflows installed with its dev extra and a CUDA build of torch
# (pip install -e ".[dev]"), and ../shared/data/binarized_mnist.npz for the VAE (or
# MNIST=/path/to/binarized_mnist.npz). PYTHON picks the interpreter (default python3).
#
# Steps, each under its own time limit (seconds, in brackets; 450 in all):
#   1. tests [100]: pytest -k cuda (guides, VAE, SVIModule on CUDA)  -> tests_cuda.json
#   2. VAE [130]: examples/vae_mnist.py --arch conv --amp, diag and iaf, one epoch on 50000 images,
#      NLL with K = 1000 on 500 test images                      -> vae_mnist_conv_amp_cuda.json
#   3. scaling [150]: bench_scaling.py --device cuda at D = 1000, 10000, 30000, every guide
#                                                                -> scaling_cuda.json
#   4. SVIModule [70]: bench_scaling.py data-parallel part with accelerator gpu, 1..all GPUs
#                                                                -> data_parallel_cuda.json
# and gpu_check_cuda.json with each step's status and seconds. A step that runs out of time
# keeps what it wrote (bench_scaling writes a row at a time). Exit status: the number of failed
# steps (0: all passed); 2 at once when torch sees no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MNIST=${MNIST:-../shared/data/binarized_mnist.npz}
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
elif [[ $# -gt 0 ]]; then
    echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2
    exit 64
fi

if [[ $DRY_RUN == 0 ]]; then
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False, or" \
             "torch is missing for $PYTHON): nothing to measure. Run it on a machine with a" \
             "GPU and a CUDA build of torch, or pass --dry-run to check the commands on the CPU." >&2
        exit 2
    fi
    DEVICE=cuda
    OUT=benchmarks/results
    # step budgets; the sizes are those described above
    T_TESTS=100 T_VAE=130 T_SCALING=150 T_DDP=70
    VAE_SIZE=(--train-size 50000 --epochs 1 --test-size 2000 --nll-images 500 --nll-samples 1000)
    SCALING_DIMS=(1000 10000 30000)
    SCALING_EXTRA=(--time-cap-s 40 --block-s 0.5)
    DDP_SIZE=(--ddp-rows 262144 --ddp-batch 16384 --ddp-steps 100)
else
    DEVICE=cpu
    OUT=$(mktemp -d)
    T_TESTS=100 T_VAE=120 T_SCALING=120 T_DDP=120
    VAE_SIZE=(--train-size 200 --epochs 1 --test-size 100 --nll-images 10 --nll-samples 20
              --latent-dim 8 --batch-size 50)
    SCALING_DIMS=(10)
    SCALING_EXTRA=(--guides iaf AutoNormal --time-cap-s 60 --block-s 0.2 --blocks 1)
    DDP_SIZE=(--ddp-rows 4096 --ddp-batch 256 --ddp-steps 5 --ddp-processes 1)
    echo "gpu_check --dry-run: the CPU, tiny budgets, results in $OUT"
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's pyroflows

STATUS=()
FAILED=0
run_step() {  # name, limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    local seconds=$((SECONDS - start))
    local verdict=passed
    if [[ $rc == 124 || $rc == 137 ]]; then
        verdict="ran out of time"
    elif [[ $rc != 0 ]]; then
        verdict="failed (exit $rc)"
    fi
    [[ $verdict == passed ]] || FAILED=$((FAILED + 1))
    echo "=== $name: $verdict in ${seconds} s"
    STATUS+=("$name|$verdict|$seconds|$rc")
}

run_step tests "$T_TESTS" "$PYTHON" -m pytest -q -k cuda -p no:cacheprovider \
    --junitxml="$OUT/tests_cuda.xml"
"$PYTHON" - "$OUT/tests_cuda.xml" "$OUT/tests_cuda.json" <<'EOF'
import json, sys, xml.etree.ElementTree as tree
from pathlib import Path
source, target = map(Path, sys.argv[1:])
if source.is_file():
    cases = []
    for case in tree.parse(source).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                outcome += f": {(found.get('message') or '')[:300]}"
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}",
                      "seconds": float(case.get("time", 0)), "outcome": outcome})
    target.write_text(json.dumps({"tests": cases}, indent=1))
    source.unlink()
EOF

run_step vae "$T_VAE" "$PYTHON" examples/vae_mnist.py --data "$MNIST" --arch conv \
    --device "$DEVICE" --amp --runs diag,iaf "${VAE_SIZE[@]}" \
    --json "$OUT/vae_mnist_conv_amp_cuda.json"

run_step scaling "$T_SCALING" "$PYTHON" benchmarks/bench_scaling.py --device "$DEVICE" \
    --no-ddp --dims "${SCALING_DIMS[@]}" "${SCALING_EXTRA[@]}" --json "$OUT/scaling_cuda.json"

run_step svi_module "$T_DDP" "$PYTHON" benchmarks/bench_scaling.py --device "$DEVICE" \
    --no-scaling "${DDP_SIZE[@]}" --json "$OUT/data_parallel_cuda.json"

"$PYTHON" - "$OUT/gpu_check_cuda.json" "$DRY_RUN" "${STATUS[@]}" <<'EOF'
import json, subprocess, sys
target, dry_run, *steps = sys.argv[1:]
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    gpu = None
rows = []
for step in steps:
    name, verdict, seconds, rc = step.split("|")
    rows.append({"step": name, "verdict": verdict, "seconds": int(seconds), "exit": int(rc)})
with open(target, "w") as file:
    json.dump({"dry_run": dry_run == "1", "gpu": gpu, "steps": rows}, file, indent=1)
EOF

echo
echo "=== gpu_check: $FAILED step(s) failed; results in $OUT"
for step in "${STATUS[@]}"; do
    IFS='|' read -r name verdict seconds _ <<<"$step"
    printf '    %-12s %-24s %4d s\n' "$name" "$verdict" "$seconds"
done
exit "$FAILED"
