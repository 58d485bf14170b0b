"""The bundles' reads, in SQL both backends run; recipes are set through ``hub.storage.ingest.apply_recipe``.

The bundles' version is one row of ``meta`` that the database's triggers raise with every change to the recipes
or their parts (schema version 8), so no writer can forget it: the cheap ETag of ``GET /v1/bundles``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from hub.storage.base import Bundle, BundleRecipe
from hub.storage.db import Db, Where
from hub.storage.ingest import BundleParts
from hub.storage.rows import bundle_recipe, bundles_of
from hub.storage.sql import NEWEST_RECIPES, RECIPE_FIELDS

BUNDLES_VERSION_KEY = "bundles_version"


class BundleReads(Protocol):
    """The reads of the bundle tables each backend's ingest adapter gives, on any of its connections."""

    async def bundle_book(self, skus: Collection[str] | None) -> dict[str, BundleParts]:
        """The recipes in force of the bundles that are, or are made of, one of ``skus`` (None: all)."""

    async def expansions(self, ids: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Rows of ``hub.storage.sql.EXPANSION_FIELDS`` of these bundle movements (agent_id, event_id)."""


async def bundles_version(db: Db) -> int:
    row = await db.fetchone("SELECT value FROM meta WHERE key = ?", (BUNDLES_VERSION_KEY,))
    return 0 if row is None else int(row[0])


async def bundles(db: Db, book: BundleReads, sku: str | None, after: str | None, limit: int) -> list[Bundle]:
    where = Where().add("sku > ?", after).add("sku = ?", sku)
    sql = f"SELECT {RECIPE_FIELDS} FROM ({NEWEST_RECIPES}) n{where.sql} ORDER BY sku LIMIT ?"
    recipes = [bundle_recipe(r) for r in await db.fetch(sql, (*where.params, limit))]
    return bundles_of(recipes, await book.bundle_book([r.sku for r in recipes]))


async def bundle_versions(db: Db, sku: str) -> list[BundleRecipe]:
    sql = f"SELECT {RECIPE_FIELDS} FROM bundle_recipes WHERE sku = ? ORDER BY version"
    return [bundle_recipe(r) for r in await db.fetch(sql, (sku,))]


async def bundle_parts(book: BundleReads, skus: Collection[str] | None) -> dict[str, dict[str, int]]:
    return {b: dict(bp.parts) for b, bp in (await book.bundle_book(None if skus is None else list(skus))).items()}
