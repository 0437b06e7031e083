"""The Ledger's offset rules (bot.telegram.updates), on a fake clock; the polling loop itself is
exercised with the real PTB in tests/platforms/test_telegram.py and tests/reliability."""

from __future__ import annotations

from telegram import Update

from bot.telegram.updates import MAX_ATTEMPTS, WINDOW, Ledger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def updates(*ids: int) -> list[Update]:
    return [Update(update_id=i) for i in ids]


def test_offset_waits_for_the_oldest_unsettled_update_only() -> None:
    ledger = Ledger(10.0, Clock())
    assert ledger.offset == 0 and not ledger.holding()
    assert [u.update_id for u in ledger.receive(updates(5, 6, 7))] == [5, 6, 7]
    ledger.storing(5)
    ledger.done(6)
    ledger.done(7)
    assert ledger.offset == 5 and ledger.holding()  # 6 and 7 are handled, 5 holds them back
    assert ledger.receive(updates(5, 6, 7, 8)) == updates(8)  # known ones are not re-handled
    ledger.accept(5)
    ledger.done(8)
    assert ledger.offset == 9 and not ledger.holding()
    assert ledger.receive(updates(6)) == []  # below the offset: already confirmed


def test_a_failed_store_is_handled_again_then_given_up() -> None:
    clock = Clock()
    ledger = Ledger(10.0, clock)
    ledger.receive(updates(1, 2))
    ledger.done(2)
    for attempt in range(1, MAX_ATTEMPTS):
        ledger.storing(1)
        assert ledger.fail(1)  # not stored: it will come again
        ledger.done(1)  # the handler returning does not settle it
        assert ledger.offset == 1
        assert ledger.receive(updates(1, 2)) == []  # not before its retry time
        clock.now += attempt * 1.0
        assert ledger.receive(updates(1, 2)) == updates(1)
    ledger.storing(1)
    assert not ledger.fail(1)  # the last attempt: settled, the user gets the error reply
    assert ledger.offset == 3


def test_a_failure_after_storing_or_outside_an_answer_is_not_retried() -> None:
    ledger = Ledger(10.0, Clock())
    ledger.receive(updates(1, 2))
    ledger.storing(1)
    ledger.accept(1)  # the message was stored, then something failed
    assert not ledger.fail(1)
    assert not ledger.fail(2)  # a command: nothing was to be stored
    ledger.done(2)
    assert ledger.offset == 3
    assert not Ledger(10.0).fail(99)  # never polled (process_update in tests)


def test_a_full_window_behind_a_stuck_update_gives_it_up_after_the_timeout() -> None:
    clock = Clock()
    ledger = Ledger(10.0, clock)
    ledger.receive(updates(*range(1, WINDOW + 1)))
    ledger.storing(1)
    for i in range(2, WINDOW + 1):
        ledger.done(i)
    ledger.give_up_oldest()
    assert ledger.offset == 1  # not overdue yet
    clock.now += 10.0
    ledger.give_up_oldest()
    assert ledger.offset == WINDOW + 1
