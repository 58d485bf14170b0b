-- shelfsync hub, PostgreSQL schema version 22: the transfers of one ref and SKU at every destination, those not
-- received in full and the unmatched receipts (both shipped <> received), read by their key for the exceptions
-- list: a receipt at the wrong store names the shipment it missed, and the shipment names the receipt
-- (hub.storage.exceptions.LINKED, hub.resolver.linked_finding). Only the page's few are looked up.
CREATE INDEX transfers_ref ON transfers (ref, sku, dest) WHERE shipped <> received;
