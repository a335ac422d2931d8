"""kc_tasks.ops.rabbitmq: which management API each broker URL names, and what an older or a newer
RabbitMQ than the one installed here (3.10) is given. The brokers of other versions cannot run
here: a stand-in answers as their management API does (its refusals are RabbitMQ's words).
Against the real one, three clustered nodes: tests/cluster/test_policy.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kc_tasks.core.errors import ManagementRefused, ManagementUnreachable
from kc_tasks.ops import rabbitmq

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("broker", "management", "expected"),
    [
        pytest.param(
            f"amqp://kc:{SECRET}@rabbit-1:5672/kc;amqp://kc:{SECRET}@rabbit-2:5672/kc",
            None,
            [("http://rabbit-1:15672", "kc", "kc", SECRET), ("http://rabbit-2:15672", "kc", "kc", SECRET)],
            id="list-node-by-node",
        ),
        pytest.param(
            "amqp://guest:guest@localhost:5672//", None, [("http://localhost:15672", "/", "guest", "guest")], id="slash"
        ),
        pytest.param("amqp://rabbit", None, [("http://rabbit:15672", "/", "guest", "guest")], id="no-vhost-no-user"),
        pytest.param(
            f"amqps://kc:{SECRET}@mq.example.com:5671/shop%2Fkc",
            None,
            [("https://mq.example.com:15671", "shop/kc", "kc", SECRET)],
            id="tls-and-encoded-vhost",
        ),
        pytest.param(
            "amqp://kc:p%40ss@[::1]:5672/kc", None, [("http://[::1]:15672", "kc", "kc", "p@ss")], id="ipv6-encoded-pw"
        ),
        pytest.param(
            f"amqp://kc:{SECRET}@rabbit-1/kc;amqp://kc:{SECRET}@rabbit-2/kc",
            "https://mq.example.com/rabbitmq/",
            [("https://mq.example.com/rabbitmq", "kc", "kc", SECRET)],
            id="management-url-broker-credentials",
        ),
        pytest.param(
            f"amqp://kc:{SECRET}@rabbit-1/kc",
            "http://ops:other@rabbit-1:15672;http://ops:other@rabbit-2:15672",
            [("http://rabbit-1:15672", "kc", "ops", "other"), ("http://rabbit-2:15672", "kc", "ops", "other")],
            id="management-urls-own-credentials",
        ),
    ],
)
def test_each_broker_url_names_its_nodes_management_api(
    broker: str, management: str | None, expected: list[tuple[str, str, str, str]]
) -> None:
    found = rabbitmq.nodes(broker, management)
    assert [(n.api, n.vhost, n.user, n.password) for n in found] == expected
    assert SECRET not in repr(found), "a node's password is never in its repr"


class Broker:
    """A stand-in for a RabbitMQ management API: the definitions it refuses, those it keeps."""

    def __init__(self, refuses: tuple[str, ...] = (), status: int | None = None, default_queue_type: str = "") -> None:
        self.refuses, self.status, self.default_queue_type = refuses, status, default_queue_type
        self.policies: dict[str, dict] = {}
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def answer(self, status: int, body: object | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if broker.status:
                    return self.answer(broker.status, {"error": "unavailable", "reason": "node not running"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                unknown = [key for key in body["definition"] if key in broker.refuses]
                if unknown:  # RabbitMQ's words, HTML-escaped as its API sends them
                    listed = ",".join(f'{{&lt;&lt;"{k}"&gt;&gt;,{json.dumps(body["definition"][k])}}}' for k in unknown)
                    reason = f"Validation failed\n\n[{listed}] are not recognised policy settings\n"
                    return self.answer(400, {"error": "bad_request", "reason": reason})
                if body["definition"].get("delivery-limit") == -1 and "-1" in broker.refuses:
                    reason = "Validation failed\n\n-1 is not a valid delivery limit\n"
                    return self.answer(400, {"error": "bad_request", "reason": reason})
                broker.policies[self.path.rsplit("/", 1)[1]] = body["definition"]
                return self.answer(201)

            def do_GET(self) -> None:
                self.answer(200, [{"name": "kc", "default_queue_type": broker.default_queue_type or "undefined"}])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def brokers() -> Iterator[list[Broker]]:
    made: list[Broker] = []
    yield made
    for broker in made:
        broker.close()


def apply(*apis: Broker) -> rabbitmq.Applied:
    return rabbitmq.apply(rabbitmq.nodes(f"amqp://kc:{SECRET}@rabbit/kc", ";".join(b.url for b in apis)))


def test_rabbitmq_4_gets_every_key_and_no_delivery_limit_on_the_dlq(brokers: list[Broker]) -> None:
    brokers.append(Broker(default_queue_type="quorum"))
    done = apply(*brokers)
    assert brokers[0].policies == {"kc-purchases-dlx": rabbitmq.POLICY, "kc-purchases-dlq": {"delivery-limit": -1}}
    assert done.default_queue_type == "quorum" and done.mismatch("quorum") is None


def test_a_rabbitmq_older_than_3_10_gets_the_dead_letter_part_alone(brokers: list[Broker]) -> None:
    """RabbitMQ 3.9 refuses queue-version and dead-letter-strategy, and with them the whole policy."""
    brokers.append(Broker(refuses=("queue-version", "dead-letter-strategy", "-1")))
    done = apply(*brokers)
    assert brokers[0].policies == {
        "kc-purchases-dlx": {"dead-letter-exchange": "", "dead-letter-routing-key": "purchases.dlq"},
        "kc-purchases-dlq": {"delivery-limit": 2**31 - 1},
    }
    assert "this RabbitMQ is older than 3.10" in done.lines()[0]


def test_a_node_answering_5xx_is_passed_over_and_one_refusing_a_policy_is_not(brokers: list[Broker]) -> None:
    brokers.extend([Broker(status=503), Broker()])
    done = apply(*brokers)
    assert done.node.api == brokers[1].url and done.skipped == (f"{brokers[0].url} (HTTP 503)",)
    assert brokers[1].policies["kc-purchases-dlx"] == rabbitmq.POLICY

    brokers.append(Broker(refuses=("dead-letter-exchange",)))
    with pytest.raises(ManagementRefused) as refused:
        apply(brokers[2], brokers[1])
    assert "dead-letter-exchange" in str(refused.value) and "&lt;" not in str(refused.value)

    brokers[1].status = 500
    with pytest.raises(ManagementUnreachable):
        apply(brokers[0], brokers[1])
