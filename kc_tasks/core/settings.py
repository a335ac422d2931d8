"""Settings: one typed object, read from the environment once per process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from kc_tasks.core.errors import ConfigError

DEFAULT_DATABASE_URL = "postgresql://postgres@localhost:5432/kc_tasks"
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_RAZORPAY_API_URL = "https://api.razorpay.com"
DEFAULT_STRIPE_API_URL = "https://api.stripe.com"
# Broker URLs of Redis: alone, over TLS, or found through its Sentinels (Celery's sentinel://).
REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://")


@dataclass(frozen=True)
class Settings:
    # PostgreSQL, as a SQLAlchemy URL for the psycopg 3 driver; it may point at a transaction
    # pooler (PgBouncer) and may list several hosts (a primary and its standbys).
    database_url: URL
    # Where tasks are published and consumed: amqp:// (RabbitMQ), redis:// or sentinel:// (Redis),
    # or a ;-separated list of them (failover). Not in repr: it may hold a password.
    broker_url: str = field(repr=False)
    # The server reached without a pooler, for the session-level work of `kc-tasks migrate` and
    # `kc-tasks ensure-index` (KC_DIRECT_DATABASE_URL); None: database_url.
    direct_database_url: URL | None = None
    # How long after a task's first attempt a transient failure (a deadlock, a lock timeout, a
    # serialization failure) is still retried, seconds; then the task is dead-lettered. An
    # outage of PostgreSQL spends none of it: the worker stops consuming until it is over.
    retry_horizon: int = 86400
    # An optional cap on the number of those retries; None: only the horizon limits them.
    max_retries: int | None = None
    # Cap of the exponential backoff between retries, in seconds.
    retry_backoff_max: int = 300
    # How long a worker process trusts its last check of unique_active_purchase, seconds.
    index_check_ttl: int = 300
    # Beat period of kc_tasks.verify_purchase_index, seconds.
    index_verify_interval: int = 300
    # How often each worker sweeps leftovers, seconds: publishes the events left unpublished and
    # enqueues the provider events left received (kc_tasks/worker/process.py, sweep_leftovers).
    event_relay_interval: int = 10
    # Beat period of the safety relays kc_tasks.relay_events and relay_inbox, seconds: they
    # catch what no worker swept (no worker running); long, so Flower lists purchases.
    relay_safety_interval: int = 900
    # How many times a task may kill its worker process before it is dead-lettered.
    worker_lost_limit: int = 3
    # How long the last free pool process waits for more purchases to insert with the first,
    # while the others are busy, milliseconds; 0: never.
    batch_hold_ms: int = 2
    # on: create_purchase requests that wait together for a pool process are inserted in one
    # statement (kc_tasks/worker/batching.py, which relies on Celery's private API); off: every
    # request goes Celery's own way, one by one. The escape hatch if a Celery upgrade breaks it.
    batching: bool = True
    # RabbitMQ queue type of `purchases`: classic or quorum.
    queue_type: str = "classic"
    # Log line format: text, or json (one object per line).
    log_format: str = "text"
    # HMAC secret of the payment webhook; the web process refuses to start without it.
    webhook_secret: str = field(default="", repr=False)
    # Razorpay's and Stripe's webhook secrets (comma-separated for rotation); each provider's
    # route is on only while its secret is set.
    razorpay_webhook_secret: str = field(default="", repr=False)
    stripe_webhook_secret: str = field(default="", repr=False)
    # Basic auth of the dead-letters page; the page is off while either is empty.
    admin_user: str = field(default="", repr=False)
    admin_password: str = field(default="", repr=False)
    # Keys of the read API's bearer tokens: an HS256 secret, and/or the identity provider's
    # JWKS (RS256/ES256). With neither, GET /students/{id}/courses answers 401 to everyone.
    jwt_secret: str = field(default="", repr=False)
    jwt_jwks_url: str = ""
    # The `aud` a token must carry, and the `iss` when set.
    jwt_audience: str = "kc_tasks"
    jwt_issuer: str = ""
    # Read-only API keys of the providers, for reconciliation (kc_tasks/payments/reconciler.py) and
    # POST /checkouts/confirm (kc_tasks/web/checkouts.py): Razorpay is reconciled and confirmed only
    # while both of its are set (the key secret also checks Checkout's razorpay_signature),
    # Stripe while its key is.
    razorpay_key_id: str = field(default="", repr=False)
    razorpay_key_secret: str = field(default="", repr=False)
    stripe_api_key: str = field(default="", repr=False)
    # How long POST /checkouts/confirm waits for the purchase before it answers 202 (pending),
    # milliseconds (kc_tasks/web/checkouts.py).
    confirm_wait_ms: int = 3000
    # Base URLs of the providers' APIs (another one in tests).
    razorpay_api_url: str = DEFAULT_RAZORPAY_API_URL
    stripe_api_url: str = DEFAULT_STRIPE_API_URL
    # Beat period of kc_tasks.reconcile_payments, seconds.
    reconcile_interval: int = 900
    # How far back beat's reconciliation looks, seconds: payments, refunds and disputes of
    # these last three days whose webhook never came are still acted on.
    reconcile_window: int = 259200
    # true or false: Stripe events of the other mode (livemode) are stored ignored and act on
    # nothing, so a test endpoint's secret cannot grant a real course; None accepts both.
    stripe_livemode: bool | None = None
    # Days a provider event's body is kept whole; then, once its outcome is final, beat's
    # kc_tasks.redact_inbox reduces it to the fields kc_tasks reads (kc_tasks/payments/redaction.py).
    inbox_body_days: int = 30
    # Ports of the web process's and of the worker's Prometheus metrics (GET /metrics), never the
    # public port; None: no metrics are kept or served (kc_tasks/core/metrics.py).
    web_metrics_port: int | None = None
    worker_metrics_port: int | None = None
    # The address the metrics ports listen on.
    metrics_address: str = "127.0.0.1"
    # With a sentinel:// broker URL: the name of the Redis primary its Sentinels watch (Celery's
    # `master_name` transport option); required then.
    redis_master_name: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=database_url_from_env(env),
            broker_url=env.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL,
            direct_database_url=(
                normalize_database_url(env["KC_DIRECT_DATABASE_URL"], "KC_DIRECT_DATABASE_URL")
                if env.get("KC_DIRECT_DATABASE_URL")
                else None
            ),
            retry_horizon=_int(env, "KC_RETRY_HORIZON", 86400, minimum=1),
            max_retries=_int_or_none(env, "KC_MAX_RETRIES", minimum=0),
            retry_backoff_max=_int(env, "KC_RETRY_BACKOFF_MAX", 300, minimum=1),
            index_check_ttl=_int(env, "KC_INDEX_CHECK_TTL", 300, minimum=0),
            index_verify_interval=_int(env, "KC_INDEX_VERIFY_INTERVAL", 300, minimum=1),
            event_relay_interval=_int(env, "KC_EVENT_RELAY_INTERVAL", 10, minimum=1),
            relay_safety_interval=_int(env, "KC_RELAY_SAFETY_INTERVAL", 900, minimum=1),
            worker_lost_limit=_int(env, "KC_WORKER_LOST_LIMIT", 3, minimum=1),
            batch_hold_ms=_int(env, "KC_BATCH_HOLD_MS", 2, minimum=0, maximum=100),
            batching=_choice(env, "KC_BATCHING", "on", ("on", "off")) == "on",
            queue_type=_choice(env, "KC_QUEUE_TYPE", "classic", ("classic", "quorum")),
            log_format=_choice(env, "KC_LOG_FORMAT", "text", ("text", "json")),
            webhook_secret=env.get("KC_WEBHOOK_SECRET", ""),
            razorpay_webhook_secret=env.get("KC_RAZORPAY_WEBHOOK_SECRET", ""),
            stripe_webhook_secret=env.get("KC_STRIPE_WEBHOOK_SECRET", ""),
            admin_user=env.get("KC_ADMIN_USER", ""),
            admin_password=env.get("KC_ADMIN_PASSWORD", ""),
            jwt_secret=env.get("KC_JWT_SECRET", ""),
            jwt_jwks_url=env.get("KC_JWT_JWKS_URL", ""),
            jwt_audience=env.get("KC_JWT_AUDIENCE") or "kc_tasks",
            jwt_issuer=env.get("KC_JWT_ISSUER", ""),
            razorpay_key_id=env.get("KC_RAZORPAY_KEY_ID", ""),
            razorpay_key_secret=env.get("KC_RAZORPAY_KEY_SECRET", ""),
            stripe_api_key=env.get("KC_STRIPE_API_KEY", ""),
            confirm_wait_ms=_int(env, "KC_CONFIRM_WAIT_MS", 3000, minimum=0, maximum=60000),
            razorpay_api_url=env.get("KC_RAZORPAY_API_URL") or DEFAULT_RAZORPAY_API_URL,
            stripe_api_url=env.get("KC_STRIPE_API_URL") or DEFAULT_STRIPE_API_URL,
            reconcile_interval=_int(env, "KC_RECONCILE_INTERVAL", 900, minimum=1),
            reconcile_window=_int(env, "KC_RECONCILE_WINDOW", 259200, minimum=60),
            stripe_livemode=_bool_or_none(env, "KC_STRIPE_LIVEMODE"),
            inbox_body_days=_int(env, "KC_INBOX_BODY_DAYS", 30, minimum=0),
            web_metrics_port=_port_or_none(env, "KC_WEB_METRICS_PORT"),
            worker_metrics_port=_port_or_none(env, "KC_WORKER_METRICS_PORT"),
            metrics_address=(env.get("KC_METRICS_ADDRESS") or "127.0.0.1").strip(),
            redis_master_name=_redis_master_name(env),
        )

    @property
    def session_database_url(self) -> URL:
        """Where session-level work goes (advisory locks held across statements, CREATE INDEX
        CONCURRENTLY): KC_DIRECT_DATABASE_URL, else DATABASE_URL."""
        return self.direct_database_url or self.database_url

    @property
    def uses_redis(self) -> bool:
        return self.broker_url.startswith(REDIS_SCHEMES)

    @property
    def queue_arguments(self) -> dict[str, str] | None:
        """The RabbitMQ arguments of the service's queues: KC_QUEUE_TYPE=quorum makes them
        replicated queues for a cluster (see README, Scaling out)."""
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else None


def secrets(value: str) -> tuple[str, ...]:
    """A *_WEBHOOK_SECRET's secrets: several, comma-separated, while one is being rotated."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def database_url_from_env(env: Mapping[str, str]) -> URL:
    """DATABASE_URL, else the old worker's POSTGRES_URL, else POSTGRES_HOST & co."""
    for name in ("DATABASE_URL", "POSTGRES_URL"):
        if env.get(name):
            return normalize_database_url(env[name], name)
    if env.get("POSTGRES_HOST"):
        query = {"sslmode": "require"} if env.get("POSTGRES_SSL", "").lower() == "true" else {}
        return URL.create(
            "postgresql+psycopg",
            username=env.get("POSTGRES_USER") or "postgres",
            password=env.get("POSTGRES_PASSWORD") or None,
            host=env["POSTGRES_HOST"],
            port=_int(env, "POSTGRES_PORT", 5432, minimum=1),
            database=env.get("POSTGRES_DB") or "kc_tasks",
            query=query,
        )
    return normalize_database_url(DEFAULT_DATABASE_URL)


