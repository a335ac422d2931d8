"""The `kc-tasks` command: migrate, ensure-index, enqueue, revoke, inbox, reconcile, payment, token, dlq."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.pool import NullPool

from kc_tasks.core import logs, names
from kc_tasks.core.errors import ConfigError, DatabaseUnavailable, InvalidPurchase, KcTasksError
from kc_tasks.core.settings import Settings, redact_url
from kc_tasks.store import db

logger = logging.getLogger("kc_tasks.ops.cli")

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        return int(args.run(settings, args))
    except ConfigError as exc:
        print(f"kc-tasks: configuration error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DatabaseUnavailable as exc:
        where = db.server_in_use(settings.database_url)
        print(
            f"kc-tasks: cannot reach PostgreSQL at {where}: {exc}. Check that the server is running and that "
            "DATABASE_URL (or POSTGRES_URL / POSTGRES_HOST...) points at it.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except BrokerError as exc:
        print(
            f"kc-tasks: cannot reach the broker at {redact_url(settings.broker_url)}: {exc}. "
            "Check that RabbitMQ (or Redis) is running and that CELERY_BROKER_URL points at it.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except KcTasksError as exc:
        print(f"kc-tasks: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kc-tasks", description="kc_tasks operations")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="create the database if absent and apply pending migrations")
    p.set_defaults(run=_migrate)

    p = sub.add_parser("ensure-index", help="report whether unique_active_purchase is usable, and make it so")
    p.add_argument("--check", action="store_true", help="only report; change nothing")
    p.set_defaults(run=_ensure_index)

    p = sub.add_parser("enqueue", help="send one create_purchase, as the payment service does")
    p.add_argument("--student", required=True, help="student UUID")
    p.add_argument("--course", required=True, help="course UUID")
    p.add_argument("--payment", required=True, help="the payment provider's id")
    p.add_argument("--amount", required=True, type=int, help="amount in cents")
    p.add_argument("--currency", required=True, help="ISO 4217 code, e.g. INR")
    p.set_defaults(run=_enqueue)

    p = sub.add_parser("revoke", help="send one revoke_purchase: the payment's purchase stops granting the course")
    p.add_argument("--payment", required=True, help="the payment provider's id")
    p.add_argument("--reason", required=True, help="refund, dispute, manual, ...")
    p.add_argument("--refund", help="the provider's refund id, if any")
    p.set_defaults(run=_revoke)

    box = sub.add_parser("inbox", help="payment-provider events as received (payment_events)").add_subparsers(
        required=True, metavar="ACTION"
    )
    p = box.add_parser("list", help="stored events, newest first")
    p.add_argument("--status", choices=names.INBOX_STATUSES)
    p.add_argument("--provider", help="kc, razorpay, stripe, ...")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=_inbox_list)
    p = box.add_parser("replay", help="process stored events again, as if just received")
    p.add_argument("provider", metavar="PROVIDER")
    p.add_argument("event_ids", nargs="+", metavar="EVENT_ID")
    p.set_defaults(run=_inbox_replay)
    p = box.add_parser("redact", help="reduce old final events' bodies to the fields kc_tasks reads")
    p.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="events received before this: 90s, 30m, 12h, 7d (KC_INBOX_BODY_DAYS days)",
    )
    p.set_defaults(run=_inbox_redact)

    p = sub.add_parser("reconcile", help="ask the providers' APIs for the window's payments; enqueue what is missing")
    p.add_argument("--provider", choices=("razorpay", "stripe"), help="only this one (default: each whose key is set)")
    p.add_argument(
        "--since", type=_duration, default=86400.0, metavar="DURATION", help="the window: 90s, 30m, 24h, 7d (24h)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what it would do; change nothing")
    p.set_defaults(run=_reconcile)

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
    p.set_defaults(run=_payment)

    p = sub.add_parser("dev", help="development mode: the four processes, with stand-ins for missing services")
    p.add_argument("--port", type=int, default=8000, help="web port (8000)")
    p.add_argument("--flower-port", type=int, default=5555, help="Flower port (5555)")
    p.add_argument("--embedded-db", action="store_true", help="use the embedded PostgreSQL even if one answers")
    p.add_argument("--filesystem-broker", action="store_true", help="use the filesystem broker even if one answers")
    p.add_argument(
        "--providers",
        action="store_true",
        help="serve a stand-in of Razorpay's and Stripe's APIs (orders, sessions, paying them, their webhooks) "
        "and point the processes at it: the checkout story offline",
    )
    p.add_argument("--providers-port", type=int, default=8090, help="the stand-in's port (8090)")
    p.set_defaults(run=_dev)

    p = sub.add_parser("token", help="print a bearer token for the read API, signed with KC_JWT_SECRET")
    p.add_argument("--student", required=True, help="student UUID (the token's sub)")
    p.add_argument("--ttl", type=_duration, default=3600.0, metavar="DURATION", help="lifetime: 90s, 30m, 1h, 7d (1h)")
    p.add_argument("--scope", default="", help="e.g. purchases:read, for a service that reads any student")
    p.set_defaults(run=_token)

    dlq = sub.add_parser("dlq", help="the dead-letter queue, purchases.dlq").add_subparsers(
        required=True, metavar="ACTION"
    )
    p = dlq.add_parser("list", help="list dead letters, oldest first")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=_dlq_list)
    p = dlq.add_parser("show", help="one dead letter in full, with its traceback")
    p.add_argument("id", help="dead letter id or task id")
    p.set_defaults(run=_dlq_show)
    p = dlq.add_parser("replay", help="send the original kwargs back to purchases, then remove the dead letter")
    p.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids or task ids")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p.set_defaults(run=_dlq_replay)
    p = dlq.add_parser(
        "policy",
        help="apply RabbitMQ's policies through its management API: purchases dead-letters to purchases.dlq "
        "(at least once from a quorum queue), version 2 storage; purchases.dlq has no delivery limit",
    )
    p.add_argument(
        "--management-url",
        metavar="URL",
        help="RabbitMQ's management API, or a ;-separated list of them (default: port 15672 of each broker "
        "host, 15671 over https for amqps://); its user and password, if any, replace the broker URL's",
    )
    p.set_defaults(run=_dlq_policy)
    p = dlq.add_parser("purge", help="delete dead letters")
    p.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="only those older than this: 90s, 30m, 12h, 7d"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=_dlq_purge)
    return parser


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.ops import dev

    providers_port = args.providers_port if args.providers else None
    return dev.run(args.port, args.flower_port, args.embedded_db, args.filesystem_broker, providers_port)


def _token(settings: Settings, args: argparse.Namespace) -> int:
    import uuid

    from kc_tasks.web.auth import mint

    if not settings.jwt_secret:
        print("kc-tasks: KC_JWT_SECRET is not set: there is no key to sign a token with", file=sys.stderr)
        return EXIT_FAILED
    try:
        student = str(uuid.UUID(args.student))
    except ValueError:
        print(f"kc-tasks: --student must be a UUID, got {args.student!r}", file=sys.stderr)
        return EXIT_FAILED
    print(mint(settings.jwt_secret, student, args.ttl, settings.jwt_audience, settings.jwt_issuer, args.scope))
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.store.migrate import migrate

    url = settings.session_database_url  # KC_DIRECT_DATABASE_URL, if the other is a pooler's
    applied = migrate(url)
    where = db.server_in_use(url)
    if applied:
        print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        print(f"{where} is up to date")
    return 0


def _ensure_index(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.store.index_guard import FIX_COMMAND, diagnose, ensure_index

    url = settings.session_database_url  # KC_DIRECT_DATABASE_URL, if the other is a pooler's
    engine = db.make_engine(url, poolclass=NullPool)
    try:
        with db.translate_errors(url), engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if args.check:
                status = diagnose(conn)
            else:
                before = diagnose(conn)
                if not before.usable:
                    print(f"{before.describe()} - repairing")
                status, deactivated = ensure_index(conn)
                if deactivated:
                    print(f"deactivated {deactivated} duplicate active purchase(s); the oldest of each stays active")
                if status.usable and not before.usable:
                    print("index created successfully")
    finally:
        engine.dispose()
    if status.usable:
        print(status.describe())
        return 0
    hint = f"; fix: {FIX_COMMAND}" if args.check else ""
    print(f"{status.describe()}{hint}")
    return EXIT_FAILED


def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.core.payload import parse_purchase

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
        print(f"kc-tasks: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from kc_tasks.celery import app
    from kc_tasks.core.sending import send

    # The task id the webhook would give this payment: enqueued twice, or by hand beside its
    # webhook, it is one task and one purchase.
    print(send(app, names.CREATE_PURCHASE, kwargs))
    return 0


def _revoke(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.core.errors import InvalidRevocation
    from kc_tasks.core.payload import parse_revocation

    kwargs = {"payment_id": args.payment, "reason": args.reason}
    if args.refund:
        kwargs["refund_id"] = args.refund
    try:
        parse_revocation(kwargs)
    except InvalidRevocation as exc:
        print(f"kc-tasks: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from kc_tasks.celery import app
    from kc_tasks.core.sending import send

    print(send(app, names.REVOKE_PURCHASE, kwargs))
    return 0


def _inbox_list(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.payments import inbox

    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        stored = inbox.listing(engine, args.status, args.provider, args.limit)
    finally:
        engine.dispose()
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


def _inbox_replay(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.payments import inbox

    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        done = inbox.replay(engine, app, args.provider, args.event_ids, settings.stripe_livemode)
    finally:
        engine.dispose()
    for event_id, status in done.items():
        print(f"{args.provider} {event_id}: {status}")
    failed = [e for e, status in done.items() if status == "not found" or status == names.RECEIVED]
    return EXIT_FAILED if failed else 0


def _inbox_redact(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.payments import redaction

    older_than = settings.inbox_body_days * 86400.0 if args.older_than is None else args.older_than
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        done = redaction.redact_final(engine, older_than, lambda: redaction.dead_lettered_task_ids(app))
    finally:
        engine.dispose()
    print(f"redacted {done} event(s)")
    return 0


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.payments import reconciler

    keys = reconciler.configured(settings)
    providers = (args.provider,) if args.provider else keys
    missing = [p for p in providers if p not in keys]
    if not providers or missing:
        names = ", ".join(missing) or "any provider"
        print(
            f"kc-tasks: no API key for {names}: set KC_RAZORPAY_KEY_ID and KC_RAZORPAY_KEY_SECRET, "
            "or KC_STRIPE_API_KEY (see docs/operating.md, Reconciliation)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    win = reconciler.window(args.since)
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    failed = False
    try:
        for provider in providers:
            summary = reconciler.run_logged(engine, app, settings, provider, win, dry_run=args.dry_run)
            for action in summary.actions:
                print(f"  {provider}: {action}")
            print(summary.line())
            failed = failed or summary.error is not None
    finally:
        engine.dispose()
    return EXIT_FAILED if failed else 0


def _payment(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.payments import story

    if args.restore_id is not None or args.reason is not None:
        if args.payment_id != "restore" or args.restore_id is None or not args.reason:
            print("kc-tasks: usage: kc-tasks payment restore PAYMENT_ID --reason TEXT", file=sys.stderr)
            return EXIT_FAILED
        return _restore(settings, args.restore_id, args.reason)
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        told = story.tell(engine, app, args.payment_id)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(told.as_json(), ensure_ascii=False))
    else:
        print(told.text())
    return 0


def _restore(settings: Settings, payment_id: str, reason: str) -> int:
    """The tables' owner's work: the revocation moves to `restorations` (kc_tasks/worker/restorations.py)."""
    from kc_tasks.core.errors import DatabaseError
    from kc_tasks.worker import restorations

    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        restored = restorations.restore(engine, payment_id, reason)
    except DatabaseError as exc:
        if "InsufficientPrivilege" not in str(exc):
            raise
        print(
            f"kc-tasks: {exc}; payment restore runs as the tables' owner (kc_owner's login, as kc-tasks migrate does)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        engine.dispose()
    refund = f", refund {restored.refund_id}" if restored.refund_id else ""
    print(
        f"purchase {restored.purchase_id} of payment {payment_id} is active again: student {restored.student_id}, "
        f"course {restored.course_id}; revocation ({restored.revocation_reason}{refund}) overruled; "
        f"{restored.event.type} written"
    )
    return 0


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m, 12h or 7d")
    return float(number) * units[unit]


def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.store import dead_letters

    with dead_letters.hold(app) as held:
        letters = [letter for letter, _ in held]
    for letter in letters:
        if args.json:
            print(json.dumps({**asdict(letter), "age_seconds": round(letter.age_seconds(), 3)}, ensure_ascii=False))
        else:
            print(
                f"{letter.id}  {letter.age():>6}  {letter.reason:<24}  task {letter.task_id}  "
                f"payment {letter.payment_id}  {letter.error_type}: {letter.error_message[:100]}"
            )
    if not args.json:
        print(f"{len(letters)} dead letter(s) in purchases.dlq", file=sys.stderr)
    return 0


def _dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.store import dead_letters

    with dead_letters.hold(app) as held:
        found = [letter for letter, _ in held if args.id in (letter.id, letter.task_id)]
    if not found:
        print(f"kc-tasks: no dead letter {args.id} in purchases.dlq", file=sys.stderr)
        return EXIT_FAILED
    for key, value in asdict(found[0]).items():
        if key != "traceback":
            print(f"{key:>14}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")
    print(f"{'age':>14}: {found[0].age()}")
    print(found[0].traceback or "(no traceback)")
    return 0


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.store import dead_letters

    if not args.ids and not args.all:
        print("kc-tasks: name dead letters to replay, or --all", file=sys.stderr)
        return EXIT_FAILED
    wanted = set(args.ids)
    replayed, failed = 0, 0
    with dead_letters.hold(app) as held:
        chosen = [(dl, m) for dl, m in held if args.all or wanted & {dl.id, dl.task_id}]
        for letter, message in chosen:
            problem = dead_letters.replay(app, letter)
            if problem:
                failed += 1
                print(f"not replayed {letter.id}: {problem}", file=sys.stderr)
                continue
            message.ack()  # only now: the broker confirmed the replay
            replayed += 1
            if replayed % 100 == 0:
                print(f"replayed {replayed}/{len(chosen)}", file=sys.stderr)
    missing = wanted - {x for dl, _ in chosen for x in (dl.id, dl.task_id)}
    for name in sorted(missing):
        print(f"kc-tasks: no dead letter {name} in purchases.dlq", file=sys.stderr)
    print(f"replayed {replayed} dead letter(s) to purchases" + (f"; {failed} could not be" if failed else ""))
    return EXIT_FAILED if failed or missing else 0


def _dlq_policy(settings: Settings, args: argparse.Namespace) -> int:
    """RabbitMQ's policies of purchases and purchases.dlq (kc_tasks/ops/rabbitmq.py), through the
    management API of the broker CELERY_BROKER_URL names, node by node."""
    from kc_tasks.core.errors import ManagementUnreachable
    from kc_tasks.ops import rabbitmq

    if settings.uses_redis:
        print("kc-tasks: Redis has no dead-letter exchange; kc_tasks dead-letters in the worker instead")
        return 0
    try:
        done = rabbitmq.apply(rabbitmq.nodes(settings.broker_url, args.management_url))
    except ManagementUnreachable as exc:
        print(f"kc-tasks: {exc}. Check that the nodes run the management plugin and that --management-url "
              "(default: port 15672 of each broker host) points at it", file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    for skipped in done.skipped:
        print(f"kc-tasks: RabbitMQ's management API at {skipped} did not answer; asked the next node", file=sys.stderr)
    for line in done.lines():
        print(line)
    mismatch = done.mismatch(settings.queue_type)
    if mismatch is not None:
        print(f"kc-tasks: {mismatch.text}", file=sys.stderr)
        return EXIT_FAILED if mismatch.fatal else 0
    return 0


def _dlq_purge(settings: Settings, args: argparse.Namespace) -> int:
    from kc_tasks.celery import app
    from kc_tasks.store import dead_letters

    with dead_letters.hold(app) as held:
        doomed = [(dl, m) for dl, m in held if args.older_than is None or dl.age_seconds() > args.older_than]
        if not doomed:
            print("nothing to purge")
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"kc-tasks: {len(doomed)} dead letter(s) would be deleted; add --yes to confirm", file=sys.stderr)
                return EXIT_FAILED
            answer = input(
                f"delete {len(doomed)} dead letter(s) for good? Each may be a payment without a course. [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing purged")
                return EXIT_FAILED
        # Recorded first: a purged dead letter is its task's outcome, so its inbox event is final
        # and never sent again (kc_tasks.payments.outcomes). Unrecorded, nothing is purged.
        dead_letters.record_purged(db.make_engine(settings.database_url, poolclass=NullPool), [dl for dl, _ in doomed])
        for letter, message in doomed:
            message.ack()
            logger.warning("purged dead letter %s (task %s, payment %s)", letter.id, letter.task_id, letter.payment_id)
    print(f"purged {len(doomed)} dead letter(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
