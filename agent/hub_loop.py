"""What the agent's loops that talk to the hub share: one task, one HTTP session, a stop that is safe twice.

The replicator, the report sender and the catalog each run one background
task (the loop shape of docs/design.md) over one ``aiohttp`` session; they subclass
``HubLoop`` and write their own ``start()`` and ``_run()``.

No request to the hub follows a redirect (``FOLLOW_REDIRECTS``): a ``3xx``
is a failed attempt whose sentence names where it points (``redirected``).
Followed, a 307 resent the outbox's movements to whatever address it named,
and a 301/302 turned the sync into a GET whose 404 or 405 was then blamed on
``hub_url``.

An answer that is plainly not the hub's — an HTML page (a captive portal's
200, a proxy's 502 or 504 page), or a 200 in another type than the route's —
is said in one sentence naming what answered (``not_the_hubs``), as a
network failure of its own kind (``INTERCEPTED``), not as a broken hub or an
undecodable body: a portal that appears after the link dropped is news, not
one more failure of the same streak. So is a ``200`` in the route's JSON
without the fields every hub answer of that route holds (``not_a_hubs_json``):
another service at ``hub_url``, or a proxy answering JSON in the hub's place.

Every answer from the hub is read with ``read_answer``: at most a limit of
bytes (checked against Content-Length before reading, and while reading, so an
answer without one is cut off too), else ``AnswerTooLarge`` — one sentence,
the connection dropped, memory flat. Each loop treats it as a failed attempt
(logged once, retried with backoff). The limits are sized from the largest
answer the hub legitimately gives (``SYNC_ANSWER_MAX_BYTES``) and can be
raised in the configuration (``answer_max_bytes``).

A hub that answers ``503`` — migrating its database at its start, starting, or
otherwise unavailable — is said once for the whole agent, not once per loop
(``hub_unavailable``): the first loop to meet it logs the hub's own sentence
(which says when to try again), the others say it at DEBUG, and the first
other answer from that hub logs once that it serves again (``hub_answered``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp

from agent.errors import AgentError
from protocol.values import shown

log = logging.getLogger(__name__)

# A sync answer for the largest batch (10,000 events, protocol.MAX_BATCH_EVENTS): every event rejected
# (16-byte id, seq, code, reason of at most ~1 KiB: about 11 MB) plus counts for every key touched
# (location ≤ 32 and SKU ≤ 64 characters, four integers: at most ~430 bytes each, about 4.3 MB), with
# room for the components of bundles. Report answers (≤ 10,000 items) fit in the same bound.
SYNC_ANSWER_MAX_BYTES = 32 << 20
READ_CHUNK_BYTES = 64 << 10
FOLLOW_REDIRECTS = False  # every request to the hub: movements and the token go to hub_url and nowhere else
INTERCEPTED = "intercepted"  # the failure kind (and sync state) of an answer that is not the hub's (not_the_hubs)


def redirected(url: str, status: int, location: str | None) -> str:
    """One sentence for a ``3xx`` answer from the hub: where it points, and that it was not followed."""
    where = repr(location[:200]) if location else "another address"
    return (
        f"the hub at {url} redirects to {where} (HTTP {status}), which this agent does not follow;"
        " set hub_url to the hub's own address"
    )


_TITLE_RE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
HTML_TITLE_MAX_CHARS = 80


def not_the_hubs(url: str, status: int, content_type: str, body: bytes, expected: str) -> str | None:
    """One sentence when an answer cannot be the hub's, else None.

    The hub answers its API in ``expected`` (a 200) or problem details (JSON), never in HTML: an HTML page
    is a captive portal or a proxy answering in the hub's place, and so is a 200 in a type the route never
    has. Named as that, the failure reads as the network's, not as a hub that sends undecodable answers.
    """
    kind = content_type.split(";")[0].strip().lower()
    if kind == "text/html" or body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        title = _TITLE_RE.search(body[: 64 << 10])
        page = "an HTML page" if title is None else "an HTML page titled " + _title(title.group(1))
        return (
            f"{url} was answered by {page} (HTTP {status}), not by the hub: a captive portal, proxy or gateway"
            " between this agent and the hub answers in its place"
        )
    if status == 200 and kind == "application/json" and expected != kind:
        return _foreign_json(url, f"the hub answers this route in {expected}")
    if status == 200 and kind != expected:
        return (
            f"{url} was answered with {shown(kind or 'no content type', 60)} (HTTP 200), not the hub's"
            f" {expected}: something between this agent and the hub answers in its place"
        )
    return None


def not_a_hubs_json(url: str, data: Any, fields: tuple[str, ...]) -> str | None:
    """One sentence when a ``200`` JSON answer lacks a field every hub answer of its route holds, else None.

    The hub always sends ``fields``; JSON without them comes from another service (``hub_url`` names the wrong
    address) or a proxy answering in the hub's place, and is said as that (the caller's kind is ``INTERCEPTED``),
    not as a hub sending a broken answer. A field present with a wrong value is still the hub's (the caller says)."""
    if not isinstance(data, Mapping):
        return _foreign_json(url, f"it is {_json_type(data)}, not an object")
    missing = [name for name in fields if name not in data]
    if not missing:
        return None
    listed = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} or {missing[-1]}"
    return _foreign_json(url, f"it has no {listed}")


