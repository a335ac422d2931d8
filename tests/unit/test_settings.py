"""Settings read from the environment: the contract's defaults, the accepted forms, the refusals."""

from __future__ import annotations

import pytest

from kc_tasks.core.errors import ConfigError
from kc_tasks.core.settings import Settings, describe_database, redact_url

SECRET = "s3cr3t-pw"


def url_of(env: dict[str, str]) -> str:
    return Settings.from_env(env).database_url.render_as_string(hide_password=False)


def test_defaults_are_those_of_the_contract() -> None:
    settings = Settings.from_env({})

    assert url_of({}) == "postgresql+psycopg://postgres@localhost:5432/kc_tasks"
    assert settings.broker_url == "amqp://guest:guest@localhost:5672//"
    assert not settings.uses_redis
    assert settings.retry_horizon == 86400, "a day after the first attempt"
    assert settings.max_retries is None, "unset: only the horizon limits retries"
    assert settings.direct_database_url is None
    assert settings.session_database_url == settings.database_url
    assert settings.retry_backoff_max == 300
    assert settings.index_check_ttl == 300
    assert settings.index_verify_interval == 300
    assert settings.queue_type == "classic"
    assert settings.log_format == "text"
    assert settings.batch_hold_ms == 2
    assert settings.stripe_livemode is None, "unset: Stripe events of both modes are taken"
    assert settings.reconcile_window == 259200
    assert settings.inbox_body_days == 30
    assert settings.web_metrics_port is None, "unset: the web process serves no metrics"
    assert settings.worker_metrics_port is None, "unset: the worker serves no metrics"
    assert settings.metrics_address == "127.0.0.1"


