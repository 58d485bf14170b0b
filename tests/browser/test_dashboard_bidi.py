"""Bidirectional-text controls in what stores send, on the dashboard, in real headless Chromium.

A SKU, a barcode, a ref or a catalog description may hold U+202E RIGHT-TO-LEFT OVERRIDE and its kin
(U+202A–U+202E, U+2066–U+2069): the text rule of protocol/values.py lets them through, as it lets Hebrew and Arabic
through. Left to act, one such character turns the rest of the line around — the sentence the hub wrote about the
SKU ("… at S001 stands at -2 on hand, below zero …"), the map dialog's explanation — and two SKUs that differ only
by an override and the order of their letters look the same. The dashboard shows each such character as a visible
mark instead of letting it act, on every page, so what a person reads is what the data holds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from protocol import wall_ms_now
from tests.harness.inprocess import hub_in_process

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE
PDF = "\u202c"  # POP DIRECTIONAL FORMATTING
# Negative stock: the hub's sentence about it carries the SKU, then goes on in words ("… stands at -2 on hand …")
SKU_OVERRIDE = f"MUG{RLO}"
# Shown as letters, "MUG-01" both; held as different SKUs
SKU_PLAIN = "MUG-01"
SKU_LOOKALIKE = f"MUG-{RLO}10{PDF}"
BARCODE = f"4006381333931{RLO}"  # an unknown barcode: the map dialog's sentence names the SKU it was booked under


@dataclass
class Shop:
    base: str
    reader: str


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    async with hub_in_process(tmp_path / "hub.db") as served:
        store, client = served.store, served.client
        _, reader = await store.add_agent([], role="reader")
        _, token = await store.add_agent(["S001"])
        now = wall_ms_now()
        moves = [
            (SKU_OVERRIDE, "sale", -2),
            (SKU_PLAIN, "receive", 5),
            (SKU_LOOKALIKE, "receive", 7),
            (f"unknown:{BARCODE}", "receive", 1),
        ]
        events = [
            {"id": f"e{i}", "location": "S001", "sku": sku, "kind": kind, "qty": qty, "occurred_at": now - 60_000 + i}
            for i, (sku, kind, qty) in enumerate(moves)
        ]
        resp = await client.post("/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["applied"] == len(events), await resp.text()
        yield Shop(served.url, reader)


async def _sign_in(page: Page, shop: Shop) -> None:
    await page.goto(f"{shop.base}/dashboard/")
    await page.fill("#token", shop.reader)
    await page.click("button[type=submit]")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


# Whether the word ``word`` in the text of an element is laid out left to right: its first letter left of its last.
LEFT_TO_RIGHT = """(root, word) => {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const at = node.data.indexOf(word);
    if (at < 0) continue;
    const box = (i) => { const r = document.createRange(); r.setStart(node, i); r.setEnd(node, i + 1);
      return r.getBoundingClientRect(); };
    return box(at).left < box(at + word.length - 1).left;
  }
  throw new Error(`no text ${word} in ${root.outerHTML}`);
}"""


async def test_an_override_in_a_sku_does_not_turn_the_hubs_sentence_about_it_around(page: Page, shop: Shop) -> None:
    await _sign_in(page, shop)
    await page.click("nav a[data-view=exceptions]")
    cell = "#view tr:has-text('below zero') td.wrap"
    await expect(page.locator(cell)).to_contain_text("on hand, below zero")
    assert await page.locator(cell).evaluate(LEFT_TO_RIGHT, "below")
    assert await page.locator(cell).evaluate(LEFT_TO_RIGHT, "stands")


async def test_an_override_in_a_barcode_does_not_turn_the_map_dialogs_sentence_around(page: Page, shop: Shop) -> None:
    await _sign_in(page, shop)
    await page.click("nav a[data-view=exceptions]")
    await page.locator("#view button.map-button").click()
    dialog = page.locator("#map-dialog")
    await expect(dialog).to_be_visible()
    assert await dialog.locator("p.muted").first.evaluate(LEFT_TO_RIGHT, "Mapping")
    # the command an admin copies holds the override as its JSON escape: on screen as it acts, the same barcode
    await dialog.locator("summary").click()
    await page.fill("#map-sku", SKU_PLAIN)
    command = await page.locator("#map-command").inner_text()
    assert RLO not in command and "\\u202e" in command, command
    body = command.split(" -d '", 1)[1].split("' ", 1)[0]
    assert json.loads(body)["items"][0] == {"barcode": BARCODE, "sku": SKU_PLAIN, "pack_size": 1}


async def test_two_skus_that_differ_by_an_override_do_not_look_the_same(page: Page, shop: Shop) -> None:
    await _sign_in(page, shop)
    await page.click("nav a[data-view=stock]")
    links = page.locator("#view td a.mono")
    await expect(links.filter(has_text="MUG-")).to_have_count(2)
    shown = sorted(await links.filter(has_text="MUG-").all_inner_texts())
    assert shown[0] != shown[1], shown
    lookalike = next(text for text in shown if text != SKU_PLAIN)
    assert "U+202E" in lookalike and "U+202C" in lookalike, lookalike
    # the link still leads to the SKU as it is held, override and all
    await links.filter(has_text="U+202E").filter(has_text="10").click()
    await expect(page.locator("h1.sku-title")).to_contain_text("U+202E")
    await expect(page.locator("#sku-ledger tbody tr")).to_have_count(1)
