"""The settings that judge events, compared with those of the other hub processes sharing a PostgreSQL database.

Every hub judges the events it takes by its own settings: one with ``clock_window_s = 60`` holds in quarantine
what a hub with the default day applies, one with another ``transfer_open_max_s`` or ``agent_copies_window_s``
lists other exceptions, and a channel pushed by a hub with another ``buffer`` or ``pool`` shows other quantities
after a takeover. Hubs behind one load balancer are meant to run with the same ones (docs/scaling.md). Each hub
keeps its own in the database as it starts (``HubStore.share_settings``, schema version 33), logs one warning per
setting that differs from a running hub's, naming both values and that hub, and ``GET /v1/status`` shows the
differences for as long as both run (``settings_differ``). A SQLite hub has no other hub: nothing to compare.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hub.auth import STORE_KEY
from hub.channels.config import Buffer
from hub.config import HubSettings
from hub.storage.base import StoreError

log = logging.getLogger(__name__)

JUDGING = ("clock_window_s", "transfer_open_max_s", "agent_copies_window_s")  # [hub] keys that judge events
NOT_SET = "not set"  # the value of a setting a hub does not have (a channel it does not push)
OWN_KEY = web.AppKey("peer_settings_own", dict[str, str])  # this hub's judging_settings


def _buffer(buffer: Buffer) -> str:
    """A channel's buffer as a text: ``units 1``, ``units 0, percent 10, SKU-1 3``."""
    parts = [f"units {buffer.units}"] + ([f"percent {buffer.percent:g}"] if buffer.percent else [])
    return ", ".join(parts + [f"{sku} {units}" for sku, units in sorted(buffer.skus.items())])


def judging_settings(settings: HubSettings) -> dict[str, str]:
    """The settings by which two hubs would judge the same stores differently, as texts by name."""
    own = {key: str(getattr(settings, key)) for key in JUDGING}
    for spec in settings.channels:
        own[f"channel {spec.name} buffer"] = _buffer(spec.buffer)
        own[f"channel {spec.name} pool"] = ", ".join(f"{loc}={ch}" for loc, ch in sorted(spec.pool.items()))
    return own


def differences(own: Mapping[str, str], others: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """Each setting whose value at another running hub is not this hub's: the setting, this hub's value, the other
    hub's, that hub (``HOST:PID``) and a sentence saying so, by hub then setting."""
    found = []
    for hub, theirs in sorted(others.items()):
        for setting in sorted(own.keys() | theirs.keys()):
            here, there = own.get(setting, NOT_SET), theirs.get(setting, NOT_SET)
            if here != there:
                message = (
                    f"The hubs sharing this database differ in {setting}: {here} at this hub, {there} at hub {hub}; "
                    "they judge the same stores differently, so give every hub the same settings."
                )
                found.append({"setting": setting, "this_hub": here, "other_hub": there, "hub": hub, "message": message})
    return found


async def _share(app: web.Application) -> None:
    """At start: keep this hub's settings in the database and say, once each, which differ from a running hub's."""
    own = app[OWN_KEY]
    try:
        others = await app[STORE_KEY].share_settings(own)
    except StoreError as err:
        log.warning("This hub could not compare its settings with the other hubs sharing its database (%s).", err)
        return
    for found in differences(own, others):
        log.warning("%s", found["message"])


async def settings_differ(app: web.Application) -> list[dict[str, Any]]:
    """The differences between this hub's settings and those of the other hubs running now (``GET /v1/status``)."""
    own = app[OWN_KEY]
    return differences(own, await app[STORE_KEY].other_hubs_settings())


def setup(app: web.Application, settings: HubSettings) -> None:
    """Compare this hub's settings with the running hubs' as the app starts."""
    app[OWN_KEY] = judging_settings(settings)
    app.on_startup.append(_share)