def test_empty_variables_count_as_unset() -> None:
    empty = dict.fromkeys(
        (
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "KC_MAX_RETRIES",
            "KC_RETRY_HORIZON",
            "KC_DIRECT_DATABASE_URL",
            "KC_RETRY_BACKOFF_MAX",
            "KC_QUEUE_TYPE",
            "KC_LOG_FORMAT",
            "KC_BATCH_HOLD_MS",
            "KC_STRIPE_LIVEMODE",
            "KC_RECONCILE_WINDOW",
            "KC_INBOX_BODY_DAYS",
            "KC_WEB_METRICS_PORT",
            "KC_WORKER_METRICS_PORT",
            "KC_METRICS_ADDRESS",
            "KC_REDIS_MASTER_NAME",
        ),
        "",
    )

    assert Settings.from_env(empty) == Settings.from_env({})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"DATABASE_URL": "postgresql://kc@db:5433/shop"}, "postgresql+psycopg://kc@db:5433/shop", id="postgresql"
        ),
        pytest.param(
            {"DATABASE_URL": "postgresql+psycopg://kc@db/shop"}, "postgresql+psycopg://kc@db/shop", id="psycopg"
        ),
        pytest.param(
            {"DATABASE_URL": "postgres://kc@db/shop"},
            "postgresql+psycopg://kc@db/shop",
            id="postgres",
        ),
        pytest.param(
            {"DATABASE_URL": "postgresql+psycopg2://kc@db/shop"}, "postgresql+psycopg://kc@db/shop", id="psycopg2"
        ),
        pytest.param(
            {"POSTGRES_URL": "postgresql://legacy@old-db/shop"},
            "postgresql+psycopg://legacy@old-db/shop",
            id="legacy-POSTGRES_URL",
        ),
        pytest.param(
            {"DATABASE_URL": "", "POSTGRES_URL": "postgresql://legacy@old-db/shop"},
            "postgresql+psycopg://legacy@old-db/shop",
            id="legacy-POSTGRES_URL-when-DATABASE_URL-empty",
        ),
        pytest.param(
            {
                "POSTGRES_HOST": "db.internal",
                "POSTGRES_PORT": "6543",
                "POSTGRES_USER": "kc",
                "POSTGRES_PASSWORD": SECRET,
                "POSTGRES_DB": "shop",
            },
            f"postgresql+psycopg://kc:{SECRET}@db.internal:6543/shop",
            id="POSTGRES_parts",
        ),
        pytest.param(
            {"POSTGRES_HOST": "db.internal"}, "postgresql+psycopg://postgres@db.internal:5432/kc_tasks", id="host-only"
        ),
        pytest.param(
            {"POSTGRES_HOST": "db.internal", "POSTGRES_SSL": "true"},
            "postgresql+psycopg://postgres@db.internal:5432/kc_tasks?sslmode=require",
            id="POSTGRES_SSL-true",
        ),
        pytest.param(
            {"POSTGRES_HOST": "db.internal", "POSTGRES_SSL": "false"},
            "postgresql+psycopg://postgres@db.internal:5432/kc_tasks",
            id="POSTGRES_SSL-false",
        ),
        pytest.param(
            {
                "DATABASE_URL": "postgresql://new@new-db/shop",
                "POSTGRES_URL": "postgresql://legacy@old-db/shop",
                "POSTGRES_HOST": "parts-db",
            },
            "postgresql+psycopg://new@new-db/shop",
            id="DATABASE_URL-wins",
        ),
        pytest.param(
            {"POSTGRES_URL": "postgresql://legacy@old-db/shop", "POSTGRES_HOST": "parts-db"},
            "postgresql+psycopg://legacy@old-db/shop",
            id="POSTGRES_URL-wins-over-parts",
        ),
    ],
)
def test_database_url_forms_all_use_psycopg_3(env: dict[str, str], expected: str) -> None:
    assert url_of(env) == expected


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({"CELERY_BROKER_URL": "redis://cache:6379/0"}, "uses_redis", True),
        ({"CELERY_BROKER_URL": "rediss://cache:6380/0"}, "uses_redis", True),
        ({"CELERY_BROKER_URL": "amqp://kc@rabbit//"}, "uses_redis", False),
        (
            {"CELERY_BROKER_URL": "sentinel://s1:26379;sentinel://s2:26379", "KC_REDIS_MASTER_NAME": "kc"},
            "uses_redis",
            True,
        ),
        ({"CELERY_BROKER_URL": "amqp://rabbit-1//;amqp://rabbit-2//"}, "uses_redis", False),
        ({"CELERY_BROKER_URL": "sentinel://s1:26379", "KC_REDIS_MASTER_NAME": " kc "}, "redis_master_name", "kc"),
        ({"KC_MAX_RETRIES": "0"}, "max_retries", 0),
        ({"KC_RETRY_HORIZON": "60"}, "retry_horizon", 60),
        ({"KC_MAX_RETRIES": "20"}, "max_retries", 20),
        ({"KC_RETRY_BACKOFF_MAX": "2"}, "retry_backoff_max", 2),
        ({"KC_INDEX_CHECK_TTL": "0"}, "index_check_ttl", 0),
        ({"KC_INDEX_VERIFY_INTERVAL": "60"}, "index_verify_interval", 60),
        ({"KC_QUEUE_TYPE": "quorum"}, "queue_type", "quorum"),
        ({"KC_QUEUE_TYPE": " Quorum "}, "queue_type", "quorum"),
        ({"KC_LOG_FORMAT": "json"}, "log_format", "json"),
        ({"KC_BATCH_HOLD_MS": "0"}, "batch_hold_ms", 0),
        ({"KC_BATCH_HOLD_MS": "100"}, "batch_hold_ms", 100),
        ({}, "batching", True),
        ({"KC_BATCHING": "off"}, "batching", False),
        ({"KC_BATCHING": " On "}, "batching", True),
        ({"KC_STRIPE_LIVEMODE": "true"}, "stripe_livemode", True),
        ({"KC_STRIPE_LIVEMODE": "false"}, "stripe_livemode", False),
        ({"KC_STRIPE_LIVEMODE": " True "}, "stripe_livemode", True),
        ({"KC_STRIPE_LIVEMODE": "FALSE"}, "stripe_livemode", False),
        ({"KC_STRIPE_LIVEMODE": " "}, "stripe_livemode", None),
        ({"KC_RECONCILE_WINDOW": "60"}, "reconcile_window", 60),
        ({"KC_RECONCILE_WINDOW": "2592000"}, "reconcile_window", 2592000),
        ({"KC_INBOX_BODY_DAYS": "0"}, "inbox_body_days", 0),
        ({"KC_INBOX_BODY_DAYS": "365"}, "inbox_body_days", 365),
        ({"KC_WEB_METRICS_PORT": "9101"}, "web_metrics_port", 9101),
        ({"KC_WORKER_METRICS_PORT": " 9102 "}, "worker_metrics_port", 9102),
        ({"KC_WORKER_METRICS_PORT": " "}, "worker_metrics_port", None),
        ({"KC_METRICS_ADDRESS": "0.0.0.0"}, "metrics_address", "0.0.0.0"),
    ],
)
def test_accepted_values(env: dict[str, str], attribute: str, expected: object) -> None:
    assert getattr(Settings.from_env(env), attribute) == expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KC_MAX_RETRIES": "abc"}, "KC_MAX_RETRIES"),
        ({"KC_RETRY_HORIZON": "0"}, "KC_RETRY_HORIZON"),
        ({"KC_RETRY_HORIZON": "1d"}, "KC_RETRY_HORIZON"),
        ({"KC_DIRECT_DATABASE_URL": "mysql://db/kc"}, "KC_DIRECT_DATABASE_URL"),
        ({"KC_MAX_RETRIES": "-1"}, "KC_MAX_RETRIES"),
        ({"KC_MAX_RETRIES": "2.5"}, "KC_MAX_RETRIES"),
        ({"KC_RETRY_BACKOFF_MAX": "0"}, "KC_RETRY_BACKOFF_MAX"),
        ({"KC_INDEX_CHECK_TTL": "-5"}, "KC_INDEX_CHECK_TTL"),
        ({"KC_INDEX_VERIFY_INTERVAL": "0"}, "KC_INDEX_VERIFY_INTERVAL"),
        ({"KC_QUEUE_TYPE": "stream"}, "KC_QUEUE_TYPE"),
        ({"CELERY_BROKER_URL": "sentinel://s1:26379;sentinel://s2:26379"}, "KC_REDIS_MASTER_NAME"),
        ({"CELERY_BROKER_URL": "sentinel://s1:26379", "KC_REDIS_MASTER_NAME": " "}, "KC_REDIS_MASTER_NAME"),
        ({"KC_LOG_FORMAT": "xml"}, "KC_LOG_FORMAT"),
        ({"KC_BATCH_HOLD_MS": "-1"}, "KC_BATCH_HOLD_MS"),
        ({"KC_BATCH_HOLD_MS": "101"}, "KC_BATCH_HOLD_MS"),
        ({"KC_BATCH_HOLD_MS": "0.5"}, "KC_BATCH_HOLD_MS"),
        ({"KC_BATCHING": "no"}, "KC_BATCHING"),
        ({"KC_STRIPE_LIVEMODE": "yes"}, "KC_STRIPE_LIVEMODE"),
        ({"KC_STRIPE_LIVEMODE": "1"}, "KC_STRIPE_LIVEMODE"),
        ({"KC_STRIPE_LIVEMODE": "live"}, "KC_STRIPE_LIVEMODE"),
        ({"KC_STRIPE_LIVEMODE": "truee"}, "KC_STRIPE_LIVEMODE"),
        ({"KC_RECONCILE_WINDOW": "59"}, "KC_RECONCILE_WINDOW"),
        ({"KC_RECONCILE_WINDOW": "3d"}, "KC_RECONCILE_WINDOW"),
        ({"KC_INBOX_BODY_DAYS": "-1"}, "KC_INBOX_BODY_DAYS"),
        ({"KC_INBOX_BODY_DAYS": "30d"}, "KC_INBOX_BODY_DAYS"),
        ({"KC_WEB_METRICS_PORT": "0"}, "KC_WEB_METRICS_PORT"),
        ({"KC_WORKER_METRICS_PORT": "65536"}, "KC_WORKER_METRICS_PORT"),
        ({"KC_WORKER_METRICS_PORT": "metrics"}, "KC_WORKER_METRICS_PORT"),
        ({"POSTGRES_HOST": "db", "POSTGRES_PORT": "abc"}, "POSTGRES_PORT"),
        ({"DATABASE_URL": f"mysql://kc:{SECRET}@db/shop"}, "DATABASE_URL"),
        ({"DATABASE_URL": f"postgresql+asyncpg://kc:{SECRET}@db/shop"}, "DATABASE_URL"),
        ({"DATABASE_URL": f"not a url {SECRET}"}, "DATABASE_URL"),
        pytest.param(
            {"DATABASE_URL": f"postgresql://kc:{SECRET}@db:abc/shop"},
            "DATABASE_URL",
            id="DATABASE_URL-bad-port",
        ),
        pytest.param(
            {"POSTGRES_URL": f"mysql://kc:{SECRET}@db/shop"},
            "POSTGRES_URL",
            id="POSTGRES_URL-mysql",
        ),
    ],
)
def test_bad_value_is_refused_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    assert str(caught.value).startswith(variable + " ")
    assert SECRET not in str(caught.value)


