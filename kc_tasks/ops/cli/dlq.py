"""`kc-tasks dlq list | show | replay | policy | purge`: the dead-letter queue, purchases.dlq."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from kc_tasks.ops.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, Context, complain, duration

# The command's name, not this module's: operators grep the purge warnings by it.
logger = logging.getLogger("kc_tasks.ops.cli")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="the dead-letter queue, purchases.dlq").add_subparsers(
        required=True, metavar="ACTION"
    )
    p = dlq.add_parser("list", help="list dead letters, oldest first")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=listing)
    p = dlq.add_parser("show", help="one dead letter in full, with its traceback")
    p.add_argument("id", help="dead letter id or task id")
    p.set_defaults(run=show)
    p = dlq.add_parser("replay", help="send the original kwargs back to purchases, then remove the dead letter")
    p.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids or task ids")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p.set_defaults(run=replay)
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
    p.set_defaults(run=policy)
    p = dlq.add_parser("purge", help="delete dead letters")
    p.add_argument(
        "--older-than", type=duration, metavar="DURATION", help="only those older than this: 90s, 30m, 12h, 7d"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=purge)


def listing(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.store import dead_letters

    with dead_letters.hold(ctx.app) as held:
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


def show(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.store import dead_letters

    with dead_letters.hold(ctx.app) as held:
        found = [letter for letter, _ in held if args.id in (letter.id, letter.task_id)]
    if not found:
        return complain(f"no dead letter {args.id} in purchases.dlq")
    for key, value in asdict(found[0]).items():
        if key != "traceback":
            print(f"{key:>14}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")
    print(f"{'age':>14}: {found[0].age()}")
    print(found[0].traceback or "(no traceback)")
    return 0


def replay(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.store import dead_letters

    if not args.ids and not args.all:
        return complain("name dead letters to replay, or --all")
    wanted = set(args.ids)
    replayed, failed = 0, 0
    with dead_letters.hold(ctx.app) as held:
        chosen = [(dl, m) for dl, m in held if args.all or wanted & {dl.id, dl.task_id}]
        for letter, message in chosen:
            problem = dead_letters.replay(ctx.app, letter)
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
        complain(f"no dead letter {name} in purchases.dlq")
    print(f"replayed {replayed} dead letter(s) to purchases" + (f"; {failed} could not be" if failed else ""))
    return EXIT_FAILED if failed or missing else 0


def policy(ctx: Context, args: argparse.Namespace) -> int:
    """RabbitMQ's policies of purchases and purchases.dlq (kc_tasks/ops/rabbitmq.py), through the
    management API of the broker CELERY_BROKER_URL names, node by node."""
    from kc_tasks.core.errors import ManagementUnreachable
    from kc_tasks.ops import rabbitmq

    if ctx.settings.uses_redis:
        print(f"kc-tasks: {rabbitmq.NOT_ON_REDIS}")
        return 0
    try:
        done = rabbitmq.apply_to(ctx.settings.broker_url, args.management_url)
    except ManagementUnreachable as exc:
        return complain(
            f"{exc}. Check that the nodes run the management plugin and that --management-url "
            "(default: port 15672 of each broker host) points at it",
            EXIT_UNREACHABLE,
        )
    for warning in done.warnings():
        complain(warning)
    for line in done.lines():
        print(line)
    mismatch = done.mismatch(ctx.settings.queue_type)
    if mismatch is not None:
        complain(mismatch.text)
        return EXIT_FAILED if mismatch.fatal else 0
    return 0


def purge(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.store import dead_letters

    with dead_letters.hold(ctx.app) as held:
        doomed = [(dl, m) for dl, m in held if args.older_than is None or dl.age_seconds() > args.older_than]
        if not doomed:
            print("nothing to purge")
            return 0
        if not args.yes and not _confirmed(len(doomed)):
            return EXIT_FAILED
        # Recorded first: a purged dead letter is its task's outcome, so its inbox event is final
        # and never sent again (kc_tasks.payments.outcomes). Unrecorded, nothing is purged.
        dead_letters.record_purged(ctx.engine, [dl for dl, _ in doomed])
        for letter, message in doomed:
            message.ack()
            logger.warning("purged dead letter %s (task %s, payment %s)", letter.id, letter.task_id, letter.payment_id)
    print(f"purged {len(doomed)} dead letter(s)")
    return 0


def _confirmed(count: int) -> bool:
    """Whether the operator, asked at a terminal, agrees to delete `count` dead letters; what
    they are told if not."""
    if not sys.stdin.isatty():
        complain(f"{count} dead letter(s) would be deleted; add --yes to confirm")
        return False
    answer = input(f"delete {count} dead letter(s) for good? Each may be a payment without a course. [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        print("nothing purged")
        return False
    return True
