"""Who may use the local API: staff PINs (stored hashed), sign-in tokens, and a brake on guessing.

Staff are configured in agent.toml as ``staff_id = "<PIN hash>"`` under
``[localapi.staff]``; ``python -m agent.localapi hash-pin`` makes a hash. A
hash is scrypt (n=2^14, r=8, p=1) over the PIN with a random 16-byte salt:
``scrypt$16384$8$1$<salt base64>$<key base64>``. The PIN itself is never
stored or logged.

Signing in with a staff id and PIN gives a random token (a cookie for the
handheld page, or ``Authorization: Bearer`` for other clients) that expires
after ``login_ttl_s``. Tokens live in memory, hashed: an agent restart signs
everyone out (their open sessions are kept).

Guessing is braked per device (the address a handheld connects from) and
staff id, never globally (``PinBrake``): after ``FAILURES_MAX`` wrong PINs for
one staff id from one device, that staff id is refused *on that device* for
``LOCKOUT_BASE_S``, doubling with each further wrong PIN up to
``LOCKOUT_MAX_S``; a right PIN there resets it. The same staff member signs
in on every other device meanwhile, so a guesser on one handheld cannot lock
anyone out of the others. One device trying many staff ids is braked the same
way after ``DEVICE_FAILURES_MAX`` wrong PINs, whoever it tried. Only PINs
found wrong count; attempts in parallel wait their turn (``PinBrake.attempt``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
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
FAILURES_MAX = 5  # wrong PINs for one staff id from one device before each next one waits
LOCKOUT_BASE_S = 30.0  # the first wait; it doubles with each further wrong PIN
LOCKOUT_MAX_S = 900.0
DEVICE_FAILURES_MAX = 20  # wrong PINs from one device, any staff ids, before it waits the same way
FAILURE_MEMORY_S = 3600.0  # a key with no wrong PIN for this long (and not waiting) starts again from 0
BRAKE_KEYS_MAX = 10_000  # (staff id, device) pairs remembered; the oldest are forgotten beyond this
STAFF_KEY_MAX_LEN = 64
TOKENS_MAX = 10_000  # oldest sign-ins are dropped beyond this


class AuthError(AgentError):
    """A sign-in refused, or a PIN hash that cannot be used; the message is one sentence."""


class LockedOut(AuthError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(
            f"too many wrong PINs for this staff id on this device; try again here in {max(1, round(retry_after_s))} s"
            " (other devices are not affected)"
        )
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


@dataclass(frozen=True, slots=True)
class Failures:
    """Wrong PINs counted under one key, and until when the key must wait (monotonic seconds)."""

    count: int
    last_s: float
    locked_until_s: float


class PinBrake:
    """Wrong-PIN counts and waits per (staff id, device) and per device; never for a staff id everywhere.

    Only a PIN found wrong counts. So that parallel guesses cannot all be checked before the first is counted,
    at most as many attempts per key are checked at once as it has wrong PINs left before it must wait
    (``attempt``); the others wait their turn, and are refused only if the wrong PINs checked meanwhile lock
    the key. A right PIN in parallel with others is thus never refused for attempts still in flight.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: OrderedDict[tuple[str, str], Failures] = OrderedDict()
        self._in_flight: dict[tuple[str, str], int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    @staticmethod
    def keys(staff: str, device: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return (f"staff:{staff[:STAFF_KEY_MAX_LEN]}", device), ("device", device)

    def wait_s(self, staff: str, device: str) -> float:
        """Seconds this staff id must still wait on this device (0: it may try now)."""
        now = self._clock()
        return max((f.locked_until_s - now for k in self.keys(staff, device) if (f := self._keys.get(k))), default=0.0)

    @asynccontextmanager
    async def attempt(self, staff: str, device: str) -> AsyncIterator[Callable[[bool], None]]:
        """Check one PIN within this block, then call what it yields with whether the PIN was right.

        ``LockedOut`` if the key must wait, now or once the attempts ahead of this one are checked. An
        attempt left without a verdict (cancelled, failed) counts as nothing."""
        keys = self.keys(staff, device)
        while True:
            wait_s = self.wait_s(staff, device)
            if wait_s > 0:
                raise LockedOut(wait_s)
            if all(self._in_flight.get(k, 0) < self._left(k, free) for k, free in zip(keys, _FREE, strict=True)):
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        for key in keys:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        verdict: list[bool] = []
        try:
            yield verdict.append
        finally:
            for key in keys:
                if (n := self._in_flight.pop(key) - 1) > 0:
                    self._in_flight[key] = n
            if verdict == [True]:
                self.succeeded(staff, device)
            elif verdict == [False]:
                self.failed(staff, device)
            self._wake()

    def failed(self, staff: str, device: str) -> None:
        """Count one wrong PIN for this staff id on this device, and for the device."""
        for key, free in zip(self.keys(staff, device), _FREE, strict=True):
            self._bump(key, free)

    def succeeded(self, staff: str, device: str) -> None:
        """The PIN was right: this staff id starts again from 0 on this device (the device's count stays)."""
        self._keys.pop(self.keys(staff, device)[0], None)

    def _left(self, key: tuple[str, str], free: int) -> int:
        """Wrong PINs this key may still have before it must wait (1 once a wait is over: each next one waits)."""
        seen = self._keys.get(key)
        if seen is None or self._forgotten(seen, self._clock()):
            return free
        return max(1, free - seen.count)

    @staticmethod
    def _forgotten(seen: Failures, now: float) -> bool:
        return now - seen.last_s >= FAILURE_MEMORY_S and now >= seen.locked_until_s

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _bump(self, key: tuple[str, str], free: int) -> None:
        now = self._clock()
        seen = self._keys.pop(key, None)
        if seen is not None and self._forgotten(seen, now):
            seen = None
        count = 1 if seen is None else seen.count + 1
        wait_s = 0.0 if count < free else min(LOCKOUT_MAX_S, LOCKOUT_BASE_S * 2 ** min(count - free, 30))
        self._keys[key] = Failures(count, now, now + wait_s)
        while len(self._keys) > BRAKE_KEYS_MAX:
            self._keys.popitem(last=False)


_FREE = (FAILURES_MAX, DEVICE_FAILURES_MAX)  # wrong PINs each of PinBrake.keys may have before it waits


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
        self.brake = PinBrake(clock)
        # A wrong staff id costs as much as a wrong PIN, so timing does not tell which staff ids exist.
        self._decoy = PinHash.parse(hash_pin("0000", salt=b"shelfsync-decoy!"))

    @property
    def staff_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._hashes))

    async def sign_in(self, staff: str, pin: str, *, remote: str = "") -> tuple[str, Login]:
        """Check the PIN; return a new token and its login. ``AuthError`` (or ``LockedOut``) otherwise.

        ``remote`` names the device (its address): wrong PINs are braked per device and staff id.
        The hash is computed in a worker thread (it takes tens of milliseconds
        on purpose); the bookkeeping stays on the event loop.
        """
        staff = staff if isinstance(staff, str) else ""
        async with self.brake.attempt(staff, remote) as verdict:
            stored = self._hashes.get(staff)
            ok = isinstance(pin, str) and len(pin) <= PIN_MAX_LEN
            ok = ok and await asyncio.to_thread((stored or self._decoy).matches, pin) and stored is not None
            verdict(ok)
        if not ok:
            raise AuthError("unknown staff id or wrong PIN")
        now = self._clock()
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