def test_kc_stripe_livemode_refusal_says_what_it_accepts() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"KC_STRIPE_LIVEMODE": "yes"})

    assert str(caught.value) == "KC_STRIPE_LIVEMODE must be true or false, got 'yes'"


@pytest.mark.parametrize(
    ("env", "described"),
    [
        ({"DATABASE_URL": f"postgresql://kc:{SECRET}@db.internal:6543/shop"}, "db.internal:6543/shop"),
        ({"DATABASE_URL": f"postgresql://kc:{SECRET}@db.internal/shop"}, "db.internal:5432/shop"),
        ({"DATABASE_URL": f"postgresql://kc:{SECRET}@/shop"}, "localhost:5432/shop"),
        ({"POSTGRES_HOST": "db.internal", "POSTGRES_PASSWORD": SECRET}, "db.internal:5432/kc_tasks"),
        (
            {"DATABASE_URL": f"postgresql://kc:{SECRET}@db1:5441,db2:5442/shop?target_session_attrs=read-write"},
            "db1:5441,db2:5442/shop",
        ),
        ({"DATABASE_URL": f"postgresql://kc:{SECRET}@/shop?host=db1,db2&port=5441,5442"}, "db1:5441,db2:5442/shop"),
        ({"DATABASE_URL": f"postgresql://kc:{SECRET}@db1,db2/shop"}, "db1:5432,db2:5432/shop"),
    ],
)
def test_describe_database_names_where_and_never_the_password(env: dict[str, str], described: str) -> None:
    settings = Settings.from_env(env)

    assert describe_database(settings.database_url) == described
    assert SECRET not in str(settings.database_url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"amqp://guest:{SECRET}@rabbit:5672//", "amqp://guest:**@rabbit:5672//"),
        (f"redis://:{SECRET}@cache:6379/0", "redis://:**@cache:6379/0"),
        (f"redis://kc:{SECRET}@cache/0", "redis://kc:**@cache/0"),
        (f"rediss://:{SECRET}@cache:6380/0", "rediss://:**@cache:6380/0"),
        ("amqp://guest@rabbit//", "amqp://guest@rabbit//"),
    ],
)
def test_redact_url_masks_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            f"amqp://kc:{SECRET}@rabbit-1//;amqp://kc:{SECRET}@rabbit-2//",
            id="amqp-failover-list",
        ),
        pytest.param(
            f"sentinel://:{SECRET}@sentinel-1:26379;sentinel://:{SECRET}@sentinel-2:26379",
            id="redis-sentinel-list",
        ),
    ],
)
def test_redact_url_hides_every_password_of_a_failover_list(url: str) -> None:
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://kc@db1:5441,db2:5442/shop?target_session_attrs=read-write",
        "postgresql://kc@/shop?host=db1,db2&port=5441,5442&target_session_attrs=read-write",
        "postgres://kc@db1:5441,db2:5442/shop?target_session_attrs=read-write",
        "postgresql+psycopg://kc@/shop?host=db1:5441&host=db2:5442&target_session_attrs=read-write",
    ],
)
def test_a_multi_host_url_in_any_form_reaches_libpq_as_its_host_and_port_lists(raw: str) -> None:
    """libpq tries the hosts in order; with target_session_attrs=read-write it keeps the one that
    takes writes: the primary, before and after a failover."""
    from sqlalchemy import create_engine

    url = Settings.from_env({"DATABASE_URL": raw}).database_url
    _, params = create_engine(url).dialect.create_connect_args(url)

    assert (params["host"], params["port"], params["dbname"]) == ("db1,db2", "5441,5442", "shop")
    assert params["target_session_attrs"] == "read-write"


