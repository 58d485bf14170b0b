"""The OpenAPI document against the hub it describes: every route in it and nothing else, valid OpenAPI 3.1,
served as kept in docs/openapi.json, the same operations as the guide docs/hub-api.md, and its identifier
patterns the rule of protocol.values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate

from hub import HubSettings, HubStore, create_app, openapi
from protocol import routes, values

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROUTE_HEADING_RE = re.compile(r"^#+ `([A-Z]+) (/\S*)`", re.MULTILINE)
REGENERATE = "regenerate it: python -m hub.openapi > docs/openapi.json"


@pytest.fixture
def app(store: HubStore, tmp_path: Path) -> web.Application:
    return create_app(store, HubSettings(db=str(tmp_path / "hub.db")))


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route a real application registers (HEAD is GET's shadow)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


async def test_the_document_names_every_route_of_the_hub_and_no_other(app: web.Application) -> None:
    routes = routes_of(app)
    not_api = {tuple(key.split(" ", 1)) for key in openapi.NOT_API_ROUTES}
    documented = openapi.operations()
    assert len(documented) >= 20
    missing = sorted(routes - not_api - documented)
    assert missing == [], f"routes missing from hub/openapi.py (or from NOT_API_ROUTES, with a reason): {missing}"
    assert sorted(documented - routes) == [], "hub/openapi.py documents routes the hub does not have"
    assert sorted(not_api - routes) == [], "NOT_API_ROUTES names routes the hub does not have"
    assert not documented & not_api


def test_the_routes_agents_call_are_the_documents_paths() -> None:
    """protocol.routes names each path an agent calls once; the document is built from those names."""
    paths = openapi.build()["paths"]
    assert set(routes.AGENT_PATHS) <= set(paths)
    assert "post" in paths[routes.SYNC_PATH] and "get" in paths[routes.CHANGES_PATH]
    assert {"get", "put"} <= set(paths[routes.CATALOG_PATH])


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.build()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # openapi-spec-validator: the OpenAPI 3.1 meta-schema and its JSON Schema 2020-12 dialect


def test_every_operation_has_an_id_a_summary_answers_and_its_errors() -> None:
    doc = openapi.build()
    ids = []
    for (method, path) in openapi.operations(doc):
        op = doc["paths"][path][method.lower()]
        ids.append(op["operationId"])
        assert op["summary"] and op["description"], (method, path)
        assert any(code.startswith("2") for code in op["responses"]), (method, path)
        assert {"500", "503"} <= set(op["responses"]), (method, path)
        if op.get("security") != []:
            assert {"400", "401"} <= set(op["responses"]), (method, path)
        for param in op.get("parameters", []):
            assert param.get("description") and param.get("schema") is not None, (method, path, param["name"])
    assert len(ids) == len(set(ids)), "operationIds must be unique"


async def test_the_hub_serves_the_document_kept_in_docs(client: TestClient[Any, Any]) -> None:
    resp = await client.get(openapi.PATH)  # no credential: the document is public
    assert resp.status == 200
    served = await resp.read()
    assert resp.content_type == "application/json"
    assert (DOCS / "openapi.json").read_bytes() == served, f"docs/openapi.json is not what the hub serves; {REGENERATE}"
    tag = resp.headers["ETag"]
    again = await client.get(openapi.PATH, headers={"If-None-Match": tag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == tag
    other = await client.get(openapi.PATH, headers={"If-None-Match": '"another"'})
    assert other.status == 200


def test_the_guide_and_the_document_describe_the_same_operations() -> None:
    guide = set(ROUTE_HEADING_RE.findall((DOCS / "hub-api.md").read_text()))
    documented = openapi.operations()
    not_api = {tuple(key.split(" ", 1)) for key in openapi.NOT_API_ROUTES}
    assert sorted(documented - guide) == [], "operations of the OpenAPI document without a heading in docs/hub-api.md"
    assert sorted(guide - documented - not_api) == [], "docs/hub-api.md describes routes the OpenAPI document lacks"


def test_the_text_pattern_is_the_identifier_rule_of_protocol_values() -> None:
    pattern = re.compile(openapi.text_pattern())
    for cp in [*range(0x3000), *range(0xE000, 0x10000), 0x10FFFF, 0x1F600]:
        ch = chr(cp)
        assert bool(pattern.fullmatch(ch)) == values.is_text(ch), hex(cp)


@given(st.text(max_size=12))
def test_the_source_pattern_is_the_source_rule(suffix: str) -> None:
    pattern = re.compile(openapi.source_pattern())
    for text in (f"scanner:{suffix}", f"pos:{suffix}", f"nope:{suffix}", suffix):
        if values.is_unicode(text):
            assert bool(pattern.fullmatch(text)) == values.SOURCE.valid(text), repr(text)


def test_the_document_reads_its_limits_from_the_code() -> None:
    from hub import events_api, quarantine
    from hub.dashboard import api as dashboard_api
    from protocol import MAX_BATCH_EVENTS, QTY_MAX
    from protocol import feed as wire

    doc = openapi.build()
    schemas = doc["components"]["schemas"]

    def param(path: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name)
        return found

    assert schemas["EventsRequest"]["properties"]["events"]["maxItems"] == events_api.EVENTS_MAX
    assert schemas["SyncRequest"]["properties"]["events"]["maxItems"] == MAX_BATCH_EVENTS
    assert schemas["Sku"]["maxLength"] == values.SKU.max_len
    assert schemas["Location"]["maxLength"] == values.LOCATION.max_len
    assert schemas["Attrs"]["maxProperties"] == values.ATTRS_MAX_KEYS
    assert param("/v1/counts", "limit")["schema"]["maximum"] == dashboard_api.COUNTS_LIMIT_MAX
    assert param("/v1/quarantine", "limit")["schema"]["maximum"] == quarantine.LIMIT_MAX
    assert param("/v1/changes", "limit")["schema"]["maximum"] == wire.CHANGES_LIMIT_MAX
    safety = doc["paths"]["/v1/locations/{location}/skus/{sku}/safety-stock"]["put"]["requestBody"]
    assert safety["content"]["application/json"]["schema"]["properties"]["qty"]["maximum"] == QTY_MAX
    assert json.loads(openapi.document_bytes()) == doc