def normalize_database_url(raw: str, name: str = "DATABASE_URL") -> URL:
    """Accept postgresql://, postgres:// and postgresql+psycopg://; use psycopg 3.

    Several hosts may be listed as libpq lists them, `postgresql://u@h1:5432,h2:5432/db`, or as
    `?host=h1,h2&port=5432,5432`; both become libpq's own host and port lists, which psycopg
    tries in order (with `target_session_attrs=read-write`, until one takes writes)."""
    # "user:p@ss@host" would be read as host "ss@host": a piece of the password in every
    # connection error. Refused, and never echoed (nor is the parser's message, which would).
    _, scheme_sep, rest = raw.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if scheme_sep and authority.count("@") > 1:
        raise ConfigError(f"{name}: the user or password holds an unencoded '@': percent-encode it (%40)")
    userinfo, at, hosts = authority.rpartition("@")
    if scheme_sep and "," in hosts:
        head = raw[: len(raw) - len(rest)] + userinfo + at  # scheme://user:password@
        raw = head + _host_list_as_query(hosts, rest[len(authority) :], name)
    try:
        url = make_url(raw)
        _ = url.port  # a non-numeric port raises here
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"{name} is not a valid URL (postgresql://user:password@host:port/database; "
            "percent-encode special characters in the password)"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise ConfigError(f"{name} must be a postgresql:// URL, not {url.drivername}://")
    if driver not in ("", "psycopg", "psycopg2"):
        raise ConfigError(f"{name} driver {driver} is not supported; use postgresql:// or postgresql+psycopg://")
    servers(url, name)  # every host named, every port a number
    return url.set(drivername="postgresql+psycopg")


