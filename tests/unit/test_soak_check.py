"""The soak's history check (benchmarks/soak_load.py) finds every kind of violation it reports:
a soak whose check cannot fail would prove nothing."""

from __future__ import annotations

import threading

from benchmarks.soak_load import Writer, check_histories, content_of


def writer(index: int, acked: list[int], uncertain: list[int] = (), refused: list[int] = ()) -> Writer:
    w = Writer(index, "/nonexistent.sock", ["session_a"], threading.Event(), seed=0)
    w.ledgers[0].acked, w.ledgers[0].uncertain, w.ledgers[0].refused = list(acked), list(uncertain), list(refused)
    return w


def history(*items: tuple[int, int]) -> list[str]:
    return [content_of(w, 0, n) for w, n in items]


def test_a_clean_interleaving_of_two_writers_passes_with_uncertain_ones_applied_or_not():
    writers = [writer(0, [1, 2, 4], uncertain=[3, 5]), writer(1, [1, 2])]
    verdict = check_histories({0: history((0, 1), (1, 1), (0, 2), (0, 3), (1, 2), (0, 4))}, writers)
    assert (verdict.acknowledged, verdict.uncertain, verdict.uncertain_applied) == (5, 2, 1)
    assert (verdict.lost, verdict.duplicated, verdict.out_of_order, verdict.foreign) == (0, 0, 0, 0)


def test_a_missing_acknowledged_message_is_lost():
    verdict = check_histories({0: history((0, 1), (0, 3))}, [writer(0, [1, 2, 3])])
    assert verdict.lost == 1 and "#2 is missing" in verdict.examples[0]


def test_two_copies_of_an_acknowledged_or_uncertain_message_are_duplicates_not_disorder():
    verdict = check_histories({0: history((0, 1), (0, 1), (0, 2), (0, 3), (0, 3))},
                              [writer(0, [1, 2], uncertain=[3])])
    assert (verdict.duplicated, verdict.out_of_order) == (2, 0)


def test_a_later_message_before_an_earlier_one_is_out_of_order():
    verdict = check_histories({0: history((0, 2), (0, 1), (0, 3))}, [writer(0, [1, 2, 3])])
    assert (verdict.out_of_order, verdict.lost) == (1, 0)


def test_refused_applied_foreign_and_unreadable_are_each_counted():
    writers = [writer(0, [1], refused=[2])]
    verdict = check_histories({0: history((0, 1), (0, 2)) + ["fuzz-1", content_of(7, 0, 1)], 1: None},
                              writers)
    assert (verdict.refused_but_applied, verdict.foreign, verdict.unreadable_sessions) == (1, 2, 1)
