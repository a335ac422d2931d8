"""`kc-tasks dev`: the four processes of the Procfile for a newcomer who has only Python.

When DATABASE_URL is unset and nothing answers on localhost:5432, an embedded PostgreSQL
(the pgserver package) keeps its data in .kc-dev/pgdata. When no broker answers on
localhost:5672, kombu's filesystem transport stands in for RabbitMQ (.kc-dev/broker): one
machine only, no publisher confirms. Nothing outside this module depends on either.

The web process and the worker serve their metrics (KC_WEB_METRICS_PORT, KC_WORKER_METRICS_PORT,
free ports unless set), and when Prometheus is installed it runs beside them with the alert
rules of docker/prometheus/, scraping them and Flower (.kc-dev/prometheus.yml).

With --providers, Razorpay's and Stripe's APIs stand in too (kc_tasks.ops.dev_providers, in this
process): the processes get its keys and URLs, and its webhooks come to the web process, so a
checkout is created, paid, returned from and confirmed with no account at either provider.
.kc-dev/platform.env holds what the example platform (examples/checkout/) needs to join in.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEV_DIR = Path(".kc-dev")
RULES = Path("docker") / "prometheus" / "kc_tasks.rules.yml"
PROMETHEUS_PORT = 9090
# The student of README's curl examples: development mode prints a read-API token for them.
EXAMPLE_STUDENT = "0b6c5a4e-8d1e-4a49-9d1e-1b2c3d4e5f60"


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run(
    web_port: int, flower_port: int, embedded_db: bool, filesystem_broker: bool, providers_port: int | None = None
) -> int:
    """The processes until they end; with `providers_port`, the providers' stand-in on it."""
    from honcho.environ import parse_procfile
    from honcho.manager import Manager
    from honcho.printer import Printer

    procfile = Path("Procfile")
    if not procfile.exists():
        logger.error("kc-tasks dev runs the Procfile's processes: start it from the project's folder")
        return 1
    env = _environment()
    server = _database(env, embedded_db)
    stack = ExitStack()
    try:
        _broker(env, filesystem_broker)
        _settings(env, web_port, flower_port)
        prometheus = _prometheus(env, flower_port)
        if providers_port is not None:
            try:
                stack.enter_context(_providers(env, web_port, providers_port))
            except OSError as exc:
                logger.error("development mode: the providers' stand-in cannot listen on :%d (%s)", providers_port, exc)
                return 1
        migrated = _migrate(env)
        if migrated != 0:
            return migrated
        _announce(env, web_port, flower_port)
        manager = Manager(Printer(sys.stdout))
        for name, process in parse_procfile(procfile.read_text()).processes.items():
            manager.add_process(name, process, env=env)
        if prometheus is not None:
            manager.add_process("prometheus", prometheus, env=env)
        manager.loop()
        return int(manager.returncode or 0)
    finally:
        stack.close()
        if server is not None:
            server.cleanup()


def _environment() -> dict[str, str]:
    """The processes' environment: this one's, with this Python's folder first on PATH; .kc-dev/
    made, and the warning that this is development mode."""
    DEV_DIR.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ)
    # The Procfile's commands (celery, uvicorn) live beside this Python, venv or not.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logger.warning("DEVELOPMENT MODE: one machine, throwaway data in %s; never use this in production", DEV_DIR)
    return env


def _settings(env: dict[str, str], web_port: int, flower_port: int) -> None:
    """The secrets (generated once, kept in .kc-dev/, unless set), ports and state files of the
    processes, in `env`."""
    env.setdefault("KC_WEBHOOK_SECRET", _dev_secret("webhook-secret"))
    # Flower and the dead-letters page are never open, not even here: generated credentials.
    env.setdefault("FLOWER_BASIC_AUTH", "kc:" + _dev_secret("flower-password"))
    env.setdefault("KC_ADMIN_USER", "kc")
    env.setdefault("KC_ADMIN_PASSWORD", _dev_secret("admin-password"))
    env.setdefault("KC_JWT_SECRET", _dev_secret("jwt-secret", 32))
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    env.update(
        PORT=str(web_port),
        FLOWER_PORT=str(flower_port),
        KC_BEAT_SCHEDULE=str(DEV_DIR / "beat-schedule"),
        FLOWER_DB=str(DEV_DIR / "flower.db"),
    )
    for name in ("KC_WEB_METRICS_PORT", "KC_WORKER_METRICS_PORT"):
        env[name] = env.get(name) or str(free_port())


