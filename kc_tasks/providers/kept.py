"""How a provider says which fields of its stored bodies redaction keeps (a table, pure data).

A table is a dict: field -> what is kept of it. LEAF: the value, when it is a string, number,
boolean or null. ID: an id, or of an expanded object its `id` alone. A dict: the object, with
only the fields it names. A list of one table: a list, each item by that table. `Kwargs`: task
kwargs (kc_tasks' own webhook), the named ones kept as leaves, `metadata` removed, any other key
kept by name, as null. kc_tasks.payments.redaction applies them; each provider module holds its
own (`KEPT`), and kc_tasks.providers.registry names them.
"""

from __future__ import annotations

from typing import Any

from kc_tasks.providers import KEYS

LEAF = "leaf"
ID = "id"
Table = dict[str, Any]


class Kwargs(dict[str, Any]):
    """A table of task kwargs: the named ones kept as leaves; `metadata` removed (a value that is
    not an object becomes a placeholder, so that an event refused for it stays refused); any other
    key kept by name, as null, so that an event with a kwarg the task refuses stays refused."""


def leaves(*names: str) -> Table:
    return dict.fromkeys(names, LEAF)


# Server-set notes (a Razorpay order's) or metadata (a Stripe session's or PaymentIntent's):
# the student and the course, nothing else.
SERVER_SET: Table = leaves(*KEYS)
