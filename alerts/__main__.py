"""``python -m alerts``: the same as the ``alerts`` console script."""

from alerts.startup import catch_early_signals

catch_early_signals()  # before the heavier imports: a signal during start-up is not lost

from alerts.cli import main  # noqa: E402

raise SystemExit(main())
