"""``python -m hub`` is ``shelfsync-hub``."""

from hub.entry import main

raise SystemExit(main())
