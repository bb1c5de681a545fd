"""Readiness rules of shared/health.py on an injected clock (the process-level behaviour is tested on
real processes in tests/e2e/test_readiness.py)."""

from __future__ import annotations

from ledgergate.shared.health import Health


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        return self.ms


def test_ready_while_the_loop_turns_and_input_moves() -> None:
    clock = Clock()
    h = Health("svc", stall_after_ms=1_000, clock_ms=clock)
    assert h.problems() == [] and h.live()
    h.backlog_is(True)
    clock.ms += 900
    h.progressed()
    clock.ms += 900
    h.turned()
    assert h.problems() == []


def test_waiting_input_that_does_not_move_is_not_ready() -> None:
    clock = Clock()
    h = Health("svc", stall_after_ms=1_000, clock_ms=clock)
    h.backlog_is(True)
    for _ in range(5):
        clock.ms += 500
        h.turned()  # the loop turns (say, retrying a database), but nothing is consumed
    assert h.live()
    assert any("input is waiting" in p for p in h.problems())
    h.progressed()
    assert h.problems() == []


def test_no_input_is_not_a_stall() -> None:
    clock = Clock()
    h = Health("svc", stall_after_ms=1_000, clock_ms=clock)
    for _ in range(5):
        clock.ms += 500
        h.backlog_is(False)
    assert h.problems() == []


def test_a_wedged_loop_is_neither_live_nor_ready_and_a_fatal_error_is_not_ready() -> None:
    clock = Clock()
    h = Health("svc", stall_after_ms=1_000, clock_ms=clock)
    clock.ms += 1_001
    assert not h.live() and any("has not turned" in p for p in h.problems())
    h.turned()
    h.failed("fenced")
    assert h.problems() == ["fatal: fenced"] and not h.live()


def test_a_call_past_its_limit_is_overdue() -> None:
    clock = Clock()
    h = Health("svc", stall_after_ms=1_000, clock_ms=clock)
    with h.call("commit", 5_000):
        clock.ms += 4_000
        assert h.overdue_call() is None
        clock.ms += 2_000
        assert h.overdue_call() == "commit"
    assert h.overdue_call() is None


def test_stalled_time_counts_only_while_input_waits() -> None:
    clock = Clock()
    h = Health("svc", stall_after_ms=1_000, clock_ms=clock)
    clock.ms += 5_000
    h.backlog_is(False)  # the loop checks often: idle time is no stall
    assert h.stalled_ms() == 0
    h.backlog_is(True)
    clock.ms += 3_000
    h.turned()
    assert h.stalled_ms() == 3_000
    h.progressed()
    assert h.stalled_ms() == 0