def _foreign_json(url: str, detail: str) -> str:
    return (
        f"{url} answered JSON that is not a shelfsync hub's ({detail}): hub_url names another service, or a proxy"
        " answers in the hub's place"
    )


def _json_type(data: Any) -> str:
    names = {list: "a list", str: "a string", bool: "true or false", int: "a number", float: "a number"}
    return "null" if data is None else names.get(type(data), type(data).__name__)


def _title(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", "replace").split())
    return shown(text or "(empty)", HTML_TITLE_MAX_CHARS)


def broken(err: aiohttp.ClientError) -> str:
    """What went wrong with a connection to the hub, in words of this agent's (the caller names the address):
    aiohttp's own messages quote its internals (``<ContentLengthError: 400, …>``, ``[Errno None] Can not write
    request body for …``), which say neither what happened nor that nothing is lost."""
    if isinstance(err, aiohttp.ClientPayloadError):
        return "it broke before the whole answer arrived"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "it was closed before an answer came"
    if isinstance(err, aiohttp.ClientOSError) and not isinstance(err, aiohttp.ClientConnectorError):
        why = f" ({os.strerror(err.errno)})" if err.errno else ""
        return f"it broke while the request was being sent{why}"
    return str(err) or type(err).__name__


# What OpenSSL says when the other end answered a TLS hello with something that is not TLS (plain HTTP)
NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"}
)
PROBE_S = 5.0  # each step of the probe of an address that closed a plain-HTTP request unanswered
PROBE_KEEP_S = 10.0  # the probe's verdict, for every loop of the agent: they fail together when a connection drops


def _base(hub_url: str, scheme: str | None = None) -> str:
    """``hub_url`` with ``scheme`` for its own (a path prefix of a reverse proxy kept)."""
    parts = urlsplit(hub_url.rstrip("/"))
    return parts._replace(scheme=scheme or parts.scheme).geturl()


