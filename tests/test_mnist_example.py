"""The binarized MNIST loader's checks, and the VAE example end to end on a small budget.

Tests that need ``../shared/data/binarized_mnist.npz`` skip when it is absent."""

import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyroflows.datasets import DataFileError, load_binarized_mnist

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"no MNIST data file at {DATA}")


def _write(tmp_path, arrays, checksum=None):
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    digest = checksum or hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "mnist.npz.sha256").write_text(f"{digest}  mnist.npz\n")
    return path


def _full_size(**overrides):
    arrays = {
        name: np.zeros(shape, np.uint8)
        for name, shape in {
            "train": (50000, 784),
            "valid": (10000, 784),
            "test": (10000, 784),
        }.items()
    }
    arrays.update(overrides)
    return arrays


def test_wrong_checksum_is_named(tmp_path):
    path = _write(tmp_path, {"train": np.zeros((2, 784), np.uint8)}, checksum="ab" * 32)
    with pytest.raises(DataFileError, match="checksum mismatch.*expected SHA-256 abab"):
        load_binarized_mnist(path)


def test_missing_file_and_missing_checksum_are_named(tmp_path):
    with pytest.raises(DataFileError, match="no data file"):
        load_binarized_mnist(tmp_path / "absent.npz")
    path = tmp_path / "plain.npz"
    np.savez(path, train=np.zeros(3))
    with pytest.raises(DataFileError, match="no checksum file"):
        load_binarized_mnist(path)


def test_wrong_shape_is_named(tmp_path):
    path = _write(tmp_path, _full_size(test=np.zeros((10000, 28, 28), np.uint8)))
    with pytest.raises(DataFileError, match=r"'test' has shape \(10000, 28, 28\)"):
        load_binarized_mnist(path)


def test_non_binary_pixels_are_named(tmp_path):
    train = np.zeros((50000, 784), np.uint8)
    train[3, 5] = 255
    path = _write(tmp_path, _full_size(train=train))
    with pytest.raises(DataFileError, match="'train' holds values other than 0 and 1"):
        load_binarized_mnist(path)


def test_checksum_can_be_given_as_a_digest(tmp_path):
    path = _write(tmp_path, _full_size())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "mnist.npz.sha256").unlink()
    assert load_binarized_mnist(path, checksum=digest)["valid"].shape == (10000, 784)


@needs_data
def test_real_file_loads_with_the_documented_shapes_and_mean():
    data = load_binarized_mnist(DATA)
    assert {k: tuple(v.shape) for k, v in data.items()} == {
        "train": (50000, 784),
        "valid": (10000, 784),
        "test": (10000, 784),
    }
    assert abs(float(data["train"].mean()) - 0.1306) < 1e-4


def _example():
    spec = importlib.util.spec_from_file_location("vae_mnist", ROOT / "examples" / "vae_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_data
@pytest.mark.parametrize("arch,runs", [("mlp", "diag,iaf:maf,pyro-iaf"), ("conv", "planar")])
def test_vae_example_end_to_end(tmp_path, arch, runs):
    out = tmp_path / "vae.json"
    argv = [
        "--data",
        str(DATA),
        "--arch",
        arch,
        "--runs",
        runs,
        "--epochs",
        "1",
        "--train-size",
        "200",
        "--test-size",
        "100",
        "--nll-images",
        "10",
        "--nll-samples",
        "40",
        "--nll-chunk",
        "20",
        "--hidden",
        "64",
        "--json",
        str(out),
    ]
    if arch == "conv":
        argv += ["--latent-dim", "8", "--batch-size", "50"]
    assert _example().main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["run"] for r in report["results"]] == [
        token if ":" in token else token + ":normal" for token in runs.split(",")
    ]
    for r in report["results"]:
        assert r["nll_samples"] == 40 and r["nll_images"] == 10
        assert r["test_images_elbo"] == 100
        assert math.isfinite(r["test_nll"]) and math.isfinite(r["test_neg_elbo"])
        assert r["images_per_second"] > 0
        # the importance-weighted estimate is never worse than the ELBO on the same images
        assert r["test_nll"] <= r["test_neg_elbo_nll_subset"] + 1e-6


def test_example_refuses_a_bad_data_file(tmp_path):
    path = _write(tmp_path, {"train": np.zeros((2, 784), np.uint8)}, checksum="00" * 32)
    with pytest.raises(DataFileError, match="checksum mismatch"):
        _example().main(["--data", str(path), "--runs", "diag"])


_SMALL_RUN = [
    "--runs",
    "diag,iaf:maf",
    "--epochs",
    "2",
    "--train-size",
    "400",
    "--test-size",
    "100",
    "--nll-images",
    "10",
    "--nll-samples",
    "40",
    "--nll-chunk",
    "20",
    "--hidden",
    "64",
    "--batch-size",
    "100",
]


@needs_data
@pytest.mark.slow
def test_vae_example_with_devices_trains_like_the_plain_loop(tmp_path):
    """``--devices 1`` trains through SVIModule: same initialization, data order (the same seeded
    permutation) and optimizer as the plain SVI loop; only the posterior draws differ, since
    SVIModule's set-up runs the model and guide first. Measured: the per-epoch train loss per
    image differed by at most 1.5 nats and the test -ELBO by 2.5; a module that stopped updating
    would stay 13 nats higher after the second epoch."""
    pytest.importorskip("lightning", reason='--devices needs pip install "pyroflows[lightning]"')
    reports = {}
    for label, extra in [("plain", []), ("lightning", ["--devices", "1"])]:
        out = tmp_path / f"{label}.json"
        assert _example().main(["--data", str(DATA), *_SMALL_RUN, *extra, "--json", str(out)]) == 0
        reports[label] = json.loads(out.read_text())["results"]
    for plain, module in zip(reports["plain"], reports["lightning"], strict=True):
        assert plain["run"] == module["run"] and module["devices"] == 1
        assert len(module["train_loss_history"]) == 2
        for a, b in zip(plain["train_loss_history"], module["train_loss_history"], strict=True):
            assert abs(a - b) < 4.0
        assert abs(plain["test_neg_elbo"] - module["test_neg_elbo"]) < 6.0
        assert module["test_nll"] <= module["test_neg_elbo_nll_subset"] + 1e-6


@needs_data
@pytest.mark.slow
def test_vae_example_on_two_ddp_processes(tmp_path):
    pytest.importorskip("lightning", reason='--devices needs pip install "pyroflows[lightning]"')
    out = tmp_path / "vae.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "vae_mnist.py"),
            "--data",
            str(DATA),
            *_SMALL_RUN,
            "--devices",
            "2",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())  # written by rank 0 only
    assert [r["run"] for r in report["results"]] == ["diag:normal", "iaf:maf"]
    assert all(r["devices"] == 2 and math.isfinite(r["test_nll"]) for r in report["results"])
    # rank 0 printed each run's line once
    assert completed.stdout.count("iaf:maf        test -ELBO") == 1
