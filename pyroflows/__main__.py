"""``python -m pyroflows demo``: the same as the ``pyroflows`` console script."""

from pyroflows.cli import main

raise SystemExit(main())
