"""Which ``Host`` a request to the local API may name: the agent's own names and addresses, nothing else.

A web page on the internet can make a browser on the store network talk to
the agent by DNS rebinding: its name first resolves to the page's server, then
to the agent's address, and the page's script reads the agent's answers as its
own (the same origin, to the browser). What gives such a request away is its
``Host``: the page's name, not one the agent is reached by. So a request is
answered only when its ``Host`` is

- a loopback name or address (``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``);
- the address the API listens on, or, listening on every interface, any
  address this machine has (looked up again, at most every
  ``ADDRESSES_REFRESH_S``, when an unknown one is asked for: DHCP may change it);
- this machine's name (``socket.gethostname()``), its first label, and that
  label with ``.local`` (mDNS);
- this machine's DNS names (``dns_names``, looked up in a thread when the API
  starts, and again at most every ``NAMES_REFRESH_S`` when an unknown name is
  asked for): its full name (``socket.getfqdn()``), and each name the
  network's reverse DNS gives one of the addresses above that resolves back to
  that address. Not any name that merely resolves to this machine: that is
  exactly what a rebinding page's name does, and its owner sets it. A reverse
  name is set by whoever runs the store network's (or the address owner's) DNS;
- the names given (``extra``): the agent's zeroconf name when it announces
  itself, and ``[localapi] allowed_hosts`` for a reverse proxy's name.

A request with no ``Host`` (HTTP/1.0 by hand) comes from no browser and is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

import ifaddr

from protocol.values import shown

log = logging.getLogger(__name__)

ADDRESSES_REFRESH_S = 30.0
NAMES_REFRESH_S = 300.0  # this machine's DNS names are looked up again at most this often (an unknown name asked)
NAMES_FIRST_WAIT_S = 3.0  # an unknown name asked before the first look-up ended waits for it this long at most
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
REFUSED_LOGGED_MAX = 20  # distinct refused names logged; beyond that they are refused silently


def host_name(header: str) -> str:
    """The host of a ``Host`` header value, without port or brackets, lower case, no trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8471
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def machine_names() -> set[str]:
    """This machine's name, its first label, and that label with ``.local``."""
    name = socket.gethostname().lower().rstrip(".")
    if not name:
        return set()
    label = name.split(".", 1)[0]
    return {name, label, f"{label}.local"}


def dns_names(addresses: Iterable[str]) -> set[str]:
    """This machine's names in DNS: ``socket.getfqdn()``, and each reverse name of one of ``addresses`` (loopback
    and link-local left out) that resolves back to that address. Blocking: run it in a thread."""
    names: set[str] = set()
    with contextlib.suppress(OSError, UnicodeError):
        if fqdn := _name(socket.getfqdn()):
            names.add(fqdn)
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            continue
        try:
            primary, aliases, _ = socket.gethostbyaddr(address)
        except (OSError, UnicodeError):
            continue
        for candidate in {_name(n) for n in (primary, *aliases)} - {""}:
            if address in _resolved(candidate):  # forward-confirmed: the name is this address's in both directions
                names.add(candidate)
    return names


