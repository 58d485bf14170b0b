"""Planning a close: what each line becomes, stamped when, with which id — no I/O needed."""

from __future__ import annotations

from agent.sessions import Disposition, Line, Session, SessionSpec, SessionStatus, SessionType, plan_close
from protocol import Kind, pack_hlc

T0_MS = 1_764_061_200_000


def session(spec: SessionSpec, *, zero: bool = False, closed_by: str = "ana") -> Session:
    return Session(
        id="01a2-test", spec=spec, location="S001", status=SessionStatus.CLOSING, by="ana", opened_ms=T0_MS,
        close_hlc=pack_hlc(T0_MS + 600_000, 0), zero_unscanned=zero, closed_by=closed_by,
    )  # fmt: skip


def line(
    no: int, sku: str, qty: int, at_s: int, *, undone: bool = False, disposition: Disposition | None = None
) -> Line:
    at_ms = T0_MS + at_s * 1000
    return Line(
        "01a2-test", no, sku, qty, pack_hlc(at_ms, 0), at_ms, "ana", "handheld", disposition=disposition, undone=undone
    )


def test_a_count_is_stamped_at_the_last_scan_that_still_counts() -> None:
    s = session(SessionSpec(SessionType.COUNT, scope_skus=("A", "B", "C"), bin="R1-04"), zero=True)
    lines = [line(1, "A", 3, 10), line(2, "B", 1, 20), line(3, "A", 2, 30), line(4, "A", 5, 40, undone=True)]
    plan = plan_close(s, lines)
    counts = {m.sku: m for m in plan.movements}
    assert counts["A"].qty == 5 and counts["A"].occurred_at == pack_hlc(
        T0_MS + 30_000, 0
    )  # not the undone scan at 40 s
    assert counts["B"].occurred_at == pack_hlc(T0_MS + 20_000, 0)
    assert (counts["C"].qty, counts["C"].occurred_at) == (0, s.close_hlc)
    assert counts["C"].attrs == {"by": "ana", "session": "01a2-test", "zero_filled": True, "bin": "R1-04"}
    assert all(m.kind is Kind.COUNT and m.ref == "session:01a2-test" for m in plan.movements)


def test_without_zero_fill_unscanned_skus_are_reported_not_booked() -> None:
    s = session(SessionSpec(SessionType.COUNT, scope_skus=("A", "B")))
    plan = plan_close(s, [line(1, "A", 0, 5)])
    assert [(m.sku, m.qty) for m in plan.movements] == [("A", 0)]  # "none here" is a count of 0
    assert [(r.sku, r.status) for r in plan.report.lines] == [("A", "counted"), ("B", "not_counted")]


def test_ids_are_derived_from_session_role_and_sku_and_differ_between_them() -> None:
    s = session(SessionSpec(SessionType.RETURN))
    lines = [line(1, "A", 1, 1), line(2, "A", 2, 2, disposition=Disposition.DAMAGED)]
    first, again = plan_close(s, lines), plan_close(s, list(lines))
    assert first == again
    ids = [m.event_id for m in first.movements]
    assert len(set(ids)) == 3
    other = plan_close(session(SessionSpec(SessionType.RETURN), closed_by="bo"), lines)
    assert [m.event_id for m in other.movements] == ids  # same lines: same ids …
    assert other.movements[0].attrs["closed_by"] == "bo"  # … so a conflicting retry would be refused, not doubled


def test_deltas_are_stamped_at_the_close_and_net_zero_skus_book_nothing() -> None:
    s = session(SessionSpec(SessionType.WRITE_OFF, reason="expired"))
    plan = plan_close(s, [line(1, "A", 2, 1), line(2, "B", 1, 2, undone=True)])
    [m] = plan.movements
    assert (m.sku, m.kind, m.qty, m.reason, m.occurred_at) == ("A", Kind.ADJUST, -2, "expired", s.close_hlc)
    assert plan.report.units == 2
