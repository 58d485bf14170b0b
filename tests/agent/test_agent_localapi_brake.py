"""Wrong PINs are braked per device and staff id, with a wait that grows; never on a device the staff id signed in on."""

from __future__ import annotations

import pytest

from agent.localapi.auth import (
    DEVICE_FAILURES_MAX,
    FAILURES_MAX,
    LOCKOUT_BASE_S,
    LOCKOUT_MAX_S,
    STAFF_FAILURE_MEMORY_S,
    STAFF_FAILURES_MAX,
    AuthError,
    LockedOut,
    PinBrake,
    StaffDirectory,
    device_of,
    hash_pin,
)

ANA = hash_pin("4711")


def test_the_wait_doubles_with_each_wrong_pin_and_is_capped() -> None:
    now = [0.0]
    brake = PinBrake(lambda: now[0])
    waits = []
    for _ in range(FAILURES_MAX + 8):
        brake.failed("ana", "10.0.0.7")
        waits.append(brake.wait_s("ana", "10.0.0.7"))
    assert waits[: FAILURES_MAX - 1] == [0.0] * (FAILURES_MAX - 1)
    assert waits[FAILURES_MAX - 1 : FAILURES_MAX + 2] == [LOCKOUT_BASE_S, 2 * LOCKOUT_BASE_S, 4 * LOCKOUT_BASE_S]
    assert waits[-1] == LOCKOUT_MAX_S
    assert brake.wait_s("ana", "10.0.0.8") == 0.0  # another device: nothing


async def test_a_right_pin_resets_that_device_and_other_devices_never_wait() -> None:
    now = [100.0]
    staff = StaffDirectory({"ana": ANA}, clock=lambda: now[0])
    for _ in range(FAILURES_MAX - 1):
        with pytest.raises(AuthError):
            await staff.sign_in("ana", "0000", remote="10.0.0.7")
    assert (await staff.sign_in("ana", "4711", remote="10.0.0.7"))[1].staff == "ana"
    for _ in range(FAILURES_MAX - 1):  # counting starts again from zero after the right PIN
        with pytest.raises(AuthError) as err:
            await staff.sign_in("ana", "0000", remote="10.0.0.7")
        assert not isinstance(err.value, LockedOut)
    with pytest.raises(AuthError):
        await staff.sign_in("ana", "0000", remote="10.0.0.7")
    with pytest.raises(LockedOut) as locked:
        await staff.sign_in("ana", "4711", remote="10.0.0.7")
    assert locked.value.retry_after_s == pytest.approx(LOCKOUT_BASE_S)
    for device in ("10.0.0.8", "10.0.0.9", ""):
        assert (await staff.sign_in("ana", "4711", remote=device))[1].staff == "ana"


async def test_one_device_trying_many_staff_ids_is_braked_itself() -> None:
    staff = StaffDirectory({"ana": ANA}, clock=lambda: 0.0)
    for i in range(DEVICE_FAILURES_MAX):
        with pytest.raises(AuthError):
            await staff.sign_in(f"guess{i}", "0000", remote="10.0.0.66")
    with pytest.raises(LockedOut):
        await staff.sign_in("ana", "4711", remote="10.0.0.66")
    assert (await staff.sign_in("ana", "4711", remote="10.0.0.5"))[1].staff == "ana"


async def test_one_staff_ids_wrong_pins_from_many_devices_are_braked_together_but_not_where_it_signed_in() -> None:
    now = [0.0]
    staff = StaffDirectory({"ana": ANA}, clock=lambda: now[0])
    await staff.sign_in("ana", "4711", remote="10.0.0.5")  # ana's handheld
    for n in range(STAFF_FAILURES_MAX):  # one guess from each of ever new addresses
        with pytest.raises(AuthError) as err:
            await staff.sign_in("ana", "0000", remote=f"10.0.1.{n}")
        assert not isinstance(err.value, LockedOut)
    for device in ("10.0.2.1", "10.0.2.2"):
        with pytest.raises(LockedOut) as locked:
            await staff.sign_in("ana", "4711", remote=device)
        assert locked.value.retry_after_s == pytest.approx(LOCKOUT_BASE_S)
        assert "from devices it has not signed in on" in str(locked.value)
    assert (await staff.sign_in("ana", "4711", remote="10.0.0.5"))[1].staff == "ana"
    assert (await staff.sign_in("ana", "4711", remote="::ffff:10.0.0.5"))[1].staff == "ana"  # the same device
    now[0] += STAFF_FAILURE_MEMORY_S + LOCKOUT_BASE_S
    assert (await staff.sign_in("ana", "4711", remote="10.0.2.1"))[1].staff == "ana"  # a day on: the count is gone


def test_an_ipv4_device_seen_as_ipv6_is_the_same_device() -> None:
    brake = PinBrake(lambda: 0.0)
    for _ in range(FAILURES_MAX):
        brake.failed("ana", "::ffff:10.0.0.7")
    assert brake.wait_s("ana", "10.0.0.7") == LOCKOUT_BASE_S
    assert device_of("::ffff:10.0.0.7") == "10.0.0.7" and device_of("fe80::1") == "fe80::1"
