"""Channels: what a web shop or a POS account shows, computed from the hub's counts and pushed to it.

* ``config``: the ``[[channel]]`` tables (pool, buffer, secrets) → ``ChannelSpec``;
* ``mapping``: hub SKU ↔ the channel's ids, from its listing or a CSV, with findings;
* ``levels``: what a channel shows (pure);
* ``state``: cursor, last pushed levels and mapping, kept across restarts;
* ``pusher``: the loop over the change-feed cursor; ``shopify``, ``square`` and ``webhook``: the connectors;
* ``reconcile``: reading the levels back, finding and correcting divergences;
* ``runner``: all configured pushers (and reconcilers) beside the hub; ``http``: their routes.

See docs/channels.md.
"""

from hub.channels.config import (
    Buffer,
    ChannelConfigError,
    ChannelSpec,
    load_channels,
    parse_channels,
)
from hub.channels.connector import (
    ChannelError,
    ChannelRejected,
    ChannelUnavailable,
    Connector,
    ConnectorStatus,
    LevelsRefused,
    Target,
)
from hub.channels.levels import LevelKey, channel_levels
from hub.channels.loop import Backoff
from hub.channels.mapping import (
    ItemIds,
    ListingEntry,
    MappingError,
    MappingFinding,
    SkuMapping,
    build_mapping,
    parse_mapping_csv,
)
from hub.channels.pusher import ChannelPusher, PusherStatus
from hub.channels.reconcile import Reconciler, find_divergences
from hub.channels.runner import channel_pushers, make_connector
from hub.channels.shopify import ShopifyConnector
from hub.channels.square import SquareConnector
from hub.channels.state import ChannelState, Divergence, Reconciled, Refusal, SqliteChannelState
from hub.channels.webhook import WebhookConnector

__all__ = [
    "Backoff",
    "Buffer",
    "ChannelConfigError",
    "ChannelError",
    "ChannelPusher",
    "ChannelRejected",
    "ChannelSpec",
    "ChannelState",
    "ChannelUnavailable",
    "Connector",
    "ConnectorStatus",
    "Divergence",
    "ItemIds",
    "LevelKey",
    "LevelsRefused",
    "ListingEntry",
    "MappingError",
    "MappingFinding",
    "PusherStatus",
    "Reconciled",
    "Reconciler",
    "Refusal",
    "ShopifyConnector",
    "SkuMapping",
    "SqliteChannelState",
    "SquareConnector",
    "Target",
    "WebhookConnector",
    "build_mapping",
    "channel_levels",
    "channel_pushers",
    "find_divergences",
    "load_channels",
    "make_connector",
    "parse_channels",
    "parse_mapping_csv",
]
