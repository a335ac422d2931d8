"""The checker itself, on histories made up for it: it must see each way a run can go wrong."""

from __future__ import annotations

from collections import Counter

from tests.faults.checker import History, Outcomes, check

AB = ("student-a", "course-b")


def verdict(accepted: dict[str, int], rows=(), refunds=(), dead=(), uncertain=(), pairs=None):
    history = History(
        accepted=Counter(accepted), uncertain=set(uncertain), publishes=sum(accepted.values()), pairs=pairs or {}
    )
    outcomes = Outcomes(Counter(rows), Counter(refunds), Counter(dead))
    return check(history, outcomes, "made up", "amqp://", faults_injected=0, seconds=0)


def test_one_outcome_each_is_clean() -> None:
    # c is a rival of a: a second payment of the course its student holds by a.
    v = verdict({"a": 1, "b": 2, "c": 1, "d": 1}, rows=["a", "b"], refunds=["c"], dead=["d"], pairs={"a": AB, "c": AB})
    assert (v.lost, v.duplicated, v.unexpected, v.rows_mismatch) == (0, 0, 0, False)
    assert (v.accepted, v.rows, v.refunds, v.dead_letters, v.rows_expected) == (4, 2, 1, 1, 2)


def test_a_refund_where_the_purchase_was_due_is_lost() -> None:
    """A duplicate_payments row is the outcome of a rival payment only: a payment alone in its
    pair (or whose pair holds no row) that ends as one was due a purchase, and has none."""
    alone = verdict({"a": 1}, refunds=["a"])
    assert (alone.lost, alone.examples["lost"]) == (1, ["a"])
    both_refunds = verdict({"a": 1, "c": 1}, refunds=["a", "c"], pairs={"a": AB, "c": AB})
    assert both_refunds.lost == 2, "the pair holds no row: whichever came first was due it"


def test_rows_must_be_one_per_pair_of_the_accepted_payments() -> None:
    assert verdict({"a": 1, "c": 1}, rows=["a", "c"], pairs={"a": AB, "c": AB}).rows_mismatch, "two rows, one pair"
    assert verdict({"a": 1, "b": 1}, rows=["a", "b"]).rows_mismatch is False
    uncertain = verdict({"a": 1}, rows=["a", "u"], uncertain=["u"])
    assert (uncertain.rows_expected, uncertain.rows_expected_max, uncertain.rows_mismatch) == (1, 2, False)
    assert verdict({"a": 1}, dead=["a"]).rows_expected == 0, "a dead letter is due no row"


def test_an_accepted_payment_without_outcome_is_lost() -> None:
    v = verdict({"a": 1, "b": 3}, rows=["a"])
    assert (v.lost, v.examples["lost"]) == (1, ["b"])


def test_two_outcomes_of_one_payment_are_a_duplicate() -> None:
    for outcome in ({"rows": ["a", "a"]}, {"rows": ["a"], "dead": ["a"]}, {"refunds": ["a"], "rows": ["a"]}):
        v = verdict({"a": 2}, **outcome)
        assert (v.lost, v.duplicated) == (0, 1), outcome


def test_an_outcome_of_a_payment_never_published_is_unexpected() -> None:
    v = verdict({"a": 1}, rows=["a", "z"])
    assert (v.unexpected, v.examples["unexpected"]) == (1, ["z"])


def test_an_uncertain_publish_may_end_either_way_but_never_twice() -> None:
    assert verdict({}, uncertain=["u"]).lost == 0
    assert verdict({}, rows=["u"], uncertain=["u"]).unexpected == 0
    assert verdict({}, rows=["u", "u"], uncertain=["u"]).duplicated == 1


def test_a_lost_payment_no_worker_received_is_counted_apart() -> None:
    history = History(accepted=Counter({"a": 1, "b": 1}), publishes=2, task_ids={"a": ["t-a"], "b": ["t-b1", "t-b2"]})
    logs = "Task kc_tasks.create_purchase[t-b2] received\n"
    v = check(history, Outcomes(Counter(), Counter(), Counter()), "made up", "redis://", 0, 0, worker_logs=logs)
    assert (v.lost, v.lost_undelivered) == (2, 1), "b reached a worker (its second delivery); a never did"
    assert verdict({"a": 1}).lost_undelivered == -1, "not looked for without the logs"
