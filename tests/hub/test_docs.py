"""Docs that cannot rot (docs/design.md): every route, config key and CLI option is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from aiohttp import web

from hub import CONFIG_KEYS, HubSettings, HubStore, create_app
from hub.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROUTE_HEADING_RE = re.compile(r"^#+ `([A-Z]+) (/\S*)`", re.MULTILINE)


@pytest.fixture
def app(store: HubStore, tmp_path: Path) -> web.Application:
    return create_app(store, HubSettings(db=str(tmp_path / "hub.db")))


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def hub_section(text: str) -> str:
    start = text.index("\n## Hub")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


async def test_every_route_has_a_heading_in_hub_api_md(app: web.Application) -> None:
    documented = set(ROUTE_HEADING_RE.findall((DOCS / "hub-api.md").read_text()))
    routes = registered_routes(app)
    assert len(routes) >= 8
    assert routes - documented == set(), "routes missing from docs/hub-api.md"
    assert documented - routes == set(), "docs/hub-api.md documents routes the hub does not have"


def test_every_config_key_is_documented() -> None:
    section = hub_section((DOCS / "configuration.md").read_text())
    assert set(CONFIG_KEYS) == {
        "db", "host", "port", "max_body_bytes", "shutdown_timeout_s", "log_level", "access_log", "change_recheck_s",
        "advertise", "body_timeout_s", "rate_limit_per_s", "rate_limit_burst", "feed_read_rows_per_s", "feed_read_burst",
        "refused_attempts_per_s", "refused_attempts_burst", "read_bytes_per_s", "read_burst_bytes",
        "header_timeout_s", "keepalive_timeout_s", "max_connections",
        "clock_window_s", "transfer_open_max_s", "agent_copies_window_s", "tls_cert", "tls_key", "public_url", "event_loop", "database_url_file",
        "export_max_per_credential", "export_max", "lease_stale_s", "lease_retry_s", "db_timeout_s", "catchup_slots",
        "trusted_proxies",
        "trusted_proxy_header",
    }
    missing = [key for key in CONFIG_KEYS if not re.search(rf"^\| `{key}` \|", section, re.MULTILINE)]
    assert missing == [], "config keys missing from the Hub table of docs/configuration.md"


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
        else:
            found |= {opt for opt in action.option_strings if opt.startswith("--") and opt != "--help"}
    return found


def test_every_command_line_option_is_documented() -> None:
    section = hub_section((DOCS / "configuration.md").read_text())
    options = _options(build_parser())
    assert {"--db", "--port", "--max-body-bytes", "--location", "--role", "--config"} <= options
    assert sorted(opt for opt in options if opt not in section) == []
    for command in ("serve", "agent add", "agent bind", "agent revoke", "agent list"):
        assert f"shelfsync-hub {command}" in section
