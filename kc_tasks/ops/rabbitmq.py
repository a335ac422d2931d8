"""RabbitMQ's policies of `purchases` and `purchases.dlq`, set on the broker CELERY_BROKER_URL
names, through its management HTTP API (`kc-tasks dlq policy`).

Policies, not queue arguments: payment services declare `purchases` without arguments, and
RabbitMQ refuses a redeclaration whose arguments differ; a policy changes nothing there.

- `purchases` (POLICY): what is rejected without requeue, or delivered more often than a
  quorum queue's delivery limit, goes to `purchases.dlq`; from a quorum queue *at least once*
  (`dead-letter-strategy`, which RabbitMQ honours only with `overflow: reject-publish`), so that
  a message the broker dead-letters itself is not lost if a node fails meanwhile; RabbitMQ's
  version 2 storage for a classic queue, whose confirms come sooner, at less CPU
  (docs/benchmark.md). A broker older than 3.10 gets the dead-letter part alone.
- `purchases.dlq` (DLQ_POLICIES): no delivery limit, so that reading dead letters (each read
  is a delivery) never drops one from a quorum DLQ. RabbitMQ 4 gives quorum queues a limit of
  20 and writes "none" as -1; RabbitMQ 3 has no default limit and refuses -1, so there the
  policy (which replaces any broader one with a limit) sets the largest limit it takes.

A broker URL list (`amqp://a;amqp://b`, kombu's failover form) is taken node by node: policies
belong to the whole cluster, so the first node whose API answers is enough. The API is asked
with the URL's user and password, which nothing here ever prints.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

import httpx

from kc_tasks.core import names
from kc_tasks.core.errors import ManagementRefused, ManagementUnreachable

DLQ = names.DEAD_LETTERS
# The name is kept from when it only dead-lettered: set again, it replaces the old definition
# instead of competing with it.
POLICY_NAME = "kc-purchases-dlx"
POLICY_PATTERN = f"^{re.escape(names.PURCHASES)}$"
POLICY_BEFORE_3_10: dict[str, object] = {"dead-letter-exchange": "", "dead-letter-routing-key": DLQ}
POLICY: dict[str, object] = {
    **POLICY_BEFORE_3_10,
    "dead-letter-strategy": "at-least-once",
    "overflow": "reject-publish",
    "queue-version": 2,
}
DLQ_POLICY_NAME = "kc-purchases-dlq"
DLQ_POLICY_PATTERN = f"^{re.escape(names.DEAD_LETTERS)}$"
DLQ_POLICY_PRIORITY = 10
DLQ_POLICIES: tuple[dict[str, object], ...] = ({"delivery-limit": -1}, {"delivery-limit": 2**31 - 1})
# What `kc-tasks dlq policy` says, and does, on a Redis broker: there is no policy to set.
NOT_ON_REDIS = "Redis has no dead-letter exchange; kc_tasks dead-letters in the worker instead"
# What an older RabbitMQ says of a key it does not know, or of -1 as a delivery limit.
OLDER_BROKER = ("not recognised policy settings", "is not a valid delivery limit")

# The management API's port on a node, by the broker URL's scheme (RabbitMQ's defaults).
MANAGEMENT = {"amqp": ("http", 15672), "pyamqp": ("http", 15672), "amqps": ("https", 15671)}
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# httpx logs every request at INFO; what matters is said by `kc-tasks dlq policy` itself.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Node:
    """One node's management API: where (no credentials in it), as whom, and the vhost."""

    api: str  # scheme://host:port[/prefix]
    vhost: str
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Applied:
    """What `apply` did: through which node, which definitions each queue got, and what the
    vhost makes of a queue declared without a type."""

    node: Node
    definition: dict[str, object]
    dlq_definition: dict[str, object]
    default_queue_type: str | None  # None: not set on the vhost
    skipped: tuple[str, ...]  # the nodes before it that did not answer, and why

    def warnings(self) -> list[str]:
        """One line for each node asked before the one that answered."""
        return [
            f"RabbitMQ's management API at {skipped} did not answer; asked the next node" for skipped in self.skipped
        ]

    def lines(self) -> list[str]:
        vhost = self.node.vhost
        older = "" if self.definition == POLICY else (
            " (this RabbitMQ is older than 3.10: no queue version 2, no at-least-once dead-lettering)"
        )  # fmt: skip
        return [
            f"policy {POLICY_NAME} set on vhost {vhost} through {self.node.api}: rejected purchases messages go to "
            f"purchases.dlq, at least once from a quorum queue{older}",
            f"policy {DLQ_POLICY_NAME} set on vhost {vhost}: purchases.dlq delivery limit "
            f"{self.dlq_definition['delivery-limit']} (-1: none): reading dead letters never drops one",
            f"vhost {vhost}: default queue type {self.default_queue_type or 'not set (classic)'}",
        ]

    def mismatch(self, queue_type: str) -> Mismatch | None:
        """What goes wrong between the vhost's default queue type and KC_QUEUE_TYPE, if anything.

        A payment service declares `purchases` without arguments; RabbitMQ gives such a
        declaration the vhost's default type, and refuses it (406 inequivalent arg
        'x-queue-type') when the queue is of another type. So quorum queues want a vhost whose
        default type is quorum; and on such a vhost a classic-configured kc_tasks would create
        `purchases` as a quorum queue and consume it as a classic one (global QoS), which fails."""
        vhost, default = self.node.vhost, self.default_queue_type or "not set (classic)"
        if queue_type == "quorum" and self.default_queue_type != "quorum":
            return Mismatch(
                f"warning: vhost {vhost}'s default queue type is {default}, KC_QUEUE_TYPE is quorum: a payment "
                "service that declares purchases without a type (the contract's send_task line, celery-node) is "
                "refused (406 inequivalent arg 'x-queue-type'). Create the vhost with --default-queue-type quorum "
                "(docs/operating.md, Scaling out)",
                fatal=False,
            )
        if queue_type == "classic" and self.default_queue_type == "quorum":
            return Mismatch(
                f"vhost {vhost}'s default queue type is quorum, KC_QUEUE_TYPE is classic: purchases would be "
                "declared a quorum queue that the worker consumes as a classic one, and fails to. Set "
                "KC_QUEUE_TYPE=quorum",
                fatal=True,
            )
        return None


