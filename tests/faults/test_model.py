"""The mixed run's model itself, on final states made up for it: it must see each way a payment
can end wrong."""

from __future__ import annotations

from collections import Counter

from tests.faults.model import Final, Judgement, Payment, judge

PAID = Payment("paid", "s1", "c1", "kc")
REFUNDED = Payment("refunded", "s2", "c2", "stripe", revoked="refund")
RIVAL = Payment("rival", "s1", "c1", "task", rival_of="paid")
PAYMENTS = [PAID, REFUNDED, RIVAL]


def judged(rows: dict[str, list[bool]], duplicates=(), dead=(), doubled_pairs=0, received=0, **figures) -> Judgement:
    final = Final(rows, Counter(duplicates), Counter(dead), doubled_pairs, Counter({"received": received}))
    return judge(
        PAYMENTS,
        final,
        **{
            "fault": "made up",
            "broker": "rabbitmq",
            "deliveries": {},
            "faults_injected": 1,
            "uncertain_publishes": 0,
            "uncertain_bound": 0,
            **figures,
        },
    )


def test_each_payment_at_its_expected_end_is_clean() -> None:
    v = judged({"paid": [True], "refunded": [False]}, duplicates=["rival"])
    assert v.failures() == [] and (v.rows, v.rows_expected, v.duplicates) == (2, 2, 1)


def test_a_refunded_rival_whose_refund_came_first_may_hold_an_inactive_row() -> None:
    rival = Payment("rival", "s1", "c1", "task", revoked="refund", rival_of="paid")
    final = Final({"paid": [True], "refunded": [False], "rival": [False]}, Counter(), Counter(), 0, Counter())
    v = judge(
        [PAID, REFUNDED, rival],
        final,
        fault="",
        broker="",
        deliveries={},
        faults_injected=1,
        uncertain_publishes=0,
        uncertain_bound=0,
    )
    assert v.failures() == []


def test_a_paid_payment_without_an_active_purchase_is_lost() -> None:
    for rows in ({"refunded": [False]}, {"paid": [False], "refunded": [False]}):
        v = judged(rows, duplicates=["rival"])
        assert v.lost == 1 and v.examples["lost"] == ["paid"], rows


def test_a_duplicate_record_where_the_purchase_was_due_is_lost_not_an_outcome() -> None:
    v = judged({"refunded": [False]}, duplicates=["paid", "rival"])
    assert v.lost == 1 and v.examples["lost"] == ["paid"]


def test_a_refunded_payment_still_active_is_wrongly_active() -> None:
    v = judged({"paid": [True], "refunded": [True]}, duplicates=["rival"])
    assert v.wrongly_active == 1 and v.examples["wrongly_active"] == ["refunded"]


def test_two_purchases_of_one_payment_or_of_one_course_are_doubled() -> None:
    assert judged({"paid": [True, False], "refunded": [False]}, duplicates=["rival"]).doubled == 1
    assert judged({"paid": [True], "refunded": [False]}, duplicates=["rival", "paid"]).doubled == 1
    rival_bought = judged({"paid": [True], "refunded": [False], "rival": [True]}, doubled_pairs=1)
    assert rival_bought.doubled == 2, "the rival's own purchase, and the student's two active ones"


def test_a_dead_letter_an_unknown_row_or_an_event_left_received_fails() -> None:
    clean = {"paid": [True], "refunded": [False]}
    assert judged(clean, duplicates=["rival"], dead=["paid"]).failures() == ["dead_letters 1"]
    assert judged({**clean, "stranger": [True]}, duplicates=["rival"]).failures() == [
        "unexpected 1",
        "rows 3 != 2 (one per payment that is not a rival)",
    ]
    assert judged(clean, duplicates=["rival"], received=1).failures() == ["inbox_left_received 1"]


def test_uncertain_publishes_beyond_their_bound_fail() -> None:
    clean = {"paid": [True], "refunded": [False]}
    assert judged(clean, duplicates=["rival"], uncertain_publishes=3, uncertain_bound=3).clean
    assert judged(clean, duplicates=["rival"], uncertain_publishes=1, uncertain_bound=0).failures() == [
        "uncertain publishes 1 > bound 0"
    ]
