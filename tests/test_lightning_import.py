"""``pyroflows.lightning`` is optional: ``import pyroflows`` never imports Lightning, and without
Lightning the import of ``pyroflows.lightning`` says how to install it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_importing_pyroflows_does_not_import_lightning():
    code = (
        "import sys, pyroflows, pyroflows.infer, pyroflows.diagnostics, pyroflows.amortized; "
        "print(sorted(m for m in sys.modules if 'lightning' in m))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_without_lightning_the_error_says_what_to_install(monkeypatch):
    for name in list(sys.modules):
        if name.startswith("pyroflows.lightning"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lightning", None)  # makes `import lightning` fail
    with pytest.raises(ImportError, match=r'pip install "pyroflows\[lightning\]"'):
        import pyroflows.lightning  # noqa: F401