@dataclass(frozen=True)
class Mismatch:
    text: str
    fatal: bool  # the worker cannot consume: not only the plain clients are refused


def nodes(broker_url: str, management_url: str | None = None) -> list[Node]:
    """The management API of each node of a broker URL (or ;-separated list), in its order;
    or the given management URL(s), with the broker URL's credentials unless they carry their own."""
    brokers = [urlsplit(part.strip()) for part in broker_url.split(";") if part.strip()]
    first = brokers[0]
    if management_url:
        apis = [urlsplit(part.strip()) for part in management_url.split(";") if part.strip()]
        return [
            Node(_base(api.scheme, api.hostname, api.port, api.path), _vhost(first), *_credentials(api, first))
            for api in apis
        ]
    found = []
    for broker in brokers:
        scheme, port = MANAGEMENT.get(broker.scheme, ("http", 15672))
        found.append(Node(_base(scheme, broker.hostname, port, ""), _vhost(broker), *_credentials(broker)))
    return found


def apply_to(broker_url: str, management_url: str | None = None) -> Applied:
    """Both policies set on the broker of `broker_url`, through `management_url` if given: `apply`
    of the `nodes` they name."""
    return apply(nodes(broker_url, management_url))


def apply(candidates: Sequence[Node]) -> Applied:
    """Both policies set through the first node whose API answers; the others are not asked.
    ManagementRefused when RabbitMQ says no (credentials, vhost, a definition it rejects),
    ManagementUnreachable when no node answers."""
    skipped: list[str] = []
    for node in candidates:
        try:
            with httpx.Client(base_url=node.api + "/api", auth=(node.user, node.password), timeout=TIMEOUT) as api:
                definition = _set_first(api, node, POLICY_NAME, POLICY_PATTERN, 0, (POLICY, POLICY_BEFORE_3_10))
                dlq = _set_first(api, node, DLQ_POLICY_NAME, DLQ_POLICY_PATTERN, DLQ_POLICY_PRIORITY, DLQ_POLICIES)
                default_type = _default_queue_type(api, node)
        except (httpx.TransportError, _NodeUnavailable) as exc:
            skipped.append(f"{node.api} ({_describe(exc)})")
            continue
        return Applied(node, definition, dlq, default_type, tuple(skipped))
    raise ManagementUnreachable("no RabbitMQ management API answered: " + "; ".join(skipped))


