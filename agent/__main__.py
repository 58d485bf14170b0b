"""``python -m agent`` is ``shelfsync-agent``."""

from agent.cli import main

raise SystemExit(main())
