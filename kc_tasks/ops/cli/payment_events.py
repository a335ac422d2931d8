"""`kc-tasks inbox list | replay | redact`: the payment-provider events as received
(payment_events)."""

from __future__ import annotations

import argparse
import json
import sys

from kc_tasks.core import names
from kc_tasks.ops.cli.common import EXIT_FAILED, Context, duration


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    box = sub.add_parser("inbox", help="payment-provider events as received (payment_events)").add_subparsers(
        required=True, metavar="ACTION"
    )
    p = box.add_parser("list", help="stored events, newest first")
    p.add_argument("--status", choices=names.INBOX_STATUSES)
    p.add_argument("--provider", help="kc, razorpay, stripe, ...")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=listing)
    p = box.add_parser("replay", help="process stored events again, as if just received")
    p.add_argument("provider", metavar="PROVIDER")
    p.add_argument("event_ids", nargs="+", metavar="EVENT_ID")
    p.set_defaults(run=replay)
    p = box.add_parser("redact", help="reduce old final events' bodies to the fields kc_tasks reads")
    p.add_argument(
        "--older-than",
        type=duration,
        metavar="DURATION",
        help="events received before this: 90s, 30m, 12h, 7d (KC_INBOX_BODY_DAYS days)",
    )
    p.set_defaults(run=redact)


def listing(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.payments import inbox

    stored = inbox.listing(ctx.engine, args.status, args.provider, args.limit)
    for event in stored:
        if args.json:
            print(json.dumps(event.as_json(), ensure_ascii=False))
        else:
            print(
                f"{event.received_at:%Y-%m-%d %H:%M:%S}  {event.provider:<9} {event.status:<9} {event.type:<40} "
                f"payment {event.payment_id}  event {event.event_id}"
            )
    if not args.json:
        print(f"{len(stored)} event(s)", file=sys.stderr)
    return 0


def replay(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.payments import inbox

    done = inbox.replay(ctx.engine, ctx.app, args.provider, args.event_ids, ctx.settings.stripe_livemode)
    for event_id, status in done.items():
        print(f"{args.provider} {event_id}: {status}")
    failed = [e for e, status in done.items() if status == "not found" or status == names.RECEIVED]
    return EXIT_FAILED if failed else 0


def redact(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.payments import redaction

    older_than = ctx.settings.inbox_body_days * 86400.0 if args.older_than is None else args.older_than
    done = redaction.redact_final(ctx.engine, older_than, lambda: redaction.dead_lettered_task_ids(ctx.app))
    print(f"redacted {done} event(s)")
    return 0
