"""``benchmarks/gpu_check.sh`` refuses at once, and says why, where torch sees no CUDA device."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script runs")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_fails_fast_without_cuda():
    completed = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "torch sees no CUDA device" in completed.stderr and "--dry-run" in completed.stderr
    assert completed.stdout == ""  # nothing ran
