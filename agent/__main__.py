"""``python -m agent`` is ``shelfsync-agent``."""

from agent.entry import main

raise SystemExit(main())
