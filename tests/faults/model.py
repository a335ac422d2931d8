"""The model of a mixed run: what each payment must end as, and the judgement of the final state.

Each payment of the run (tests/faults/traffic.py) is paid once, through one way in (kc_tasks'
own webhook, Razorpay's, Stripe's, a create_purchase task sent by name, or only the provider's
API, found by reconciliation), and may be refunded or lost in a dispute, or be a rival: a
second payment of a course its student already holds. Its expected end state:

- active: exactly one purchase row, active, and no duplicate_payments row;
- revoked: exactly one purchase row, inactive (the capture came, before or after the refund);
- rival: no purchase row, one duplicate_payments row (the rival is sent only once the payment it
  rivals holds its row); a refunded rival may instead end as one inactive row of its own
  (its refund came first, so it never held the course), never as an active one.

The final state fails the run on a payment **lost** (due active, none active; or a rival with
neither a duplicate record nor a row), **wrongly active** (refunded or disputed, still active),
**doubled** (two rows; a row and a duplicate record; two active purchases of one pair),
**dead-lettered** (every task of the run is valid: a dead letter has no cause), **unexpected**
(a row of a payment the run never made), and rows that are not one per non-rival payment.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from tests.faults.checker import dead_letters
from tests.services import run_sql

ACTIVE, REVOKED, RIVAL = "active", "revoked", "rival"


@dataclass
class Payment:
    payment_id: str
    student: str
    course: str
    # kc, razorpay, stripe, task (create_purchase sent by name), or reconcile-razorpay /
    # reconcile-stripe (only in the provider's API: no webhook ever brings it)
    via: str
    # refund or dispute, when the payment is taken back; None otherwise
    revoked: str | None = None
    # the payment whose course this one pays a second time
    rival_of: str | None = None

    @property
    def expected(self) -> str:
        if self.rival_of:
            return RIVAL
        return REVOKED if self.revoked else ACTIVE


@dataclass
class Final:
    """What the run ended with: purchase rows, duplicate records, dead letters, the inbox."""

    rows: dict[str, list[bool]]
    duplicates: Counter[str]
    dead: Counter[str]
    doubled_pairs: int
    # inbox events by status
    inbox: Counter[str]

    @classmethod
    def read(cls, database_url: str, broker_url: str | None = None) -> Final:
        """The final state; the dead letters too when given the broker (a `kc-tasks` run)."""
        rows: dict[str, list[bool]] = defaultdict(list)
        for payment_id, active in run_sql(
            database_url, "SELECT payment_id, is_active FROM student_course_purchases ORDER BY payment_id"
        ):
            rows[payment_id].append(active)
        duplicates = run_sql(database_url, "SELECT payment_id, count(*) FROM duplicate_payments GROUP BY 1")
        doubled = run_sql(
            database_url,
            "SELECT count(*) FROM (SELECT 1 FROM student_course_purchases WHERE is_active "
            "GROUP BY student_id, course_id HAVING count(*) > 1) AS pairs",
        )[0][0]
        inbox = run_sql(database_url, "SELECT status, count(*) FROM payment_events GROUP BY 1")
        letters = dead_letters(broker_url) if broker_url else []
        return cls(
            dict(rows),
            Counter(dict(duplicates)),
            Counter(str((d.get("kwargs") or {}).get("payment_id")) for d in letters),
            doubled,
            Counter(dict(inbox)),
        )


@dataclass
class Judgement:
    fault: str
    broker: str
    payments: int
    expected: dict[str, int]
    # how the traffic went in: webhook requests answered 2xx, their attempts, connection errors
    # and 503s met on the way; tasks published and confirmed; reconciliation runs
    deliveries: dict[str, int]
    faults_injected: int
    uncertain_publishes: int
    uncertain_bound: int
    rows: int
    rows_expected: int
    duplicates: int
    lost: int = 0
    wrongly_active: int = 0
    doubled: int = 0
    dead_letters: int = 0
    unexpected: int = 0
    inbox_left_received: int = 0
    seconds: float = 0.0
    # what the traffic held: payments by way in, repeats, refunds before captures, rivals...
    traffic: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        found = [
            f"{name} {getattr(self, name)}"
            for name in ("lost", "wrongly_active", "doubled", "dead_letters", "unexpected", "inbox_left_received")
            if getattr(self, name)
        ]
        if self.rows != self.rows_expected:
            found.append(f"rows {self.rows} != {self.rows_expected} (one per payment that is not a rival)")
        if self.uncertain_publishes > self.uncertain_bound:
            found.append(f"uncertain publishes {self.uncertain_publishes} > bound {self.uncertain_bound}")
        return found

    def line(self) -> str:
        figures = {k: v for k, v in asdict(self).items() if k != "examples"}
        return "MIXED " + json.dumps(figures)


def judge(payments: list[Payment], final: Final, **figures: object) -> Judgement:
    """The judgement of `final` against the model of `payments` (figures: the run's counts)."""
    by_id = {p.payment_id: p for p in payments}
    bad: dict[str, list[str]] = defaultdict(list)
    for p in payments:
        rows, duplicates = final.rows.get(p.payment_id, []), final.duplicates[p.payment_id]
        if len(rows) + duplicates > 1:
            bad["doubled"].append(p.payment_id)
        elif p.expected == ACTIVE and rows != [True]:
            bad["lost"].append(p.payment_id)
        elif p.expected == REVOKED and True in rows:
            bad["wrongly_active"].append(p.payment_id)
        elif p.expected == REVOKED and not rows:
            bad["lost"].append(p.payment_id)  # its capture came and made nothing
        elif p.expected == RIVAL and True in rows:
            bad["doubled"].append(p.payment_id)
        elif p.expected == RIVAL and not duplicates and not (p.revoked and rows == [False]):
            bad["lost"].append(p.payment_id)
    unexpected = sorted((set(final.rows) | set(final.duplicates)) - set(by_id))
    rows = sum(len(r) for r in final.rows.values())
    # A refunded rival whose refund came first holds an inactive row of its own: expected too.
    rivals_with_rows = sum(1 for p in payments if p.expected == RIVAL and final.rows.get(p.payment_id) == [False])
    return Judgement(
        payments=len(payments),
        expected=dict(Counter(p.expected for p in payments)),
        rows=rows,
        rows_expected=sum(1 for p in payments if p.expected != RIVAL) + rivals_with_rows,
        duplicates=sum(final.duplicates.values()),
        lost=len(bad["lost"]),
        wrongly_active=len(bad["wrongly_active"]),
        doubled=len(bad["doubled"]) + final.doubled_pairs,
        dead_letters=sum(final.dead.values()),
        unexpected=len(unexpected),
        inbox_left_received=final.inbox["received"],
        examples={
            **{kind: ids[:5] for kind, ids in bad.items()},
            "unexpected": unexpected[:5],
            "dead": sorted(final.dead)[:5],
        },
        **figures,  # type: ignore[arg-type]
    )
