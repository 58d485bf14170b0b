"""Webhook signatures as Shopify and Square send them (helpers for the order-webhook tests)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from tests.channels.emulators.signing import shopify_signature, shopify_webhook_headers, square_signature


def test_shopify_signs_the_raw_body() -> None:
    body = b'{"id":820982911946154508,"email":"jon@example.com"}'
    expected = base64.b64encode(hmac.digest(b"hush", body, "sha256")).decode()
    assert shopify_signature("hush", body) == expected
    assert shopify_webhook_headers("hush", body, "orders/create", "x.myshopify.com", "w1")["X-Shopify-Hmac-Sha256"] == expected
    assert shopify_signature("hush", body + b" ") != expected


def test_square_signs_the_notification_url_then_the_body() -> None:
    url, body = "https://hub.example.com/v1/channels/pos/webhook", b'{"type":"order.created"}'
    expected = base64.b64encode(hmac.new(b"key", url.encode() + body, hashlib.sha256).digest()).decode()
    assert square_signature("key", url, body) == expected
    assert square_signature("key", url + "?x=1", body) != expected