def _name(text: str) -> str:
    name = text.strip().lower().rstrip(".")
    return "" if not name or _is_address(name) else name


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _resolved(name: str) -> set[str]:
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    return {str(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in found}


def machine_addresses() -> set[str]:
    """Every address of every interface of this machine (IPv6 without its scope)."""
    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                found.add(str(ipaddress.ip_address(text.split("%", 1)[0])))
            except ValueError:
                continue
    return found


class HostCheck:
    """Whether a request's ``Host`` names this agent (see the module docstring)."""

    def __init__(
        self,
        bind_host: str,
        extra: Iterable[str] = (),
        *,
        addresses: Callable[[], set[str]] = machine_addresses,
        clock: Callable[[], float] = time.monotonic,
        names_in_dns: Callable[[Iterable[str]], set[str]] | None = None,
    ) -> None:
        """``names_in_dns`` (``dns_names`` for a server; None: no DNS names) is called by ``look_up()``."""
        self._wildcard = bind_host in WILDCARD_HOSTS
        self._names = {"localhost"} | machine_names() | {host_name(n) for n in extra if n.strip()}
        self._bind = host_name(bind_host)
        if not self._wildcard:
            self._names.add(self._bind)
        self._addresses_of = addresses
        self._clock = clock
        self._addresses: set[str] = set()
        self._looked_s: float | None = None
        self._refused_logged: set[str] = set()
        self._names_in_dns = names_in_dns
        self._dns_names: frozenset[str] = frozenset()  # replaced whole when a look-up ends (on the event loop)
        self._lookup: asyncio.Future[None] | None = None
        self._names_looked_s: float | None = None
        self._names_known = False  # a look-up ended at least once

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        host = host_name(header)
        if host in self._names or host in self._dns_names or host.endswith(".localhost"):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or (self._wildcard and self._is_mine(str(address)))

    async def answers(self, header: str | None) -> bool:
        """``allows()``, and for an unknown name, a look-up of this machine's DNS names (at most every
        ``NAMES_REFRESH_S``: they may have changed with its address); waited for, bounded, only while none has
        ended yet, so a handheld's first request by this PC's full name right after a start is answered."""
        if self.allows(header):
            return True
        assert header is not None
        if _is_address(host_name(header)):
            return False
        lookup = self.look_up()
        if lookup is not None and not self._names_known:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lookup), NAMES_FIRST_WAIT_S)
            return self.allows(header)
        return False

    def look_up(self) -> asyncio.Future[None] | None:
        """Start looking up this machine's DNS names in a daemon thread (DNS may hang: nothing waits for it
        unless it chooses to, nor does the agent's exit); the one under way, or None when none is due."""
        if self._names_in_dns is None:
            return None
        if self._lookup is not None and not self._lookup.done():
            return self._lookup
        now = self._clock()
        if self._names_looked_s is not None and now - self._names_looked_s < NAMES_REFRESH_S:
            return None
        self._names_looked_s = now
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        look = self._names_in_dns
        wildcard, bind, addresses_of = self._wildcard, self._bind, self._addresses_of

        def run() -> None:
            names: frozenset[str] | None = None  # a failure keeps the names known
            try:
                names = frozenset(look(addresses_of() if wildcard else {bind}))
            except (OSError, ValueError) as err:
                log.warning("Could not look up this machine's DNS names: %s.", err)
            finally:  # ended, whatever happened: a look-up never stays under way for ever
                with contextlib.suppress(RuntimeError):  # the loop is gone: the agent stopped
                    loop.call_soon_threadsafe(self._looked_up, done, names)

        threading.Thread(target=run, name="shelfsync-host-names", daemon=True).start()
        self._lookup = done
        return done

    def _looked_up(self, done: asyncio.Future[None], names: frozenset[str] | None) -> None:
        if names is not None:
            if new := names - self._dns_names - self._names:
                log.info("The local API answers to this machine's DNS names too: %s.", ", ".join(sorted(new)))
            self._dns_names = names
        self._names_known = True
        if not done.done():
            done.set_result(None)

    def refused(self, header: str, remote: str | None) -> None:
        """Log a refused name, once per name, for the first ``REFUSED_LOGGED_MAX`` names."""
        host = shown(host_name(header), 60)
        if host in self._refused_logged or len(self._refused_logged) >= REFUSED_LOGGED_MAX:
            return
        self._refused_logged.add(host)
        log.warning(
            "Refused a request from %s for host %s, which is not a name of this agent (add it to [localapi]"
            " allowed_hosts if the agent is reached by it).",
            remote, host,
        )  # fmt: skip

    def _is_mine(self, address: str) -> bool:
        now = self._clock()
        if address not in self._addresses and (self._looked_s is None or now - self._looked_s >= ADDRESSES_REFRESH_S):
            self._looked_s = now
            try:
                self._addresses = self._addresses_of()
            except OSError as err:
                log.warning("Could not list this machine's addresses: %s.", err)
        return address in self._addresses
