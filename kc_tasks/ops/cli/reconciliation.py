"""`kc-tasks reconcile`: the providers' APIs asked for the window's payments; what kc_tasks
missed is enqueued."""

from __future__ import annotations

import argparse

from kc_tasks.ops.cli.common import EXIT_FAILED, Context, complain, duration


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reconcile", help="ask the providers' APIs for the window's payments; enqueue what is missing")
    p.add_argument("--provider", choices=("razorpay", "stripe"), help="only this one (default: each whose key is set)")
    p.add_argument(
        "--since", type=duration, default=86400.0, metavar="DURATION", help="the window: 90s, 30m, 24h, 7d (24h)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what it would do; change nothing")
    p.set_defaults(run=reconcile)


def reconcile(ctx: Context, args: argparse.Namespace) -> int:
    from kc_tasks.payments import reconciler

    keys = reconciler.configured(ctx.settings)
    providers = (args.provider,) if args.provider else keys
    missing = [p for p in providers if p not in keys]
    if not providers or missing:
        return complain(
            f"no API key for {', '.join(missing) or 'any provider'}: set KC_RAZORPAY_KEY_ID and "
            "KC_RAZORPAY_KEY_SECRET, or KC_STRIPE_API_KEY (see docs/operating.md, Reconciliation)"
        )
    win = reconciler.window(args.since)
    failed = False
    for provider in providers:
        summary = reconciler.run_logged(ctx.engine, ctx.app, ctx.settings, provider, win, dry_run=args.dry_run)
        for action in summary.actions:
            print(f"  {provider}: {action}")
        print(summary.line())
        failed = failed or summary.error is not None
    return EXIT_FAILED if failed else 0
