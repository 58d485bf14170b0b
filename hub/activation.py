"""Listening sockets handed over by systemd (socket activation: packaging/systemd/shelfsync-hub.socket).

With a socket unit, systemd holds the hub's listening socket and passes it to every start of the service as file
descriptor 3 (more sockets: 4, 5 …), saying so in ``LISTEN_FDS`` (how many) and ``LISTEN_PID`` (for which
process). While the hub restarts, systemd keeps the socket open: a client's connection waits in the kernel's
queue and the next start of the hub takes it, where without the unit it was refused until the new process bound
the port (about 0.6 s of Python starting).

This is sd_listen_fds(3) as libsystemd does it: the variables count only when ``LISTEN_PID`` is this process (a
child does not take its parent's sockets), and they are removed from the environment once read, whoever they
named, so that no process the hub starts inherits them. The protocol is these few lines; the libraries that
offer it are bindings to libsystemd built from source at install time (``systemd-python``), or do not read
``LISTEN_FDS`` at all (``sdnotify``), so the hub reads it itself and needs nothing on a machine without systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from hub.storage.base import HubError

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first socket systemd passes
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
SOCKET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class ActivationError(HubError):
    """The sockets systemd says it passed cannot be served: the message says what is wrong with the socket unit."""


def listen_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """The file descriptors passed to process ``pid`` (default: this one), empty when none are; the variables
    are removed from ``environ`` (default: ``os.environ``) in every case. ``ActivationError`` for values that
    are not numbers."""
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in ACTIVATION_VARIABLES}  # os.environ.pop also unsets them
    listen_pid, count = values["LISTEN_PID"], values["LISTEN_FDS"]
    if listen_pid is None or count is None:
        return []
    try:
        named = int(listen_pid)
    except ValueError:
        raise ActivationError(f"LISTEN_PID is {listen_pid!r}, not a process id (systemd sets it)") from None
    if named != (os.getpid() if pid is None else pid):
        return []  # meant for another process: the one that started this hub
    try:
        n = int(count)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS is {count!r}, not a number of sockets (systemd sets it)") from None
    if n < 0:
        raise ActivationError(f"LISTEN_FDS is {n}, not a number of sockets (systemd sets it)")
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + n))


def listening_socket(fd: int) -> socket.socket:
    """The listening TCP socket at ``fd``, not inherited by the processes the hub starts; ``ActivationError``
    says why ``fd`` is not one."""
    try:
        sock = socket.socket(fileno=fd)  # its family and type are read from the descriptor
    except OSError as err:
        why = os.strerror(err.errno).lower() if err.errno else str(err)
        raise ActivationError(
            f"systemd passed file descriptor {fd} (LISTEN_FDS), which is not a socket ({why}); the hub's socket "
            "unit needs ListenStream= lines only"
        ) from None
    try:
        if sock.family not in SOCKET_FAMILIES or sock.type != socket.SOCK_STREAM:
            raise ActivationError(
                f"systemd passed file descriptor {fd} (LISTEN_FDS), an {_name(sock.family)} {_name(sock.type)} socket, "
                "not a TCP one; the hub's socket unit needs ListenStream= lines with a port (e.g. 8470 or "
                "0.0.0.0:8470)"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(
                f"systemd passed file descriptor {fd} (LISTEN_FDS), a TCP socket that is not listening (a connection "
                "of Accept=yes?); the hub's socket unit needs Accept=no"
            )
    except BaseException:
        sock.detach()  # not ours to close: the descriptor stays as it was
        raise
    sock.set_inheritable(False)
    return sock


def _name(value: int) -> str:
    """A socket family or type by its name (AF_UNIX, SOCK_DGRAM), else its number."""
    return getattr(value, "name", str(value))


def inherited_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed this process, empty without socket activation (``listen_fds``)."""
    return [listening_socket(fd) for fd in listen_fds(environ)]
