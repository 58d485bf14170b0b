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
- the names given (``extra``): the agent's zeroconf name when it announces
  itself, and ``[localapi] allowed_hosts`` for a reverse proxy's name.

A request with no ``Host`` (HTTP/1.0 by hand) comes from no browser and is answered.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable

import ifaddr

from protocol.values import shown

log = logging.getLogger(__name__)

ADDRESSES_REFRESH_S = 30.0
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
    ) -> None:
        self._wildcard = bind_host in WILDCARD_HOSTS
        self._names = {"localhost"} | machine_names() | {host_name(n) for n in extra if n.strip()}
        if not self._wildcard:
            self._names.add(host_name(bind_host))
        self._addresses_of = addresses
        self._clock = clock
        self._addresses: set[str] = set()
        self._looked_s: float | None = None
        self._refused_logged: set[str] = set()

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        host = host_name(header)
        if host in self._names or host.endswith(".localhost"):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or (self._wildcard and self._is_mine(str(address)))

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
