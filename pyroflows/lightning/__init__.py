"""Data-parallel SVI on PyTorch Lightning: :class:`SVIModule`.

Needs the optional dependency ``lightning`` (``pip install "pyroflows[lightning]"``); importing
:mod:`pyroflows` itself never imports it.

Example:
    >>> import lightning
    >>> from pyroflows.lightning import SVIModule
    >>> module = SVIModule(model, pyroflows.AutoIAF(model), lr=1e-2)  # doctest: +SKIP
    >>> lightning.Trainer(strategy="ddp", accelerator="cpu", devices=2).fit(module, loader)
"""

try:
    import lightning  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised by a test that hides lightning
    raise ImportError(
        "pyroflows.lightning needs PyTorch Lightning, which is not installed here. Install it "
        'with: pip install "pyroflows[lightning]"'
    ) from error

from pyroflows.lightning.svi_module import SVIModule

__all__ = ["SVIModule"]
