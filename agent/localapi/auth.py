"""Who may use the local API: staff PINs (stored hashed), sign-in tokens, and a brake on guessing.

Staff are configured in agent.toml as ``staff_id = "<PIN hash>"`` under
``[localapi.staff]``; ``python -m agent.localapi hash-pin`` makes a hash. A
hash is scrypt (n=2^14, r=8, p=1) over the PIN with a random 16-byte salt:
``scrypt$16384$8$1$<salt base64>$<key base64>``. The PIN itself is never
stored or logged.

Signing in with a staff id and PIN gives a random token (a cookie for the
handheld page, or ``Authorization: Bearer`` for other clients) that expires
after ``login_ttl_s``. Tokens live in memory, hashed: an agent restart signs
everyone out (their open sessions are kept). After ``FAILURES_MAX`` wrong PINs
in a row for one staff id, or from one address, sign-in is refused for
``LOCKOUT_S`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.errors import AgentError

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
PIN_MIN_LEN = 4
PIN_MAX_LEN = 64
TOKEN_BYTES = 32
LOGIN_TTL_S = 12 * 3600.0
FAILURES_MAX = 5
LOCKOUT_S = 60.0
TOKENS_MAX = 10_000  # oldest sign-ins are dropped beyond this


class AuthError(AgentError):
    """A sign-in refused, or a PIN hash that cannot be used; the message is one sentence."""


class LockedOut(AuthError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong PINs; try again in {max(1, round(retry_after_s))} s")
        self.retry_after_s = retry_after_s


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """The storable hash of ``pin``."""
    check_pin(pin)
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(pin.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_pin(pin: object) -> str:
    if not isinstance(pin, str) or not PIN_MIN_LEN <= len(pin) <= PIN_MAX_LEN or not pin.isprintable():
        raise AuthError(f"a PIN is {PIN_MIN_LEN} to {PIN_MAX_LEN} printable characters")
    return pin


@dataclass(frozen=True, slots=True)
class PinHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PinHash:
        """Read a stored hash; ``AuthError`` says what is wrong with it."""
        parts = text.split("$") if isinstance(text, str) else []
        try:
            if len(parts) != 6 or parts[0] != "scrypt":
                raise ValueError("it is not scrypt$N$r$p$salt$key")
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, key = _unb64(parts[4]), _unb64(parts[5])
            if n < 2 or n & (n - 1) or n > 1 << 20 or not 1 <= r <= 32 or not 1 <= p <= 16 or len(key) < 16:
                raise ValueError("its parameters are out of range")
        except ValueError as err:
            raise AuthError(
                f"the PIN hash is not usable ({err}); make one with `python -m agent.localapi hash-pin`"
            ) from err
        return cls(n, r, p, salt, key)

    def matches(self, pin: str) -> bool:
        try:
            key = hashlib.scrypt(
                pin.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p, dklen=len(self.key), maxmem=256 << 20
            )
        except ValueError:
            return False
        return hmac.compare_digest(key, self.key)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as err:
        raise ValueError("its salt or key is not base64") from err


@dataclass(frozen=True, slots=True)
class Login:
    staff: str
    expires_at: float  # monotonic seconds


class StaffDirectory:
    """Staff PIN hashes, sign-ins and their tokens. One per local API."""

    def __init__(
        self,
        staff: Mapping[str, str],
        *,
        login_ttl_s: float = LOGIN_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hashes = {staff_id: PinHash.parse(h) for staff_id, h in staff.items()}
        self._ttl_s = login_ttl_s
        self._clock = clock
        self._tokens: dict[bytes, Login] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # "staff:<id>" / "addr:<ip>" -> (count, last at)
        # A wrong staff id costs as much as a wrong PIN, so timing does not tell which staff ids exist.
        self._decoy = PinHash.parse(hash_pin("0000", salt=b"shelfsync-decoy!"))

    @property
    def staff_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._hashes))

    async def sign_in(self, staff: str, pin: str, *, remote: str = "") -> tuple[str, Login]:
        """Check the PIN; return a new token and its login. ``AuthError`` (or ``LockedOut``) otherwise.

        The hash is computed in a worker thread (it takes tens of milliseconds
        on purpose); the bookkeeping stays on the event loop.
        """
        keys = (f"staff:{staff}", f"addr:{remote}")
        now = self._clock()
        for key in keys:
            count, at = self._failures.get(key, (0, 0.0))
            if count >= FAILURES_MAX and now - at < LOCKOUT_S:
                raise LockedOut(LOCKOUT_S - (now - at))
        stored = self._hashes.get(staff) if isinstance(staff, str) else None
        ok = isinstance(pin, str) and len(pin) <= PIN_MAX_LEN
        ok = ok and await asyncio.to_thread((stored or self._decoy).matches, pin) and stored is not None
        now = self._clock()
        if not ok:
            for key in keys:
                count, at = self._failures.get(key, (0, 0.0))
                self._failures[key] = (1 if now - at >= LOCKOUT_S else count + 1, now)
            raise AuthError("unknown staff id or wrong PIN")
        for key in keys:
            self._failures.pop(key, None)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        login = Login(staff, now + self._ttl_s)
        if len(self._tokens) >= TOKENS_MAX:
            self._tokens.pop(next(iter(self._tokens)))
        self._tokens[_digest(token)] = login
        return token, login

    def check(self, token: str) -> Login | None:
        """The login of a token, or None if unknown or expired."""
        if not token or len(token) > 256:
            return None
        key = _digest(token)
        login = self._tokens.get(key)
        if login is None:
            return None
        if self._clock() >= login.expires_at:
            del self._tokens[key]
            return None
        return login

    def sign_out(self, token: str) -> bool:
        return self._tokens.pop(_digest(token), None) is not None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
