"""Wrong PINs are braked per device and staff id, with a wait that grows; never a lockout everywhere."""

from __future__ import annotations

import pytest

from agent.localapi.auth import (
    DEVICE_FAILURES_MAX,
    FAILURES_MAX,
    LOCKOUT_BASE_S,
    LOCKOUT_MAX_S,
    AuthError,
    LockedOut,
    PinBrake,
    StaffDirectory,
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
