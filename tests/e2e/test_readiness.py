"""GET /readyz through real uvicorn: `ok`/`unreachable` per dependency and nothing more, on
one pooled broker connection however often it is asked."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.e2e.proxy import Proxy
from tests.harness import Web, wait_until
from tests.services import AMQP

KEYS = {"ready", "database", "broker"}


def test_many_probes_share_one_pooled_broker_connection(database_url: str, webs: Callable[..., Web]) -> None:
    proxy = Proxy("127.0.0.1", 5672)
    proxy.restore()
    try:
        vhost = AMQP.rsplit("/", 1)[1]
        web = webs(database_url, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}")
        for _ in range(30):
            response = httpx.get(web.base + "/readyz", timeout=10)
            assert response.json() == {"ready": True, "database": "ok", "broker": "ok"}
        assert proxy.accepted <= 2, f"{proxy.accepted} AMQP connections for 30 probes"
    finally:
        proxy.cut()


def test_an_unreachable_broker_is_named_without_where_it_is(database_url: str, webs: Callable[..., Web]) -> None:
    proxy = Proxy("127.0.0.1", 5672)
    proxy.restore()
    try:
        vhost = AMQP.rsplit("/", 1)[1]
        web = webs(database_url, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}")
        assert httpx.get(web.base + "/readyz", timeout=10).status_code == 200
        proxy.cut()
        assert wait_until(lambda: httpx.get(web.base + "/readyz", timeout=10).status_code == 503, timeout=30)
        response = httpx.get(web.base + "/readyz", timeout=10)
        assert response.json() == {"ready": False, "database": "ok", "broker": "unreachable"}
        assert "readiness: broker unreachable" in web.text(), "the details are in the log"
        assert "guest:guest" not in web.text(), "no password in the log"
        proxy.restore()
        assert wait_until(lambda: httpx.get(web.base + "/readyz", timeout=10).status_code == 200, timeout=30)
    finally:
        proxy.cut()


def test_an_unreachable_database_is_named_without_host_port_or_error(
    database_url: str, webs: Callable[..., Web]
) -> None:
    proxy = Proxy("127.0.0.1", 5432)
    proxy.restore()
    try:
        web = webs(database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), AMQP)
        proxy.cut()
        assert wait_until(lambda: httpx.get(web.base + "/readyz", timeout=10).status_code == 503, timeout=30)
        response = httpx.get(web.base + "/readyz", timeout=10)
        assert set(response.json()) == KEYS
        assert response.json() == {"ready": False, "database": "unreachable", "broker": "ok"}
        for leak in (str(proxy.port), "127.0.0.1", database_url.rsplit("/", 1)[1], "postgres", "connection"):
            assert leak not in response.text, leak
        assert "readiness: PostgreSQL unreachable" in web.text()
    finally:
        proxy.cut()
