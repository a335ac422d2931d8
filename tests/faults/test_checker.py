"""The checker itself, on histories made up for it: it must see each way a run can go wrong."""

from __future__ import annotations

from collections import Counter

from tests.faults.checker import History, Outcomes, check


def verdict(accepted: dict[str, int], rows=(), refunds=(), dead=(), uncertain=()):
    history = History(accepted=Counter(accepted), uncertain=set(uncertain), publishes=sum(accepted.values()))
    outcomes = Outcomes(Counter(rows), Counter(refunds), Counter(dead))
    return check(history, outcomes, "made up", "amqp://", faults_injected=0, seconds=0)


def test_one_outcome_each_is_clean() -> None:
    v = verdict({"a": 1, "b": 2, "c": 1, "d": 1}, rows=["a", "b"], refunds=["c"], dead=["d"])
    assert (v.lost, v.duplicated, v.unexpected) == (0, 0, 0)
    assert (v.accepted, v.rows, v.refunds, v.dead_letters) == (4, 2, 1, 1)


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