def test_a_host_list_keeps_the_password_and_every_other_parameter() -> None:
    url = Settings.from_env(
        {"DATABASE_URL": f"postgresql://kc:p%40ss{SECRET}@[::1]:5441,db2/shop?sslmode=require&application_name=x"}
    ).database_url

    assert (url.username, url.password, url.database) == ("kc", f"p@ss{SECRET}", "shop")
    assert (url.query["host"], url.query["port"], url.query["sslmode"]) == ("::1,db2", "5441,5432", "require")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("postgresql://kc@db1:54x1,db2/shop", "the port of host 'db1' is not a port number: '54x1'"),
        ("postgresql://kc@db1,,db2/shop", "host 2 of the host list 'db1,,db2' is empty"),
        (
            "postgresql://kc@db1,db2/shop?host=db3",
            "list the hosts either before the database or as ?host=...&port=..., not both",
        ),
        ("postgresql://kc@/shop?host=db1,db2&port=1,2,3", "lists 2 host(s) but 3 port(s)"),
        ("postgresql://kc@/shop?host=db1&port=99999", "the port of host 'db1' is not a port number: '99999'"),
    ],
)
def test_a_malformed_host_list_is_one_line_that_says_what_is_wrong(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"DATABASE_URL": f"{raw.replace('kc@', f'kc:{SECRET}@')}"})

    assert str(refused.value) == f"DATABASE_URL{'' if says.startswith('lists') else ':'} {says}"
    assert SECRET not in str(refused.value)


