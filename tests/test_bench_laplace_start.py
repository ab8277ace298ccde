"""The Laplace start benchmark (benchmarks/bench_laplace_start.py) on a tiny D: each mode gets
the curvature it names, in a subprocess, and the rows carry what the README's table shows."""

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench_laplace_start  # noqa: E402


def test_each_mode_gets_its_curvature(tmp_path, capsys):
    out = tmp_path / "laplace.json"
    assert (
        bench_laplace_start.main(
            [
                "--dims",
                "3",
                "--rows",
                "20",
                "--models",
                "logistic",
                "--modes",
                "full",
                "diagonal",
                "--time-cap-s",
                "120",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2
    expected = {"full": "laplace", "diagonal": "laplace-diagonal"}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["start"] == expected[row["mode"]]
        assert row["setup_s"] > 0 and row["peak_mib"] >= row["baseline_mib"] - 1
        assert row["affine"] == "full"
        assert row["lbfgs_evaluations"] >= 1
        assert set(row["candidate_elbos"]) >= {row["start"], "init_loc_fn"}
    assert "| logistic, diagonal |" in capsys.readouterr().out


def test_the_row_by_row_hessian_matches_torch():
    import torch

    matrix = torch.randn(5, 5, dtype=torch.float64)
    matrix = matrix @ matrix.T

    def func(z):
        return 0.5 * z @ matrix @ z + torch.sin(z).sum() + (z**4).sum()

    z = torch.randn(5, dtype=torch.float64)
    expected = torch.autograd.functional.hessian(func, z)
    assert torch.allclose(bench_laplace_start.hessian_by_rows(func, z), expected, atol=1e-12)