def _migrate(env: dict[str, str]) -> int:
    """`kc-tasks migrate` on the database of `env`: its exit status."""
    return subprocess.run([sys.executable, "-m", "kc_tasks.ops.cli", "migrate"], env=env, check=False).returncode


def _announce(env: dict[str, str], web_port: int, flower_port: int) -> None:
    """Where the doors are (logged), and the credentials to open them (printed, never logged)."""
    logger.warning(
        "development mode: webhook on http://127.0.0.1:%d/webhooks/payments (secret in %s), "
        "Flower on http://127.0.0.1:%d, dead letters on http://127.0.0.1:%d/admin/dead-letters",
        web_port,
        DEV_DIR / "webhook-secret",
        flower_port,
        web_port,
    )
    print(_credentials(env, web_port), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prometheus(env: dict[str, str], flower_port: int) -> str | None:
    """The command that runs Prometheus on the metrics of the processes, or None (and where to
    look instead) when it is not installed."""
    address = env.get("KC_METRICS_ADDRESS") or "127.0.0.1"
    web, worker = env["KC_WEB_METRICS_PORT"], env["KC_WORKER_METRICS_PORT"]
    binary = shutil.which("prometheus")
    if binary is None:
        logger.warning(
            "development mode: metrics on http://%s:%s/metrics (web) and http://%s:%s/metrics (worker); "
            "install Prometheus (make prometheus) to graph them and evaluate the alerts",
            address,
            web,
            address,
            worker,
        )
        return None
    targets = {"kc-web": f"{address}:{web}", "kc-worker": f"{address}:{worker}", "flower": f"127.0.0.1:{flower_port}"}
    config = DEV_DIR / "prometheus.yml"
    config.write_text(
        "# Written by kc-tasks dev at each start: the processes of this run.\n"
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        + (f"rule_files:\n  - {RULES.resolve()}\n" if RULES.exists() else "")
        + "scrape_configs:\n"
        + "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            for job, target in targets.items()
        )
    )
    port = PROMETHEUS_PORT if not answers("127.0.0.1", PROMETHEUS_PORT) else free_port()
    logger.warning(
        "development mode: Prometheus on http://127.0.0.1:%d (graphs: /graph, alerts: /alerts), "
        "scraping the web, the worker and Flower (%s)",
        port,
        config,
    )
    return (
        f"{binary} --config.file={config} --web.listen-address=127.0.0.1:{port} "
        f"--storage.tsdb.path={DEV_DIR / 'prometheus'} --log.level=warn"
    )


def _database(env: dict[str, str], forced: bool) -> Any:
    configured = any(env.get(k) for k in ("DATABASE_URL", "POSTGRES_URL", "POSTGRES_HOST"))
    if not forced and (configured or answers("127.0.0.1", 5432)):
        return None
    import pgserver  # only here: production never needs it

    data = (DEV_DIR / "pgdata").resolve()
    server = pgserver.get_server(data, cleanup_mode="stop")
    env["DATABASE_URL"] = f"postgresql://postgres@/kc_tasks?host={data}"
    for key in ("POSTGRES_URL", "POSTGRES_HOST"):
        env.pop(key, None)
    logger.warning("development mode: no PostgreSQL on localhost:5432, so an embedded one runs in %s", data)
    return server


def _broker(env: dict[str, str], forced: bool) -> None:
    if not forced and (env.get("CELERY_BROKER_URL") or answers("127.0.0.1", 5672)):
        return
    folder = (DEV_DIR / "broker").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    env["CELERY_BROKER_URL"] = "filesystem://"
    env["KC_FILESYSTEM_BROKER_DIR"] = str(folder)
    logger.warning(
        "development mode: no broker on localhost:5672, so kombu's filesystem transport stands in (%s): one "
        "machine only, no publisher confirms; Flower's live view and remote control do not work with it",
        folder,
    )