def _host_port(hub_url: str) -> tuple[str, int]:
    parts = urlsplit(hub_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


async def _answers_plain_http(host: str, port: int) -> bool:
    """Whether a fresh connection to ``host:port`` answers a plain HTTP request with an HTTP status line. No (closed
    unanswered, or something else than HTTP sent back) is how a TLS port meets plain HTTP; no answer within
    ``PROBE_S`` is an address out of reach, and counted as answering: nothing says it speaks TLS."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_S)
    except (OSError, TimeoutError):
        return True
    try:
        writer.write(b"HEAD /healthz HTTP/1.0\r\n\r\n")  # any HTTP server answers it, whatever its name
        await writer.drain()
        first = await asyncio.wait_for(reader.read(len(b"HTTP/")), PROBE_S)
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        writer.transport.abort()
    return first == b"HTTP/"


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether ``host:port`` completes a TLS handshake (its certificate is not checked: only what it speaks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), PROBE_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), PROBE_S)
    return True


async def _tls_only(host: str, port: int) -> bool:
    """Whether ``host:port`` closes plain HTTP unanswered and completes a TLS handshake. The TLS handshake is only
    tried when a fresh plain request is closed too: a connection cut on the way (a NAT table flushed, a proxy
    restarted) is answered on the next one, and a middlebox that reads a TLS hello as the start of a request would
    hold it for the whole ``PROBE_S``, and the loop's retry with it."""
    return not await _answers_plain_http(host, port) and await _speaks_tls(host, port)


# (host, port) -> (the event loop, when, the probe): one probe at a time per address, shared by every loop
_probes: dict[tuple[str, int], tuple[asyncio.AbstractEventLoop, float, asyncio.Future[bool]]] = {}


async def _probed_tls_only(host: str, port: int) -> bool:
    """``_tls_only`` once for every loop of the agent that asks within ``PROBE_KEEP_S`` of the probe's start."""
    running, now = asyncio.get_running_loop(), time.monotonic()
    entry = _probes.get((host, port))
    if entry is None or entry[0] is not running or entry[2].done() and now - entry[1] > PROBE_KEEP_S:
        entry = (running, now, asyncio.ensure_future(_tls_only(host, port)))
        _probes[(host, port)] = entry
    return await asyncio.shield(entry[2])


async def wrong_address(hub_url: str, err: aiohttp.ClientError) -> str | None:
    """One sentence naming what to write in hub_url when ``err`` (a request to the hub at ``hub_url``) shows its
    scheme or port is wrong: https:// to a hub serving plain HTTP, http:// to one serving HTTPS (a connection it
    closed unanswered, then a fresh plain request closed too and a TLS handshake it completes: ``_probed_tls_only``),
    a port nothing listens on. None for anything else."""
    scheme = urlsplit(hub_url).scheme
    host, port = _host_port(hub_url)
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if isinstance(err, aiohttp.ClientConnectorError):
        cause = err.os_error
        if isinstance(cause, ssl.SSLError) and scheme == "https" and cause.reason in NOT_TLS_REASONS:
            return (
                f"the hub at {where} answers plain HTTP, not HTTPS: write {_base(hub_url, 'http')} in hub_url"
                " (or turn on TLS at the hub)"
            )
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"nothing listens at {where} (connection refused): the hub is not running there, or the port in"
                ' hub_url is not the one it serves on (its log says "hub listening on …" at its start)'
            )
        return None
    closed = isinstance(err, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
    if scheme == "http" and closed and await _probed_tls_only(host, port):
        return f"the hub at {where} answers HTTPS, not plain HTTP: write {_base(hub_url, 'https')} in hub_url"
    return None


def not_found(hub_url: str, url: str, message: str) -> str:
    """One sentence for a 404 from ``url``, a route of the hub at ``hub_url``: its path, if it has one, is not
    where a hub answers; without one, what answers there is not a shelfsync hub (another service, another port)."""
    path = urlsplit(hub_url).path.rstrip("/")
    if path:
        root = urlsplit(hub_url)._replace(path="").geturl()
        return (
            f"no shelfsync hub answers under {path} there (HTTP 404): write the hub's address without the path:"
            f" {root} (or, behind a reverse proxy, the prefix it passes to the hub)"
        )
    return (
        f"{url} answered HTTP 404 ({message}): what answers at {hub_url} is not a shelfsync hub;"
        " hub_url names another service or another port"
    )


class AnswerTooLarge(AgentError):
    """The hub's answer was larger than the agent reads; the message is one sentence."""


async def read_answer(resp: aiohttp.ClientResponse, limit_bytes: int, what: str) -> bytes:
    """The body of ``resp``, at most ``limit_bytes``; ``AnswerTooLarge`` (nothing more read) beyond that."""
    declared = resp.content_length
    if declared is not None and declared > limit_bytes:
        resp.close()  # the connection is dropped rather than drained
        raise AnswerTooLarge(_too_large(what, resp, limit_bytes, f"{declared:,} bytes, "))
    body = bytearray()
    async for chunk in resp.content.iter_chunked(READ_CHUNK_BYTES):
        if len(body) + len(chunk) > limit_bytes:
            resp.close()
            raise AnswerTooLarge(_too_large(what, resp, limit_bytes, ""))
        body += chunk
    return bytes(body)


def _too_large(what: str, resp: aiohttp.ClientResponse, limit_bytes: int, size: str) -> str:
    return (
        f"the hub's {what} (HTTP {resp.status}) is {size}more than the {limit_bytes:,} bytes this agent reads"
        " (answer_max_bytes); it was dropped, and the request is tried again with backoff"
    )


_hub_tls: ssl.SSLContext | None = None  # set by use_ca_file; None: the system's CAs check the hub's certificate


def use_ca_file(ca_file: Path | None) -> None:
    """From now on, check the hub's TLS certificate against the CA certificates in ``ca_file`` (PEM; the
    configuration's ``ca_file``) in every connection this process makes to the hub; None: the system's CAs."""
    global _hub_tls
    _hub_tls = None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def hub_connector() -> aiohttp.TCPConnector:
    """A connector for a session with the hub, checking its certificate as ``use_ca_file`` said."""
    return aiohttp.TCPConnector(ssl=True if _hub_tls is None else _hub_tls)


_unavailable: dict[str, str] = {}  # hub (scheme://host:port) -> its 503 sentence, while it answers 503
_lost: dict[str, int] = {}  # hub (scheme://host:port) -> how many times a loop found it not serving (hub_lost)


def _hub(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def hub_unavailable(url: str, message: str) -> int:
    """A loop's request to ``url`` was answered 503 with ``message``: said here at WARNING when the hub was
    serving until now (for all of this agent's loops); the level the loop says its own failure at (DEBUG)."""
    hub = _hub(url)
    hub_lost(url)
    if hub not in _unavailable:
        log.warning("The hub at %s does not serve for now: %s.", hub, message)
    _unavailable[hub] = message
    return logging.DEBUG


def hub_lost(url: str) -> None:
    """A loop could not connect to the hub at ``url``, or it answered 503 (``hub_unavailable``): it may be
    restarting (an upgrade is a restart), so what a loop learned of it (``agent.count_refresh.HubForms``) is
    learned again. A lost answer (a connection cut after the request) is not such a sign."""
    hub = _hub(url)
    _lost[hub] = _lost.get(hub, 0) + 1


def times_lost(url: str) -> int:
    """How many times this agent's loops found the hub at ``url`` not serving (``hub_lost``)."""
    return _lost.get(_hub(url), 0)


def hub_answered(url: str) -> None:
    """A loop's request to ``url`` was answered otherwise than 503: said once when the hub was unavailable."""
    if _unavailable.pop(_hub(url), None) is not None:
        log.info("The hub at %s serves again.", _hub(url))


class HubLoop:
    """A background task and the HTTP session it uses; ``async with`` starts and stops it."""

    timeout_s: float

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        raise NotImplementedError

    def _http(self) -> aiohttp.ClientSession:
        """The session, opened on first use, each request bounded by ``timeout_s``."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), connector=hub_connector()
            )
        return self._session

    def _launch(self, run: Coroutine[Any, Any, None], name: str) -> None:
        self._task = asyncio.create_task(run, name=name)

    async def stop(self) -> None:
        """Stop the loop and close the session. Safe twice; starting again afterwards raises. A loop that had
        ended with an error (a bug: the loops retry every failure they know) raises it here, the session closed."""
        self._stopped = True
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            session, self._session = self._session, None
            if session is not None:
                await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
