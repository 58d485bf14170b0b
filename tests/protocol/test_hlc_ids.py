from protocol import HybridClock, derived_event_id, event_id_hex, new_event_id, pack_hlc, parse_event_id, unpack_hlc


def test_clock_never_goes_back_when_wall_clock_jumps_back():
    wall = [1_000_000]
    clock = HybridClock(wall_clock_ms=lambda: wall[0])
    first = clock.now()
    wall[0] -= 3_600_000  # an hour back
    second = clock.now()
    third = clock.now()
    assert first < second < third
    assert unpack_hlc(second) == (1_000_000, 1)
    wall[0] = 2_000_000
    assert unpack_hlc(clock.now()) == (2_000_000, 0)


def test_observe_moves_the_clock_past_a_persisted_value():
    clock = HybridClock(wall_clock_ms=lambda: 5)
    clock.observe(pack_hlc(100, 7))
    assert clock.now() == pack_hlc(100, 8)


def test_uuid7_ids_are_time_ordered_and_round_trip():
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert [i[:6] for i in ids] == sorted(i[:6] for i in ids)
    assert ids[0][6] >> 4 == 7
    assert parse_event_id(event_id_hex(ids[0])) == ids[0]


def test_derived_ids_are_stable_per_key_and_carry_the_time():
    a = derived_event_id(1_700_000_000_000, b"pos:square|T1|1")
    assert a == derived_event_id(1_700_000_000_000, b"pos:square|T1|1")
    assert a != derived_event_id(1_700_000_000_000, b"pos:square|T1|2")
    assert int.from_bytes(a[:6], "big") == 1_700_000_000_000
    assert a[6] >> 4 == 8 and a[8] >> 6 == 0b10
