"""Ctrl-C stops fit after the current step and returns the partial result; resume continues with
the same optimizer state and schedule; a checkpointed run that is killed and resumed ends with
the same parameters, bit for bit on CPU, as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyroflows import AutoIAF, CheckpointError, FitResult, fit
from pyroflows.infer import checkpoint as checkpoint_module

STEPS = 60
X = torch.linspace(-1, 1, 12)
Y = 0.5 + 2.0 * X + 0.3 * torch.randn(12, generator=torch.Generator().manual_seed(0))


def _model(hook=None):
    """A regression whose model calls ``hook(call_number)``. fit runs the model a few times
    before its first step (the guide's set-up, the plate nesting, the vectorization check:
    ``BEFORE_FIRST_STEP``, measured), then once per step (vectorized particles)."""
    calls = [0]

    def model(x, y):
        calls[0] += 1
        if hook is not None:
            hook(calls[0])
        weight = pyro.sample("weight", dist.Normal(0.0, 1.0))
        bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(bias + weight * x, 0.3), obs=y)

    return model


def _calls_before_the_first_step() -> int:
    last = [0]

    def hook(number):
        last[0] = number

    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # as the runs below: the Laplace start's L-BFGS calls depend on it
    model = _model(hook)
    # without the start check, which runs the model again after the last step
    fit(
        model,
        AutoIAF(model),
        X,
        Y,
        steps=1,
        progress=False,
        report_samples=None,
        compare_start=False,
    )
    pyro.clear_param_store()
    return last[0] - 1


BEFORE_FIRST_STEP = _calls_before_the_first_step()


def _params() -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {name: store.get_param(name).detach().clone() for name in store.keys()}


def _uninterrupted(steps=STEPS, **options) -> tuple[FitResult, dict]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = _model()
    result = fit(model, AutoIAF(model), X, Y, steps=steps, progress=False, **options)
    return result, _params()


def _assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


@pytest.fixture(autouse=True)
def _python_default_ctrl_c_handler():
    """As in an interactive session. A process started in the background by a non-interactive
    shell (as CI may be) ignores SIGINT, and then no Ctrl-C reaches Python, or fit, at all."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_at(call: int, times: int = 1):
    def hook(number):
        if number == call:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)

    return hook


def test_ctrl_c_stops_after_the_current_step_and_resume_ends_where_an_uninterrupted_run_does():
    expected_result, expected = _uninterrupted(report_samples=None)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = _model(_sigint_at(call=BEFORE_FIRST_STEP + 25))  # during step 25
    guide = AutoIAF(model)
    partial = fit(model, guide, X, Y, steps=STEPS, progress=False)
    assert partial.interrupted and partial.steps == 25 and partial.report is None
    assert "interrupted after step 25 of 60" in str(partial)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    finished = fit(model, guide, X, Y, resume=partial, report_samples=None, progress=False)
    assert not finished.interrupted and finished.steps == STEPS
    assert finished.free_energy.tolist() == expected_result.free_energy.tolist()
    _assert_same(_params(), expected)


def test_a_second_ctrl_c_drops_the_unfinished_step():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = _model(_sigint_at(call=BEFORE_FIRST_STEP + 24))
    fit(model, AutoIAF(model), X, Y, steps=STEPS, progress=False)
    after_24_steps = _params()

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # twice during step 25's loss
    model = _model(_sigint_at(call=BEFORE_FIRST_STEP + 25, times=2))
    result = fit(model, AutoIAF(model), X, Y, steps=STEPS, progress=False)
    assert result.interrupted and result.steps == 24
    _assert_same(_params(), after_24_steps)


def test_a_keyboard_interrupt_from_the_model_is_caught_the_same_way():
    def hook(number):
        if number == BEFORE_FIRST_STEP + 10:
            raise KeyboardInterrupt

    pyro.clear_param_store()
    model = _model(hook)
    result = fit(model, AutoIAF(model), X, Y, steps=STEPS, progress=False)
    assert result.interrupted and result.steps == 9
    assert all(p.grad is None or not bool(p.grad.any()) for p in result.guide.parameters())


class _Killed(BaseException):
    """Stands for the process dying: fit must not catch it."""