@contextmanager
def _providers(env: dict[str, str], web_port: int, port: int) -> Iterator[None]:
    """Razorpay's and Stripe's APIs, stood in for on `port` while the block runs; their keys,
    URLs and webhook secrets in `env`, replacing any real ones; .kc-dev/platform.env for the
    example platform."""
    from kc_tasks.ops import dev_providers

    keys = {
        "KC_RAZORPAY_KEY_ID": "rzp_test_" + _dev_secret("razorpay-key-id", 7),
        "KC_RAZORPAY_KEY_SECRET": _dev_secret("razorpay-key-secret"),
        "KC_STRIPE_API_KEY": "sk_test_" + _dev_secret("stripe-api-key"),
        "KC_RAZORPAY_WEBHOOK_SECRET": _dev_secret("razorpay-webhook-secret"),
        "KC_STRIPE_WEBHOOK_SECRET": "whsec_" + _dev_secret("stripe-webhook-secret"),
    }
    web = f"http://127.0.0.1:{web_port}"
    provider = dev_providers.StandIn(
        razorpay_key_id=keys["KC_RAZORPAY_KEY_ID"],
        razorpay_key_secret=keys["KC_RAZORPAY_KEY_SECRET"],
        stripe_api_key=keys["KC_STRIPE_API_KEY"],
        webhooks=dev_providers.Webhooks(web, keys["KC_RAZORPAY_WEBHOOK_SECRET"], keys["KC_STRIPE_WEBHOOK_SECRET"]),
    )
    with dev_providers.serve(provider, port=port):
        replaced = sorted(name for name in keys if env.get(name) and env[name] != keys[name])
        if replaced:
            logger.warning("development mode: --providers replaces %s with the stand-in's", ", ".join(replaced))
        # The stand-in's objects are in test mode: a KC_STRIPE_LIVEMODE=true would ignore them.
        url = provider.url
        env.update(keys, KC_RAZORPAY_API_URL=url, KC_STRIPE_API_URL=url, KC_STRIPE_LIVEMODE="false")
        platform = {
            "KC_TASKS_URL": web,
            "KC_JWT_SECRET": env["KC_JWT_SECRET"],
            "KC_JWT_AUDIENCE": env.get("KC_JWT_AUDIENCE") or "kc_tasks",
            "PLATFORM_STUDENT": EXAMPLE_STUDENT,
            "RAZORPAY_KEY_ID": keys["KC_RAZORPAY_KEY_ID"],
            "RAZORPAY_KEY_SECRET": keys["KC_RAZORPAY_KEY_SECRET"],
            "RAZORPAY_API_URL": url,
            "RAZORPAY_CHECKOUT_JS": url + "/v1/checkout.js",
            "STRIPE_API_KEY": keys["KC_STRIPE_API_KEY"],
            "STRIPE_API_URL": url,
        }
        path = DEV_DIR / "platform.env"
        path.touch(mode=0o600)
        path.write_text(
            "# Written by kc-tasks dev --providers at each start: the example platform's settings for this run\n"
            "# (examples/checkout/README.md).\n" + "".join(f"{name}={value}\n" for name, value in platform.items())
        )
        logger.warning(
            "development mode: Razorpay's and Stripe's APIs stand in on %s (keys in %s/, their webhooks sent to %s); "
            "the example platform's settings are in %s (examples/checkout/README.md)",
            url,
            DEV_DIR,
            web,
            path,
        )
        yield


def _dev_secret(name: str, size: int = 16) -> str:
    """A random secret kept in .kc-dev/<name> (mode 0600), the same at every start."""
    path = DEV_DIR / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(size))
    return path.read_text().strip()


def _credentials(env: dict[str, str], web_port: int) -> str:
    """What a newcomer needs to get in, printed once to the terminal (never logged)."""
    from kc_tasks.web.auth import mint

    token = mint(env["KC_JWT_SECRET"], EXAMPLE_STUDENT, 24 * 3600, env.get("KC_JWT_AUDIENCE") or "kc_tasks")
    flower_user, _, flower_password = env["FLOWER_BASIC_AUTH"].partition(":")
    return (
        "development mode credentials (kept in .kc-dev/):\n"
        f"  Flower:       user {flower_user}  password {flower_password}\n"
        f"  dead letters: user {env['KC_ADMIN_USER']}  password {env['KC_ADMIN_PASSWORD']}\n"
        f"  courses of the example student {EXAMPLE_STUDENT} (token valid 24 h):\n"
        f"    curl -H 'Authorization: Bearer {token}' "
        f"http://127.0.0.1:{web_port}/students/{EXAMPLE_STUDENT}/courses\n"
        "  another student's token: kc-tasks token --student <uuid> (with KC_JWT_SECRET=$(cat .kc-dev/jwt-secret))"
    )
