"""``python -m hub`` is ``shelfsync-hub``."""

from hub.cli import main

raise SystemExit(main())