def test_a_killed_run_resumed_from_its_checkpoint_ends_bit_for_bit_where_an_uninterrupted_one_does(
    tmp_path,
):
    path = tmp_path / "fit.pt"
    expected_result, expected = _uninterrupted(report_samples=None)

    def die(number):
        if number == BEFORE_FIRST_STEP + 47:
            raise _Killed

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = _model(die)
    with pytest.raises(_Killed):
        fit(
            model,
            AutoIAF(model),
            X,
            Y,
            steps=STEPS,
            progress=False,
            checkpoint=path,
            checkpoint_every=10,
        )
    saved = checkpoint_module.load_checkpoint(path)
    assert saved["step"] == 40 and len(saved["history"]) == 40
    assert not [p for p in tmp_path.iterdir() if p.name != "fit.pt"]  # no temporary file left

    pyro.clear_param_store()
    pyro.set_rng_seed(123)  # another process, another random state: the checkpoint restores it
    model = _model()
    resumed = fit(model, AutoIAF(model), X, Y, resume=path, progress=False, report_samples=None)
    assert resumed.steps == STEPS and not resumed.interrupted
    assert resumed.free_energy.tolist() == expected_result.free_energy.tolist()
    _assert_same(_params(), expected)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "fit.pt"
    _uninterrupted(steps=10, report_samples=None, checkpoint=path)
    before = path.read_bytes()

    def broken_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _uninterrupted(steps=10, report_samples=None, checkpoint=path)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["fit.pt"]


def test_resume_refuses_other_settings_guides_and_finished_runs(tmp_path):
    path = tmp_path / "fit.pt"
    result, _ = _uninterrupted(steps=20, report_samples=None, checkpoint=path)
    model = _model()
    with pytest.raises(ValueError, match=r"lr=0.05 differs from the resumed run's lr=0.01"):
        fit(model, result.guide, X, Y, resume=result, steps=30, lr=0.05, progress=False)
    with pytest.raises(ValueError, match=r"already done 20 of steps=20"):
        fit(model, result.guide, X, Y, resume=result, progress=False)
    with pytest.raises(ValueError, match=r"another guide object"):
        fit(model, AutoIAF(model), X, Y, resume=result, steps=30, progress=False)
    from pyroflows import AutoPlanar

    pyro.clear_param_store()
    with pytest.raises(CheckpointError, match=r"fitted a AutoIAF, not a AutoPlanar"):
        fit(model, AutoPlanar(model), X, Y, resume=path, steps=30, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(model, AutoIAF(model), X, Y, resume=tmp_path / "missing.pt", progress=False)
    # a larger total continues the run
    longer = fit(
        model, result.guide, X, Y, resume=result, steps=30, progress=False, report_samples=None
    )
    assert longer.steps == 30


@pytest.mark.slow
def test_a_process_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    """The real thing: three processes (uninterrupted; killed at step 47 with SIGKILL; resumed)
    on one torch thread each; the final parameters must be bitwise equal."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import pyro
        from pyroflows import AutoIAF, fit
        from test_interrupt_resume import BEFORE_FIRST_STEP, X, Y, _model, _params
        mode, path, out = sys.argv[1:4]
        pyro.set_rng_seed(0)
        def die(number):
            if mode == "killed" and number == BEFORE_FIRST_STEP + 47:
                os.kill(os.getpid(), signal.SIGKILL)
        model = _model(die)
        options = dict(steps=60, progress=False, report_samples=None)
        if mode == "resumed":
            options["resume"] = path
        elif mode == "killed":
            options.update(checkpoint=path, checkpoint_every=10)
        fit(model, AutoIAF(model), X, Y, **options)
        torch.save(_params(), out)
    """)
    )
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    path = tmp_path / "fit.pt"

    def run(mode):
        return subprocess.run(
            [sys.executable, str(script), mode, str(path), str(tmp_path / f"{mode}.pt")],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )

    killed = run("killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint_module.load_checkpoint(path)["step"] == 40
    for mode in ("resumed", "uninterrupted"):
        finished = run(mode)
        assert finished.returncode == 0, finished.stderr
    _assert_same(torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "uninterrupted.pt"))


def test_a_checkpoint_of_another_version_is_refused(tmp_path):
    """Version 1 checkpoints predate the guides' fixed step scales, version 2 AutoIAF's: their
    weights would load into another distribution, so they are refused with the versions
    named."""
    path = tmp_path / "old.pt"
    for old_version in (1, 2):
        torch.save({"format": checkpoint_module.FORMAT, "version": old_version}, path)
        with pytest.raises(
            CheckpointError,
            match=f"version {old_version} checkpoint; this pyroflows reads version 3",
        ):
            checkpoint_module.load_checkpoint(path)
