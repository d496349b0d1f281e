"""``python -m alerts``: the same as the ``alerts`` console script."""

import sys

try:
    from alerts.cli import main
except KeyboardInterrupt:  # SIGINT while the interpreter was still importing: one line, no traceback
    print("alerts: interrupted during start-up; nothing was sent", file=sys.stderr)
    raise SystemExit(0) from None

raise SystemExit(main())