class _NodeUnavailable(Exception):
    """A node's API answered 5xx (a node starting, stopping, or cut from its cluster)."""


def _set_first(
    api: httpx.Client, node: Node, name: str, pattern: str, priority: int, definitions: Sequence[dict[str, object]]
) -> dict[str, object]:
    """The first of `definitions` this RabbitMQ accepts, set as policy `name`."""
    for n, definition in enumerate(definitions, start=1):
        body = {"pattern": pattern, "definition": definition, "priority": priority, "apply-to": "queues"}
        answer = api.put(f"/policies/{quote(node.vhost, safe='')}/{quote(name, safe='')}", json=body)
        if answer.is_success:
            return definition
        reason = _reason(answer)
        older = answer.status_code == 400 and any(hint in reason for hint in OLDER_BROKER)
        if not older or n == len(definitions):
            raise _refusal(answer, node, f"policy {name}: {reason}")
    raise ValueError("no definition to set")


def _default_queue_type(api: httpx.Client, node: Node) -> str | None:
    """The vhost's default queue type: the type of a queue declared without `x-queue-type`.
    Read from the list of vhosts the user may see (a vhost's own page is for administrators)."""
    answer = api.get("/vhosts")
    if not answer.is_success:
        raise _refusal(answer, node, _reason(answer))
    found: dict[str, Any] = next((v for v in answer.json() if v.get("name") == node.vhost), {})
    value = found.get("default_queue_type") or (found.get("metadata") or {}).get("default_queue_type")
    return None if value in (None, "", "undefined") else str(value)


def _refusal(answer: httpx.Response, node: Node, what: str) -> Exception:
    """The error to raise for an answer that is not a success."""
    if answer.status_code >= 500:
        return _NodeUnavailable(f"HTTP {answer.status_code}")
    if answer.status_code == 401:
        return ManagementRefused(
            f"RabbitMQ's management API at {node.api} refused user {node.user!r}: it needs the "
            "management and policymaker tags (or give --management-url with another user)"
        )
    if "vhost_not_found" in answer.text:
        return ManagementRefused(f"RabbitMQ at {node.api} has no vhost {node.vhost!r}")
    return ManagementRefused(f"RabbitMQ at {node.api} refused {what} (HTTP {answer.status_code})")


def _reason(answer: httpx.Response) -> str:
    try:
        reason = str(answer.json().get("reason", ""))
    except ValueError:
        reason = answer.text[:200]
    return " ".join(html.unescape(reason).split())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _NodeUnavailable) or not str(exc):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _base(scheme: str, host: str | None, port: int | None, path: str) -> str:
    host = host or "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}{f':{port}' if port else ''}{path.rstrip('/')}"


def _vhost(broker: SplitResult) -> str:
    """The vhost of an AMQP URL, as kombu reads it: `amqp://host//` and `amqp://host` are "/"."""
    return unquote(broker.path[1:]) or "/"


def _credentials(url: SplitResult, fallback: SplitResult | None = None) -> tuple[str, str]:
    """The URL's user and password; else the fallback URL's; else RabbitMQ's guest/guest."""
    for source in (url, fallback):
        if source is not None and source.username:
            return unquote(source.username), unquote(source.password or "")
    return "guest", "guest"
