"""Benchmark: probability density distillation (van den Oord et al. 2018) of a MAF teacher into
one-pass samplers, on the seed's two-dimensional example and on the 64-dimensional digits.

For each data set a 5-layer MAF teacher is fitted with ``pyroflows.fit_density`` (seed 0), then
``pyroflows.distill`` trains students by reverse KL against its ``log_prob``: an IAF (5 layers)
and a neural spline flow in the IAF direction (5 layers), each with ``--seeds`` seeds. It reports

* KL(student ‖ teacher) = E_student[log student − log teacher] from 20000 fresh student draws,
  with its Monte Carlo standard error (on the 2-D example also KL(student ‖ exact density));
* the time to draw 1000 samples from the teacher (D sequential passes per layer) and from the
  student (one pass per layer), the best of 5 runs, as CPU time of the sampling thread
  (``time.thread_time``, one torch thread), and their ratio.

Usage::

    python benchmarks/bench_distill.py            # both data sets, 3 student seeds
    python benchmarks/bench_distill.py --quick    # a smoke run
    # the committed results (a digits step costs about 0.035 s of CPU (IAF), 0.13 s (NSF)):
    python benchmarks/bench_distill.py --data-sets banana --seeds 3 --steps 3000 \
        --output benchmarks/results/distill_banana_cpu.json
    python benchmarks/bench_distill.py --data-sets digits --seeds 2 --steps 2000 \
        --output benchmarks/results/distill_digits_cpu.json

It writes ``benchmarks/results/distill_cpu.json`` (or ``--output``) and a ``.txt`` of its
table beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_density import write_results

RESULTS = Path(__file__).resolve().parent / "results"

#: per data set: the teacher's and the students' conditioner widths (two hidden layers), and
#: the teacher's fitting budget; the digits' teacher is bench_density.py's MAF
SETTINGS = {
    "banana": {"hidden": 64, "train_rows": 10000},
    "digits": {"hidden": 304},
}


def teacher_for(data_set: str, budget: dict):
    import pyroflows
    from pyroflows.datasets import banana_log_prob, banana_sample, load_density_data

    hidden = [SETTINGS[data_set]["hidden"]] * 2
    start = time.thread_time()
    if data_set == "banana":
        generator = torch.Generator().manual_seed(0)
        train = banana_sample(SETTINGS["banana"]["train_rows"], generator)
        test = banana_sample(10000, generator)
        teacher = pyroflows.fit_density(
            "maf", train, num_transforms=5, hidden_dims=hidden, progress=False, **budget
        )
        exact = float(banana_log_prob(test).mean())
    else:
        splits = load_density_data("digits", seed=0)
        test = splits.test
        teacher = pyroflows.fit_density(
            "maf",
            splits.train,
            validation=splits.validation,
            num_transforms=5,
            hidden_dims=hidden,
            progress=False,
            **budget,
        )
        exact = None
    with torch.no_grad():
        test_ll = float(teacher.log_prob(test).mean())
    return teacher, {
        "test_ll": test_ll,
        "exact_test_ll": exact,
        "best_epoch": teacher.history.best_epoch,
        "fit_thread_seconds": time.thread_time() - start,
        "parameters": sum(p.numel() for p in teacher.model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-sets", nargs="+", default=["banana", "digits"])
    parser.add_argument("--students", nargs="+", default=["iaf", "nsf"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-draws", type=int, default=20000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    options = parser.parse_args()
    budget = {"batch_size": 128, "lr": 1e-3, "max_epochs": 1000, "patience": 30}
    if options.quick:
        options.seeds, options.steps, options.kl_draws = 1, 20, 1000
        budget.update(max_epochs=2, patience=1)
    torch.set_num_threads(1)

    import pyroflows
    from pyroflows.datasets import banana_log_prob

    results = []
    lines = []
    for data_set in options.data_sets:
        teacher, teacher_info = teacher_for(data_set, budget)
        print(
            f"{data_set}: teacher MAF, test LL {teacher_info['test_ll']:.3f}"
            + (
                f" (exact {teacher_info['exact_test_ll']:.3f})"
                if teacher_info["exact_test_ll"] is not None
                else ""
            )
            + f", best epoch {teacher_info['best_epoch']}",
            flush=True,
        )
        hidden = [SETTINGS[data_set]["hidden"]] * 2
        for student_name in options.students:
            runs = []
            for seed in range(options.seeds):
                start = time.thread_time()
                student, report = pyroflows.distill(
                    teacher,
                    student_name,
                    steps=options.steps,
                    batch_size=options.batch_size,
                    lr=options.lr,
                    num_transforms=5,
                    hidden_dims=hidden,
                    seed=seed,
                    kl_draws=options.kl_draws,
                    timing_draws=1000,
                    timing_repeats=5,
                    progress=False,
                )
                run = {
                    "data_set": data_set,
                    "student": student_name,
                    "seed": seed,
                    "kl": report.kl,
                    "kl_se": report.kl_se,
                    "teacher_ms_per_1000": 1e3 * report.teacher_seconds,
                    "student_ms_per_1000": 1e3 * report.student_seconds,
                    "speedup": report.speedup,
                    "clock": report.clock,
                    "train_thread_seconds": time.thread_time() - start,
                    "student_parameters": sum(p.numel() for p in student.model.parameters()),
                }
                if data_set == "banana":
                    with torch.no_grad():
                        draws = student.rsample((options.kl_draws,))
                        gap = student.log_prob(draws) - banana_log_prob(draws)
                    run["kl_to_exact"] = float(gap.mean())
                    run["kl_to_exact_se"] = float(gap.std() / len(gap) ** 0.5)
                print(
                    f"{data_set} {student_name} seed {seed}: KL {report.kl:.4f} ± "
                    f"{report.kl_se:.4f}, speedup {report.speedup:.1f}×",
                    flush=True,
                )
                runs.append(run)
            kls = [r["kl"] for r in runs]
            speedups = [r["speedup"] for r in runs]
            line = (
                f"{data_set:7} {student_name:4} KL(student‖teacher) per seed "
                + ", ".join(f"{r['kl']:.4f} ± {r['kl_se']:.4f}" for r in runs)
                + f"; teacher {statistics.median(r['teacher_ms_per_1000'] for r in runs):.1f} ms"
                f", student {statistics.median(r['student_ms_per_1000'] for r in runs):.1f} ms "
                f"per 1000 draws: {statistics.median(speedups):.1f}× "
                f"(range {min(speedups):.1f}–{max(speedups):.1f})"
            )
            if data_set == "banana":
                line += "; KL(student‖exact) " + ", ".join(f"{r['kl_to_exact']:.3f}" for r in runs)
            lines.append(line)
            results.append(
                {
                    "data_set": data_set,
                    "student": student_name,
                    "teacher": teacher_info,
                    "runs": runs,
                    "kl_mean": statistics.mean(kls),
                    "speedup_median": statistics.median(speedups),
                }
            )
    text = (
        f"{options.steps} steps of {options.batch_size} draws, Adam {options.lr} decaying to "
        f"{options.lr / 10:g}, 5-layer students, seeds 0..{options.seeds - 1}; KL from "
        f"{options.kl_draws} student draws ± its Monte Carlo standard error; sampling times are "
        "CPU time of one torch thread, the best of 5 runs\n" + "\n".join(lines)
    )
    print()
    print(text)
    write_results(
        options.output or RESULTS / "distill_cpu.json",
        {
            "benchmark": "distill",
            "options": {k: str(v) for k, v in vars(options).items()},
            "teacher_budget": budget,
            "results": results,
        },
        text,
    )


if __name__ == "__main__":
    main()
