"""The hub's HTTP routes that an agent calls: one spelling, used by the hub to register them and by the agent
to call them.

Each is a path below the hub's base URL (``hub_url``), which may itself carry a path prefix when the hub
sits behind a reverse proxy: ``hub_url.rstrip("/") + SYNC_PATH``. What each route takes and answers is
in docs/hub-api.md; the bodies are ``protocol.codec`` (sync), ``protocol.reports`` (observations, import
issues), ``protocol.feed`` (changes) and ``protocol.answers`` (every error answer).
"""

from __future__ import annotations

from typing import Final

HEALTH_PATH: Final = "/healthz"  # GET: is the hub up, which hub is it (public)
SYNC_PATH: Final = "/v1/sync"  # POST msgpack: a batch of stock events; answers the mark and counts
# A header of the hub's sync answers: this hub reads a request's ``after_seq`` (``protocol.SyncRequest``), so an
# agent may send a batch before the one before it is answered. An HTTP header, not an answer field: an agent
# refuses an answer with a field it does not know, and ignores a header.
SYNC_PIPELINE_HEADER: Final = "Shelfsync-Sync-After-Seq"
# A header of a sync answer, when the agents that synced lately agree the hub's own clock is off and this agent is
# one of them (hub.clock_window): how far, in whole milliseconds, the hub's clock is off theirs (negative: behind).
# The agent then says the hub's clock is wrong, not its own. A header for the reason above.
HUB_CLOCK_HEADER: Final = "Shelfsync-Hub-Clock-Off-Ms"
# A header of a sync answer to an agent whose clock is a minute or more off the hub's, when most of the other agents
# that synced lately put the hub's clock less than a minute off theirs (hub.clock_window.HubClockWatch.vouched): how
# many. The agent then says its own clock is the wrong one; without it (a lone store, stores that disagree, a hub
# from before API 1.10) it says only that the two clocks disagree, and to check both.
HUB_CLOCK_AGREED_HEADER: Final = "Shelfsync-Hub-Clock-Agreed"
# A header of every answer of the hub: the id of the database it serves (``hub_id`` in ``GET /healthz``'s ``db``),
# made when the database was created and kept in it, so a restore of another hub's backup changes it. Public, as
# /healthz is. An agent keeps the one it last synced with: a 401/403 from a hub whose id changed says so.
HUB_ID_HEADER: Final = "Shelfsync-Hub-Id"
# A header of every answer of the hub (API 1.11): the version of its API (``info.version`` of its OpenAPI document,
# ``1.<minor>.<patch>``). An agent that learned what an older hub does not read (several ``sku`` in one
# ``GET /v1/counts``, before 1.10) forgets it when the answers name another version; a hub before 1.11 names none.
API_VERSION_HEADER: Final = "Shelfsync-Api-Version"
# A sync body over this many bytes is a catch-up batch (thousands of events): the hub commits a few at once and
# lines up or refuses the rest (hub/catchup.py), and an agent sends one with ``Expect: 100-continue``, so a batch
# the hub makes wait or refuses is not uploaded before it is taken (a 1,000-event batch is ~69 KiB, 10,000 ~690 KiB).
SYNC_CATCHUP_BYTES: Final = 256 * 1024
CHANGES_PATH: Final = "/v1/changes"  # GET: the change feed, a page after a cursor (long-poll with wait)
CATALOG_PATH: Final = "/v1/catalog"  # GET: the barcode catalog; PUT (admin): replace it
BUNDLES_PATH: Final = "/v1/bundles"  # GET: the bundle SKUs and their recipes, a page at a time
OBSERVATIONS_PATH: Final = "/v1/observations"  # POST msgpack: another system's on-hand beliefs
IMPORT_ISSUES_PATH: Final = "/v1/import-issues"  # POST msgpack: POS export rows the agent quarantined

AGENT_PATHS: Final = (
    HEALTH_PATH, SYNC_PATH, CHANGES_PATH, CATALOG_PATH, BUNDLES_PATH, OBSERVATIONS_PATH, IMPORT_ISSUES_PATH
)  # fmt: skip
