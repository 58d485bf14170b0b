"""Shared parts of the POS import tests: fixture paths, a real outbox and store in tmp_path."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from agent.outbox import Outbox
from agent.pos import PosImportConfig, PosImporter, PosStore
from protocol import StockEvent

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "pos"
SQUARE_UTF8 = FIXTURES / "square_items_utf8_bom.csv"
SQUARE_CP1252 = FIXTURES / "square_items_cp1252.csv"
SHOPIFY = FIXTURES / "shopify_inventory.csv"
GENERIC = FIXTURES / "generic.csv"
OVERLAP_A = FIXTURES / "square_overlap_a.csv"
OVERLAP_B = FIXTURES / "square_overlap_b.csv"
LOCATION = "S001"


@dataclass
class Env:
    outbox: Outbox
    store: PosStore
    importer: PosImporter
    tmp: Path

    async def events(self) -> tuple[StockEvent, ...]:
        return await self.outbox.pending(1_000_000)

    def copy(self, fixture: Path, name: str | None = None) -> Path:
        dest = self.tmp / (name or fixture.name)
        shutil.copyfile(fixture, dest)
        return dest


@contextlib.asynccontextmanager
async def open_env(tmp: Path, config: PosImportConfig | None = None) -> AsyncIterator[Env]:
    config = config or PosImportConfig()
    async with (
        Outbox.open(tmp / "outbox.sqlite3", agent_id="store-1", location=LOCATION) as outbox,
        PosStore.open(config.store_path_for(tmp / "outbox.sqlite3")) as store,
    ):
        yield Env(outbox, store, PosImporter(outbox, store, config), tmp)
