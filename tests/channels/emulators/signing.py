"""Webhook signatures as Shopify and Square compute them (for the order-webhook tests to come).

* Shopify: ``X-Shopify-Hmac-Sha256`` = base64 of HMAC-SHA256 of the raw body,
  keyed with the app's client secret.
* Square: ``x-square-hmacsha256-signature`` = base64 of HMAC-SHA256 of the
  notification URL followed by the raw body, keyed with the subscription's
  signature key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SHOPIFY_HEADER = "X-Shopify-Hmac-Sha256"
SQUARE_HEADER = "x-square-hmacsha256-signature"


def shopify_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode("ascii")


def square_signature(signature_key: str, notification_url: str, body: bytes) -> str:
    mac = hmac.new(signature_key.encode(), notification_url.encode() + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def shopify_webhook_headers(secret: str, body: bytes, topic: str, shop: str, webhook_id: str) -> dict[str, str]:
    """The headers Shopify sends with a webhook delivery."""
    return {
        "Content-Type": "application/json",
        SHOPIFY_HEADER: shopify_signature(secret, body),
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-API-Version": "2026-01",
    }


def square_webhook_headers(signature_key: str, notification_url: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        SQUARE_HEADER: square_signature(signature_key, notification_url, body),
        "Square-Version": "2024-11-20",
    }
