"""The named groups of statuses follow the transition table they sit next to."""

from __future__ import annotations

from jidocoder.states import ENDING, LIVE, SERVING, TRANSITIONS, SessionStatus


def reachable(start: SessionStatus) -> set[SessionStatus]:
    seen, todo = set(), [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_live_is_every_status_that_can_still_change():
    assert LIVE == {status for status, targets in TRANSITIONS.items() if targets}


def test_serving_is_the_statuses_a_session_can_come_back_to():
    assert SERVING == {status for status in SessionStatus if status in reachable(status)}


def test_ending_is_terminating_and_all_that_follows_it():
    assert ENDING == {SessionStatus.TERMINATING} | reachable(SessionStatus.TERMINATING)


def test_the_groups_are_frozen():
    assert all(isinstance(group, frozenset) for group in (LIVE, SERVING, ENDING))
