"""`kc-tasks payment PAYMENT_ID`: one payment's story; `kc-tasks payment restore PAYMENT_ID
--reason TEXT`: its revoked purchase made active again."""

from __future__ import annotations

import argparse
import json

from kc_tasks.ops.cli.common import Context, complain


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "payment",
        help="one payment's story, in time order, and whether it granted the course; "
        "`payment restore PAYMENT_ID --reason TEXT` makes its revoked purchase active again",
        usage="kc-tasks payment PAYMENT_ID [--json]\n       kc-tasks payment restore PAYMENT_ID --reason TEXT",
    )
    p.add_argument("payment_id", metavar="PAYMENT_ID")
    p.add_argument("restore_id", nargs="?", metavar="PAYMENT_ID", help="after `restore`: the payment to restore")
    p.add_argument("--reason", help="with restore: why the course is given back (kept with the restoration)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=payment)


def payment(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.payments import story

    if args.restore_id is not None or args.reason is not None:
        if args.payment_id != "restore" or args.restore_id is None or not args.reason:
            return complain("usage: kc-tasks payment restore PAYMENT_ID --reason TEXT")
        return restore(ctx, args.restore_id, args.reason)
    told = story.tell(ctx.engine, ctx.app, args.payment_id)
    if args.json:
        print(json.dumps(told.as_json(), ensure_ascii=False))
    else:
        print(told.text())
    return 0


def restore(ctx: Context, payment_id: str, reason: str) -> int:
    """The tables' owner's work: the revocation moves to `restorations` (kc_tasks/worker/restorations.py)."""
    from kc_tasks.core.errors import DatabaseError
    from kc_tasks.worker import restorations

    try:
        restored = restorations.restore(ctx.engine, payment_id, reason)
    except DatabaseError as exc:
        if "InsufficientPrivilege" not in str(exc):
            raise
        return complain(
            f"{exc}; payment restore runs as the tables' owner (kc_owner's login, as kc-tasks migrate does)"
        )
    refund = f", refund {restored.refund_id}" if restored.refund_id else ""
    print(
        f"purchase {restored.purchase_id} of payment {payment_id} is active again: student {restored.student_id}, "
        f"course {restored.course_id}; revocation ({restored.revocation_reason}{refund}) overruled; "
        f"{restored.event.type} written"
    )
    return 0
