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
way after ``DEVICE_FAILURES_MAX`` wrong PINs, whoever it tried. A device on
the store network takes any address it likes, though (another free one of the
network, any of its IPv6 network's), so one staff id's wrong PINs from every
device it has not signed in on are braked together too, after
``STAFF_FAILURES_MAX`` of them within ``STAFF_FAILURE_MEMORY_S``: a device on
which that staff id signed in rightly since the agent started is not held by
that wait. Only PINs found wrong count; attempts in parallel wait their turn
(``PinBrake.attempt``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from agent.errors import AgentError

log = logging.getLogger(__name__)

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
# Wrong PINs for one staff id from the devices it has not signed in on, all of them together, before each next one
# from such a device waits: a device that takes a new address for each guess passes every per-device brake. A store's
# staff mistype far fewer in a day; a 4-digit PIN guessed from ever new addresses fell in minutes.
STAFF_FAILURES_MAX = 50
STAFF_FAILURE_MEMORY_S = 24 * 3600.0  # a staff id's count across devices starts again after a day without a wrong PIN
KNOWN_DEVICES_MAX = 10_000  # (staff id, device) pairs that signed in rightly, remembered; the oldest forgotten beyond
EVERY_DEVICE = "*"  # the device of a staff id's key across devices (no address reads so)
FAILURE_MEMORY_S = 3600.0  # a key with no wrong PIN for this long (and not waiting) starts again from 0
BRAKE_KEYS_MAX = 10_000  # (staff id, device) pairs remembered; the oldest are forgotten beyond this
STAFF_KEY_MAX_LEN = 64
TOKENS_MAX = 10_000  # oldest sign-ins are dropped beyond this


class AuthError(AgentError):
    """A sign-in refused, or a PIN hash that cannot be used; the message is one sentence."""


class LockedOut(AuthError):
    def __init__(self, retry_after_s: float, *, from_many_devices: bool = False) -> None:
        wait = max(1, round(retry_after_s))
        super().__init__(
            f"too many wrong PINs for this staff id from devices it has not signed in on; try again in {wait} s"
            " (a device this staff id signed in on since the agent started is not affected)"
            if from_many_devices
            else f"too many wrong PINs for this staff id on this device; try again here in {wait} s"
            " (other devices are not affected)"
        )
        self.retry_after_s = retry_after_s


def ascii_digits(pin: str) -> str:
    """``pin`` with each digit of another script as the ASCII digit it is: a phone's numeric keyboard in an Arabic or
    Persian locale types ``٤٧١١`` or ``۴۷۱۱`` for 4711, an input method full-width ``４７１１``."""
    return "".join(c if c.isascii() or (d := unicodedata.decimal(c, None)) is None else str(d) for c in pin)


def device_of(remote: str) -> str:
    """The device a request comes from, by its address: an IPv4 address mapped into IPv6 (a dual-stack socket's
    ``::ffff:192.0.2.7``) is that IPv4 address, so one device is never two to the brake."""
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


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
    """Wrong-PIN counts and waits per (staff id, device), per device, and per staff id across the devices it has not
    signed in on (``known``); never for a staff id on a device it signed in on.

    Only a PIN found wrong counts. So that parallel guesses cannot all be checked before the first is counted,
    at most as many attempts per key are checked at once as it has wrong PINs left before it must wait
    (``attempt``); the others wait their turn, and are refused only if the wrong PINs checked meanwhile lock
    the key. A right PIN in parallel with others is thus never refused for attempts still in flight.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, staff: Iterable[str] = ()) -> None:
        """``staff``: the configured staff ids, whose counts across devices are never forgotten for room."""
        self._clock = clock
        self._keys: OrderedDict[tuple[str, str], Failures] = OrderedDict()
        self._kept = frozenset((_staff_key(s), EVERY_DEVICE) for s in staff)
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()  # (staff key, device) signed in rightly
        self._in_flight: dict[tuple[str, str], int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def keys(self, staff: str, device: str) -> list[tuple[tuple[str, str], int]]:
        """The keys a sign-in of ``staff`` on ``device`` counts under, each with its wrong PINs before a wait."""
        device = device_of(device)
        staff_key = _staff_key(staff)
        keys = [((staff_key, device), FAILURES_MAX), (("device", device), DEVICE_FAILURES_MAX)]
        if (staff_key, device) not in self._known:
            keys.append(((staff_key, EVERY_DEVICE), STAFF_FAILURES_MAX))
        return keys

    def wait_s(self, staff: str, device: str) -> float:
        """Seconds this staff id must still wait on this device (0: it may try now)."""
        return self._wait(staff, device)[0]

    def _wait(self, staff: str, device: str) -> tuple[float, bool]:
        """The wait, and whether it is the staff id's across devices."""
        now = self._clock()
        waits = [
            (f.locked_until_s - now, k[1] == EVERY_DEVICE)
            for k, _ in self.keys(staff, device)
            if (f := self._keys.get(k))
        ]
        return max(waits, default=(0.0, False))

    @asynccontextmanager
    async def attempt(self, staff: str, device: str) -> AsyncIterator[Callable[[bool], None]]:
        """Check one PIN within this block, then call what it yields with whether the PIN was right.

        ``LockedOut`` if the key must wait, now or once the attempts ahead of this one are checked. An
        attempt left without a verdict (cancelled, failed) counts as nothing."""
        while True:
            wait_s, from_many_devices = self._wait(staff, device)
            if wait_s > 0:
                raise LockedOut(wait_s, from_many_devices=from_many_devices)
            counted = self.keys(staff, device)
            if all(self._in_flight.get(k, 0) < self._left(k, free) for k, free in counted):
                keys = [k for k, _ in counted]
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
        """Count one wrong PIN for this staff id on this device, for the device, and for the staff id across the
        devices it has not signed in on (unless this is one it signed in on)."""
        for key, free in self.keys(staff, device):
            self._bump(key, free)

    def succeeded(self, staff: str, device: str) -> None:
        """The PIN was right: this staff id starts again from 0 on this device (the device's count stays), and a wait
        of its own across devices no longer holds it here."""
        pair = self.keys(staff, device)[0][0]
        self._keys.pop(pair, None)
        self._known[pair] = None
        self._known.move_to_end(pair)
        while len(self._known) > KNOWN_DEVICES_MAX:
            self._known.popitem(last=False)

    def _left(self, key: tuple[str, str], free: int) -> int:
        """Wrong PINs this key may still have before it must wait (1 once a wait is over: each next one waits)."""
        seen = self._keys.get(key)
        if seen is None or self._forgotten(seen, self._clock(), key):
            return free
        return max(1, free - seen.count)

    @staticmethod
    def _forgotten(seen: Failures, now: float, key: tuple[str, str]) -> bool:
        memory_s = STAFF_FAILURE_MEMORY_S if key[1] == EVERY_DEVICE else FAILURE_MEMORY_S
        return now - seen.last_s >= memory_s and now >= seen.locked_until_s

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _bump(self, key: tuple[str, str], free: int) -> None:
        now = self._clock()
        seen = self._keys.pop(key, None)
        if seen is not None and self._forgotten(seen, now, key):
            seen = None
        count = 1 if seen is None else seen.count + 1
        wait_s = 0.0 if count < free else min(LOCKOUT_MAX_S, LOCKOUT_BASE_S * 2 ** min(count - free, 30))
        self._keys[key] = Failures(count, now, now + wait_s)
        if key[1] == EVERY_DEVICE and count == free:
            log.warning(
                "Staff id %s had %d wrong PINs from devices it has not signed in on (a PIN guessed from many"
                " addresses?); each further try from such a device waits, first %g s.",
                key[0].removeprefix("staff:"), count, wait_s,
            )  # fmt: skip
        while len(self._keys) > BRAKE_KEYS_MAX:  # the oldest gives way, never a configured staff id's across devices
            oldest = next((k for k in self._keys if k not in self._kept), None)
            if oldest is None:
                break
            del self._keys[oldest]


def _staff_key(staff: str) -> str:
    return f"staff:{staff[:STAFF_KEY_MAX_LEN]}"


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
        self.brake = PinBrake(clock, staff=self._hashes)
        # A wrong staff id costs as much as a wrong PIN, so timing does not tell which staff ids exist.
        self._decoy = PinHash.parse(hash_pin("0000", salt=b"shelfsync-decoy!"))

    @property
    def staff_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._hashes))

    def knows(self, staff: str) -> bool:
        """Whether ``staff`` is a configured staff id."""
        return staff in self._hashes

    async def sign_in(self, staff: str, pin: str, *, remote: str = "") -> tuple[str, Login]:
        """Check the PIN; return a new token and its login. ``AuthError`` (or ``LockedOut``) otherwise.

        ``remote`` names the device (its address): wrong PINs are braked per device and staff id.
        The hash is computed in a worker thread (it takes tens of milliseconds
        on purpose); the bookkeeping stays on the event loop.
        """
        staff = staff if isinstance(staff, str) else ""
        async with self.brake.attempt(staff, remote) as verdict:
            stored = self._hashes.get(staff)
            hashed = stored or self._decoy
            ok = isinstance(pin, str) and len(pin) <= PIN_MAX_LEN
            if ok:
                ok = await asyncio.to_thread(hashed.matches, pin)
                if not ok and (digits := ascii_digits(pin)) != pin:  # one attempt still: counted once below
                    ok = await asyncio.to_thread(hashed.matches, digits)
            ok = ok and stored is not None
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
