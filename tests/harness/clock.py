"""A base for event times in tests against a hub: inside the hub's clock window whenever the test runs.

The window (hub.clock_window, 24 hours by default) holds back an event stamped more than a day before its
credential was created. A base taken once at import as "today 00:00 UTC" fell outside it for a test that
ran after midnight in a run that imported it before: the start of the hour before the import does not,
for any run shorter than a day.
"""

from __future__ import annotations

import time

HOUR_MS = 3_600_000
RECENT_MS = (time.time_ns() // 1_000_000 // HOUR_MS - 1) * HOUR_MS
