"""Importing a catalog CSV from the dashboard's Catalog page, in real headless Chromium against a hub on 127.0.0.1.

The dashboard had no way to import a catalog: an operator with a supplier's spreadsheet had to find the route or
the command. Now the Catalog page takes the file and an admin credential (the session cookie only reads), imports
its good rows, lists each refused row with its line, column and why, and offers the refused rows as a CSV to fix
and import again; unticking "Import the good rows" keeps all or nothing. A reader's credential is refused with
the hub's sentence and changes nothing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from playwright.async_api import Page, expect

from tests.browser.conftest import Screenshot
from tests.browser.test_dashboard_channels import sign_in
from tests.browser.test_dashboard_ops import download
from tests.harness.inprocess import hub_in_process

PEN = "4006381333931"
MUG = "5901234123457"
SUPPLIER_CSV = (
    "\ufeffBarcode;SKU;Pack size;Name\r\n"  # Excel's "CSV UTF-8" in a semicolon locale
    f"{PEN};PEN-BLUE;1;Pen, blue\r\n"  # line 2: good
    '4006381333932;PEN-RED;1;=HYPERLINK("http://evil")\r\n'  # line 3: a wrong check digit
    f"{MUG};;1;Mug\r\n"  # line 4: no SKU
    "ABC-1;TOTE;1;Tote bag\r\n"  # line 5: good
).encode()


async def choose_file(page: Page, name: str, body: bytes) -> None:
    await page.set_input_files("#catalog-file", {"name": name, "mimeType": "text/csv", "buffer": body})


async def test_a_supplier_csv_is_imported_from_the_catalog_page_and_its_refused_rows_come_back_as_a_csv(
    page: Page, tmp_path: Path, console_errors: list[str], screenshot: Screenshot
) -> None:
    async with hub_in_process(tmp_path / "hub.db") as served:
        store, url = served.store, served.url
        _, reader = await store.add_agent([], role="reader")
        _, admin = await store.add_agent([], role="admin")
        await sign_in(page, url, reader)
        await page.click('#tabs a[data-view="catalog"]')
        await expect(page.locator("#view h1")).to_have_text("Catalog")
        await expect(page.locator("#catalog-submit")).to_be_disabled()  # no file, no credential yet
        await expect(page.locator("#catalog-command")).to_have_text(
            f'curl -sS -X PUT -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" -H "Content-Type: text/csv" '
            f"--data-binary @catalog.csv '{url}/v1/catalog?partial=true'",
            use_inner_text=False,
        )

        # the reader's own credential: the hub's sentence, nothing written
        await choose_file(page, "supplier.csv", SUPPLIER_CSV)
        await page.fill("#catalog-credential", reader)
        await page.click("#catalog-submit")
        await expect(page.locator("#catalog-error")).to_contain_text("Not imported:")
        await expect(page.locator("#catalog-error")).to_contain_text("change the catalog")
        assert await store.catalog_version() == 0

        # all or nothing, as asked: refused, every bad row listed, nothing written
        await choose_file(page, "supplier.csv", SUPPLIER_CSV)
        await page.fill("#catalog-credential", admin)
        await page.uncheck("#catalog-partial")
        await page.click("#catalog-submit")
        await expect(page.locator("#catalog-error")).to_contain_text("2 rows cannot be used, so nothing was imported")
        await expect(page.locator("#view tr[data-line]")).to_have_count(2)
        assert await store.catalog_version() == 0

        # the good rows taken, the refused ones listed and downloadable
        await choose_file(page, "supplier.csv", SUPPLIER_CSV)
        await expect(page.locator("#catalog-credential-kept")).to_be_visible()  # kept in this tab's memory
        await expect(page.locator("#catalog-partial")).not_to_be_checked()  # as it was left
        await page.check("#catalog-partial")
        await page.click("#catalog-submit")
        await expect(page.locator("#catalog-result")).to_have_text(
            "Imported 2 of 4 rows of supplier.csv: 2 new or changed, 0 scan(s) of unknown barcodes re-booked, catalog "
            "version 1. 2 row(s) refused: fix them in the refused rows' file and import that file."
        )
        refused = page.locator("#view tr[data-line]")
        await expect(refused).to_have_count(2)
        await expect(refused.nth(0)).to_contain_text("3barcodebarcode 4006381333932 looks like a GTIN-13")
        await expect(refused.nth(1)).to_contain_text("4skusku must not be empty")
        await expect(page.locator("#catalog-size")).to_contain_text("2 SKU(s) known by barcode")
        await screenshot("dashboard-catalog-import")
        name, rows = await download(page, "#catalog-refused-csv")
        assert name == "supplier.refused.csv"
        assert [(r["barcode"], r["sku"], r["description"]) for r in rows] == [
            ("4006381333932", "PEN-RED", '\'=HYPERLINK("http://evil")'),  # guarded: no spreadsheet runs it
            (MUG, "", "Mug"),
        ]
        assert rows[0]["problem"].startswith("line 3: barcode 4006381333932")
        assert {(i.barcode, i.sku) for i in (await store.catalog()).items} == {(PEN, "PEN-BLUE"), ("ABC-1", "TOTE")}

        # fixed in the refused file and imported as it is (its problem column left aside)
        rows[0] |= {"barcode": "4006381333948", "description": "Pen, red"}
        rows[1] |= {"sku": "MUG"}
        fixed = io.StringIO()
        writer = csv.DictWriter(fixed, ["problem", "barcode", "sku", "pack_size", "description"])
        writer.writeheader()
        writer.writerows(rows)
        await choose_file(page, "supplier.refused.csv", fixed.getvalue().encode())
        await page.click("#catalog-submit")
        await expect(page.locator("#catalog-result")).to_contain_text("Imported 2 of 2 rows of supplier.refused.csv")
        await expect(page.locator("#view tr[data-line]")).to_have_count(0)
        assert len((await store.catalog()).items) == 4
    assert console_errors == [  # the browser's own lines for the two refusals asked for above; nothing else
        "Failed to load resource: the server responded with a status of 403 (Forbidden)",
        "Failed to load resource: the server responded with a status of 400 (Bad Request)",
    ], console_errors


ERP_EXPORT = f"barcode;sku;description\r\n{PEN};PEN-BLUE;Stylo « Café » 5 €\r\n{MUG};MUG;Tasse für Müller\r\n"


async def test_a_file_saved_in_windows_1252_is_imported_once_the_page_is_told_its_charset(
    page: Page, tmp_path: Path, console_errors: list[str], screenshot: Screenshot
) -> None:
    """Found black-box: an ERP's Windows-1252 export could not be imported from the page at all (the browser sends
    the bytes as they are, and the page sent no charset); the page now asks which charset the file is saved in."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        store, url = served.store, served.url
        _, reader = await store.add_agent([], role="reader")
        _, admin = await store.add_agent([], role="admin")
        await sign_in(page, url, reader)
        await page.click('#tabs a[data-view="catalog"]')
        await expect(page.locator("#catalog-charset")).to_have_value("")  # UTF-8 unless told
        await choose_file(page, "erp.csv", ERP_EXPORT.encode("cp1252"))
        await page.fill("#catalog-credential", admin)
        await page.click("#catalog-submit")
        await expect(page.locator("#catalog-error")).to_contain_text("the file is not UTF-8 text (byte 0xab at offset")
        await expect(page.locator("#catalog-error")).to_contain_text("name the charset it is saved in")
        assert await store.catalog_version() == 0

        await page.select_option("#catalog-charset", "windows-1252")
        await expect(page.locator("#catalog-command")).to_contain_text(
            '-H "Content-Type: text/csv; charset=windows-1252"'
        )
        await choose_file(page, "erp.csv", ERP_EXPORT.encode("cp1252"))
        await page.click("#catalog-submit")
        await expect(page.locator("#catalog-result")).to_contain_text("Imported 2 of 2 rows of erp.csv")
        await expect(page.locator("#catalog-charset")).to_have_value("windows-1252")  # as it was left
        await screenshot("dashboard-catalog-import-charset")
        assert {i.barcode: i.description for i in (await store.catalog()).items} == {
            PEN: "Stylo « Café » 5 €",
            MUG: "Tasse für Müller",
        }
    assert console_errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
