"""The shelfsync hub: ingest agents' events, resolve counts, serve the ledger over HTTP.

Public API::

    create_app(store, settings) -> aiohttp.web.Application
    serve(settings, stop=None)                # run until SIGTERM/SIGINT or ``stop`` is set
    HubSettings, load_settings(path=None, **overrides), CONFIG_KEYS
    open_store(url_or_path) -> HubStore

Names are imported on first use, so ``import hub.resolver`` (the pure core)
loads neither aiohttp nor a database driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.app import create_app
    from hub.config import CONFIG_KEYS, ConfigError, HubSettings, load_settings
    from hub.server import ServeError, serve
    from hub.storage import open_store
    from hub.storage.base import AgentIdentity, HubError, HubStore, StoreClosed

_EXPORTS: dict[str, str] = {
    "create_app": "hub.app",
    "CONFIG_KEYS": "hub.config",
    "ConfigError": "hub.config",
    "HubSettings": "hub.config",
    "load_settings": "hub.config",
    "ServeError": "hub.server",
    "serve": "hub.server",
    "open_store": "hub.storage",
    "AgentIdentity": "hub.storage.base",
    "HubError": "hub.storage.base",
    "HubStore": "hub.storage.base",
    "StoreClosed": "hub.storage.base",
}

__all__ = [
    "CONFIG_KEYS",
    "AgentIdentity",
    "ConfigError",
    "HubError",
    "HubSettings",
    "HubStore",
    "ServeError",
    "StoreClosed",
    "create_app",
    "load_settings",
    "open_store",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hub' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
