"""The accuracy benchmark of issue 10 (item 7): targets, reference draws and the harness.

* :mod:`accuracy.targets`: Pyro models with an exact log evidence or reference NUTS draws,
  split into held-out and development targets.
* :mod:`accuracy.harness`: fitting (pyroflows at ``fit``'s defaults, Pyro and zuko peers at
  equal time), snapshots during training, and the metrics.
* ``make_references.py``: recomputes the committed NUTS reference draws in ``references/``.

The driver is ``benchmarks/bench_accuracy.py``.
"""
