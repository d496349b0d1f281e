"""``python -m alerts``: the same as the ``alerts`` console script."""

from alerts.cli import main

raise SystemExit(main())