def test_kc_direct_database_url_is_where_session_level_work_goes() -> None:
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://kc@pgbouncer:6432/shop", "KC_DIRECT_DATABASE_URL": "postgresql://kc@db1/shop"}
    )

    assert settings.session_database_url.render_as_string() == "postgresql+psycopg://kc@db1/shop"
    assert settings.database_url.render_as_string() == "postgresql+psycopg://kc@pgbouncer:6432/shop"


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        pytest.param(
            "sentinel://:pw@s1:26379;sentinel://:pw@s2:26379",
            {"visibility_timeout": 2 * 300 + 3600, "master_name": "kc-redis"},
            id="sentinel",
        ),
        pytest.param("redis://cache:6379/0", {"visibility_timeout": 2 * 300 + 3600}, id="redis"),
        pytest.param("amqp://rabbit-1//;amqp://rabbit-2//", {"confirm_publish": True}, id="amqp-list"),
    ],
)
def test_celery_gets_each_brokers_transport_options(broker: str, expected: dict) -> None:
    """Redis behind Sentinel is Redis: its visibility timeout, and the primary its Sentinels name."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, CELERY_BROKER_URL=broker, KC_REDIS_MASTER_NAME="kc-redis", KC_RETRY_BACKOFF_MAX="300")
    shown = subprocess.run(
        [sys.executable, "-c", "import json, celeryconfig; print(json.dumps(celeryconfig.broker_transport_options))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(shown.stdout) == expected