def _host_list_as_query(hosts: str, after: str, name: str) -> str:
    """`h1:p1,h2:p2` and what follows them (`/db?q`) as `/db?q&host=h1,h2&port=p1,p2`."""
    names, ports = [], []
    for n, entry in enumerate(hosts.split(","), 1):
        host, port = _host_and_port(entry)
        if not host:
            raise ConfigError(f"{name}: host {n} of the host list {hosts!r} is empty")
        names.append(host)
        ports.append(port or "5432")
    path, _, query = after.partition("?")
    if "host=" in query or "port=" in query:
        raise ConfigError(f"{name}: list the hosts either before the database or as ?host=...&port=..., not both")
    query = "&".join(q for q in (query, f"host={','.join(names)}", f"port={','.join(ports)}") if q)
    return f"{path or '/'}?{query}"


def _host_and_port(entry: str) -> tuple[str, str]:
    """("h", "5432") of "h:5432", ("::1", "5432") of "[::1]:5432"; the port may be ""."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, tail = entry[1:].partition("]")
        return host, tail.removeprefix(":")
    host, _, port = entry.partition(":")
    return host, port


def servers(url: URL, name: str = "DATABASE_URL") -> list[tuple[str, int]]:
    """The (host, port) of each server the URL names, in libpq's order: the URL's own host, or
    the lists of its `host` and `port` parameters; a socket folder stands for its host."""
    query_hosts = url.query.get("host")
    query_ports = url.query.get("port")
    if query_hosts is None:
        return [(url.host or "localhost", url.port or 5432)]
    hosts = _listed(query_hosts)
    ports = _listed(query_ports) if query_ports is not None else []
    if isinstance(query_hosts, tuple | list):  # ?host=h1:p1&host=h2:p2, SQLAlchemy's own form
        pairs = [_host_and_port(h) for h in hosts]
        hosts, ports = [h for h, _ in pairs], [p for _, p in pairs]
    if len(ports) > 1 and len(ports) != len(hosts):
        raise ConfigError(f"{name} lists {len(hosts)} host(s) but {len(ports)} port(s)")
    found = []
    for n, host in enumerate(hosts):
        port = (ports[n] if len(ports) > 1 else ports[0] if ports else "") or str(url.port or 5432)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}: the port of host {host!r} is not a port number: {port!r}")
        found.append((host or "localhost", int(port)))
    return found


def _listed(value: str | tuple[str, ...] | list[str]) -> list[str]:
    items = list(value) if isinstance(value, tuple | list) else [value]
    return [part.strip() for item in items for part in item.split(",")]


def describe_database(url: URL) -> str:
    """host:port/database (each host of a multi-host URL), the way an operator looks for it;
    never the password."""
    return f"{','.join(f'{h}:{p}' for h, p in servers(url))}/{url.database}"


def redact_url(url: str) -> str:
    """A broker URL (or a ;-separated failover list) with every password masked."""
    masked = []
    for part in url.split(";"):
        try:
            masked.append(str(maybe_sanitize_url(part.strip())))
        except ValueError:
            masked.append(part.strip().rsplit("@", 1)[-1])
    return ";".join(masked)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _int_or_none(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    """A whole number; unset or empty: None."""
    if not (env.get(name) or "").strip():
        return None
    return _int(env, name, 0, minimum=minimum)


def _port_or_none(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port, 1-65535; unset or empty: None."""
    if not (env.get(name) or "").strip():
        return None
    return _int(env, name, 0, minimum=1, maximum=65535)


def _bool_or_none(env: Mapping[str, str], name: str) -> bool | None:
    """true/false; unset or empty: None."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw == "true"


def _redis_master_name(env: Mapping[str, str]) -> str:
    """KC_REDIS_MASTER_NAME; required with a sentinel:// broker URL, which names no primary."""
    name = (env.get("KC_REDIS_MASTER_NAME") or "").strip()
    if not name and (env.get("CELERY_BROKER_URL") or "").strip().startswith("sentinel://"):
        raise ConfigError(
            "KC_REDIS_MASTER_NAME must be set with a sentinel:// CELERY_BROKER_URL: the name of the Redis primary "
            "its Sentinels watch (their `sentinel monitor <name> ...`)"
        )
    return name


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
