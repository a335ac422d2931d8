"""`kc-tasks enqueue` and `kc-tasks revoke`: one task sent by hand, as the payment service sends it,
checked before it is sent."""

from __future__ import annotations

import argparse

from kc_tasks.core import names
from kc_tasks.core.errors import InvalidPurchase, InvalidRevocation
from kc_tasks.core.payload import parse_purchase, parse_revocation
from kc_tasks.core.sending import send
from kc_tasks.ops.cli.common import Context, complain


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("enqueue", help="send one create_purchase, as the payment service does")
    p.add_argument("--student", required=True, help="student UUID")
    p.add_argument("--course", required=True, help="course UUID")
    p.add_argument("--payment", required=True, help="the payment provider's id")
    p.add_argument("--amount", required=True, type=int, help="amount in cents")
    p.add_argument("--currency", required=True, help="ISO 4217 code, e.g. INR")
    p.set_defaults(run=enqueue)

    p = sub.add_parser("revoke", help="send one revoke_purchase: the payment's purchase stops granting the course")
    p.add_argument("--payment", required=True, help="the payment provider's id")
    p.add_argument("--reason", required=True, help="refund, dispute, manual, ...")
    p.add_argument("--refund", help="the provider's refund id, if any")
    p.set_defaults(run=revoke)


def enqueue(ctx: Context, args: argparse.Namespace) -> int:
    kwargs = {
        "payment_id": args.payment,
        "student_id": args.student,
        "course_id": args.course,
        "amount_cents": args.amount,
        "currency": args.currency,
    }
    try:
        parse_purchase(kwargs)
    except InvalidPurchase as exc:
        return complain(str(exc))
    # The task id the webhook would give this payment: enqueued twice, or by hand beside its
    # webhook, it is one task and one purchase.
    print(send(ctx.app, names.CREATE_PURCHASE, kwargs))
    return 0


def revoke(ctx: Context, args: argparse.Namespace) -> int:
    kwargs = {"payment_id": args.payment, "reason": args.reason}
    if args.refund:
        kwargs["refund_id"] = args.refund
    try:
        parse_revocation(kwargs)
    except InvalidRevocation as exc:
        return complain(str(exc))
    print(send(ctx.app, names.REVOKE_PURCHASE, kwargs))
    return 0
