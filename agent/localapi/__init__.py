"""The agent's local HTTP API and the handheld page: staff sign in with a PIN, work sessions, see counts.

    staff = StaffDirectory({"ana": hash_pin("4711")})
    context = LocalApiContext(sessions=sessions, outbox=outbox, staff=staff)
    async with LocalApiServer(context, "0.0.0.0", 8471) as server:
        ...   # handhelds open server.url

Routes: docs/agent-api.md.
"""

from agent.localapi.app import COOKIE_NAME, LocalApiContext, create_app
from agent.localapi.auth import AuthError, LockedOut, Login, PinHash, StaffDirectory, hash_pin
from agent.localapi.server import LocalApiServer

__all__ = [
    "COOKIE_NAME",
    "AuthError",
    "LocalApiContext",
    "LocalApiServer",
    "LockedOut",
    "Login",
    "PinHash",
    "StaffDirectory",
    "create_app",
    "hash_pin",
]
