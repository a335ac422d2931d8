"""`kc-tasks dev`: development mode (kc_tasks/ops/dev.py), and `kc-tasks token`: a bearer token
for the read API."""

from __future__ import annotations

import argparse
import uuid

from kc_tasks.ops import dev as dev_mode
from kc_tasks.ops.cli.common import Context, complain, duration


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.set_defaults(run=dev)

    p = sub.add_parser("token", help="print a bearer token for the read API, signed with KC_JWT_SECRET")
    p.add_argument("--student", required=True, help="student UUID (the token's sub)")
    p.add_argument("--ttl", type=duration, default=3600.0, metavar="DURATION", help="lifetime: 90s, 30m, 1h, 7d (1h)")
    p.add_argument("--scope", default="", help="e.g. purchases:read, for a service that reads any student")
    p.set_defaults(run=token)


def dev(ctx: Context, args: argparse.Namespace) -> int:
    providers_port = args.providers_port if args.providers else None
    return dev_mode.run(args.port, args.flower_port, args.embedded_db, args.filesystem_broker, providers_port)


def token(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.web.auth import mint

    settings = ctx.settings
    if not settings.jwt_secret:
        return complain("KC_JWT_SECRET is not set: there is no key to sign a token with")
    try:
        student = str(uuid.UUID(args.student))
    except ValueError:
        return complain(f"--student must be a UUID, got {args.student!r}")
    print(mint(settings.jwt_secret, student, args.ttl, settings.jwt_audience, settings.jwt_issuer, args.scope))
    return 0
