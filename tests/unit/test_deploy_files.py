"""The container files, as an operator runs them: docker/compose.yaml, docker/Dockerfile,
docker/.env.example and .dockerignore, checked against the Procfile and against the
environment variables the code reads. Pure: no Docker engine, no services.

Compose substitutes ${VAR} itself, from docker/.env or the shell, before any container starts;
`$$` reaches the container as `$`. The helpers below apply that rule, so every comparison is
with what the container really receives.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
PROCFILE = ROOT / "Procfile"

PROCESSES = ("web", "worker", "beat", "flower")
KC_SERVICES = ("migrate", *PROCESSES)

# Variables the code or the Procfile reads that compose deliberately leaves unset: each is
# optional, and its default is what a container wants.
OPTIONAL_WITH_DEFAULTS = {
    # The old worker's database settings: read only while DATABASE_URL is unset, and compose sets it.
    "POSTGRES_URL": "legacy fallback of DATABASE_URL",
    "POSTGRES_HOST": "legacy fallback of DATABASE_URL",
    "POSTGRES_PORT": "legacy fallback of DATABASE_URL",
    "POSTGRES_USER": "legacy fallback of DATABASE_URL",
    "POSTGRES_PASSWORD": "legacy fallback of DATABASE_URL",
    "POSTGRES_DB": "legacy fallback of DATABASE_URL",
    "POSTGRES_SSL": "legacy fallback of DATABASE_URL",
    # The system's own, set by the image.
    "PATH": "the image's",
    # `kc-tasks dev` only: the folder of the filesystem:// broker; compose uses RabbitMQ.
    "KC_FILESYSTEM_BROKER_DIR": "kc-tasks dev only",
    # beat's schedule file: .kc-state/ (mode 0700) in the working folder by default; losing it
    # with the container only restarts the beat periods (every beat task is an interval task).
    "KC_BEAT_SCHEDULE": "beat schedule file, .kc-state/beat-schedule by default",
    # Flower's own: its basic auth (compose sets it for flower; kc-tasks dev generates it), and
    # the switch of an unauthenticated API, which flower refuses on a non-loopback address.
    "FLOWER_BASIC_AUTH": "Flower's own; set for the flower service",
    "FLOWER_UNAUTHENTICATED_API": "Flower's own; left unset",
    # Flower's listening address: the Procfile's default is 127.0.0.1.
    "FLOWER_ADDRESS": "Flower's address, 127.0.0.1 by default",
    # A provider's webhook route is on only while its secret is set: a deployment sets the
    # secret of each provider it takes payments from, and only those.
    "KC_RAZORPAY_WEBHOOK_SECRET": "POST /webhooks/razorpay is off while unset",
    "KC_STRIPE_WEBHOOK_SECRET": "POST /webhooks/stripe is off while unset",
    # migrate's and ensure-index's server when DATABASE_URL is a pooler's; compose has no pooler.
    "KC_DIRECT_DATABASE_URL": "DATABASE_URL by default; compose reaches PostgreSQL directly",
    # Read only with a sentinel:// broker URL (Redis behind Sentinel); compose runs RabbitMQ.
    "KC_REDIS_MASTER_NAME": "only with a sentinel:// broker",
}

# How the code reads a variable: env.get("X"), os.environ.get("X"), os.getenv("X"),
# _int(env, "X", ...), _choice(env, "X", ...), _bool_or_none(env, "X"), _port_or_none(env, "X"),
# env["X"] (not an assignment to it).
CODE_READS = (
    re.compile(r"""\b(?:env|environ)\.get\(\s*["']([A-Z][A-Z0-9_]*)["']"""),
    re.compile(r"""\bgetenv\(\s*["']([A-Z][A-Z0-9_]*)["']"""),
    re.compile(r"""\b_(?:int|choice|bool_or_none|port_or_none)\(\s*env\s*,\s*["']([A-Z][A-Z0-9_]*)["']"""),
    re.compile(r"""\b(?:env|environ)\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\](?!\s*=[^=])"""),
)
SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
# What compose interpolates in a value: $$ (a literal $), ${...} and $NAME.
COMPOSE_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# --- reading the files ---------------------------------------------------------------------


def procfile() -> dict[str, str]:
    """The Procfile's processes, read now: others may change it while the suite runs."""
    processes: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line.strip())
        assert match, f"the Procfile line {line!r} is not `name: command`"
        name, command = match.groups()
        assert name not in processes, f"the Procfile defines {name!r} twice"
        processes[name] = command.strip()
    return processes


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker/compose.yaml has no {name!r} service"
    return services[name]


def environment(name: str) -> dict[str, str | None]:
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        pairs = [item.partition("=") for item in env]
        return {key: value if sep else None for key, sep, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def depends_on(name: str) -> dict[str, str]:
    deps = service(name).get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {dep: (spec or {}).get("condition", "service_started") for dep, spec in deps.items()}


def as_container_sees(value: str) -> str:
    """A command or healthcheck word after compose's interpolation, which must leave the shell
    variables to the container: `$$` becomes `$`; a bare ${VAR} would be substituted by compose
    from docker/.env or the operator's shell, not by the container."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        raise AssertionError(
            f"{match.group(0)} in {value!r} is substituted by compose, not by the container's shell: write $$"
        )

    return COMPOSE_TOKEN.sub(replace, value)


def compose_strings(node: Any) -> list[str]:
    """Every string value of the compose file (compose interpolates values, not comments)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in compose_strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in compose_strings(value)]
    return []


def compose_variables() -> set[str]:
    """The names compose itself substitutes (from docker/.env or the shell)."""
    names = set()
    for text in compose_strings(compose()):
        for match in COMPOSE_TOKEN.finditer(text):
            if match.group(0) != "$$":
                names.add(match.group(1) or match.group(3))
    return names


def env_example() -> dict[str, tuple[str, str]]:
    """docker/.env.example as NAME -> (value, the comment line just above it)."""
    entries: dict[str, tuple[str, str]] = {}
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"docker/.env.example line {line!r} is not NAME=value"
        above = lines[number - 1].strip() if number else ""
        entries[name] = (value, above)
    return entries


def command_words(name: str) -> list[str]:
    """The argv a service's container starts with, after compose's interpolation."""
    command = service(name).get("command")
    assert command, f"the {name} service has no command"
    if isinstance(command, str):
        return shlex.split(as_container_sees(command))
    return [as_container_sees(str(word)) for word in command]


def assert_runs_procfile_line(name: str) -> None:
    line = procfile()[name]
    words = command_words(name)
    if words[:2] == ["sh", "-c"]:
        assert len(words) == 3, f"the {name} service's `sh -c` takes one script, not {words[2:]}"
        script = words[2]
        assert script.startswith("exec "), (
            f"the {name} service's script should start with `exec `, so that {name} itself (not sh) "
            "gets docker stop's SIGTERM"
        )
        assert script.removeprefix("exec ") == line, (
            f"the {name} service runs {script!r}, the Procfile's {name} is {line!r}"
        )
    else:
        assert "$" not in line, f"the Procfile's {name} expands variables: run it as sh -c 'exec <line>'"
        assert words == shlex.split(line), f"the {name} service runs {words}, the Procfile's {name} is {line!r}"


def dockerfile_lines() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            lines.append((instruction.upper(), arguments.strip()))
    return lines


def dockerfile_arguments() -> dict[str, str]:
    """The build arguments declared before the first FROM (usable in FROM), with their defaults."""
    arguments = {}
    for instruction, words in dockerfile_lines():
        if instruction == "FROM":
            break
        assert instruction == "ARG", f"only ARG comes before the Dockerfile's first FROM, not {instruction}"
        name, _, default = words.partition("=")
        arguments[name] = default
    return arguments


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) from its FROM on, its
    FROM's build arguments replaced by their defaults."""
    stages: list[list[tuple[str, str]]] = []
    defaults = dockerfile_arguments()
    for instruction, arguments in dockerfile_lines():
        if instruction == "FROM":
            arguments = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], arguments)
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    assert stages, "the Dockerfile has a FROM"
    return stages


def instructions(stage: list[tuple[str, str]], kind: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == kind]


def copy_sources(arguments: str) -> list[str]:
    words = [w for w in shlex.split(arguments) if not w.startswith("--")]
    return [source.rstrip("/") for source in words[:-1]]


def code_files() -> list[Path]:
    """What the image installs: the package and the top-level modules beside it (celeryconfig.py)."""
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("py-modules", [])
    return sorted((ROOT / "kc_tasks").rglob("*.py")) + [ROOT / f"{name}.py" for name in modules]


def code_variables() -> dict[str, set[str]]:
    """Variable -> the files of kc_tasks that read it."""
    found: dict[str, set[str]] = {}
    for path in code_files():
        source = path.read_text()
        for pattern in CODE_READS:
            for name in pattern.findall(source):
                found.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return found


def expand_like_sh(text: str, env: dict[str, str | None]) -> str:
    """${VAR:-default}, ${VAR} and $VAR as sh expands them with `env`."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = env.get(name) or ""
        if match.group(2) == ":-" and not value:
            return match.group(3)
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", replace, text)


def volume_targets(name: str) -> list[PurePosixPath]:
    targets = []
    for volume in service(name).get("volumes") or []:
        if isinstance(volume, dict):
            targets.append(PurePosixPath(volume["target"]))
        else:
            parts = str(volume).split(":")
            targets.append(PurePosixPath(parts[1] if len(parts) > 1 else parts[0]))
    return targets


def published_container_ports(name: str) -> set[str]:
    ports = set()
    for port in service(name).get("ports") or []:
        if isinstance(port, dict):
            ports.add(str(port["target"]))
        else:
            ports.add(str(port).rsplit(":", 1)[-1].split("/")[0])
    return ports


def healthcheck_text(name: str) -> str:
    test = (service(name).get("healthcheck") or {}).get("test")
    assert test, f"the {name} service has no healthcheck of its own"
    words = [test] if isinstance(test, str) else list(test)
    return " ".join(as_container_sees(str(word)) for word in words)


# --- the Procfile (what the compose services must run) -------------------------------------


def test_the_procfile_has_exactly_the_contracts_processes() -> None:
    assert sorted(procfile()) == sorted(PROCESSES)


def test_the_procfile_commands_have_the_contracts_shape() -> None:
    processes = procfile()

    assert processes["worker"].startswith("celery -A kc_tasks worker"), "the worker is `celery -A kc_tasks worker ...`"
    assert processes["beat"].startswith("celery -A kc_tasks beat")
    assert processes["flower"].startswith("celery -A kc_tasks flower")
    assert processes["web"].startswith("uvicorn "), "the web process is served by uvicorn"
    assert "${PORT:-8000}" in processes["web"], "the web process listens on $PORT, default 8000"
    assert "${FLOWER_PORT:-5555}" in processes["flower"], "Flower listens on $FLOWER_PORT, default 5555"


# --- docker/compose.yaml -----------------------------------------------------------------


def test_the_compose_file_is_a_compose_specification_file_with_every_service() -> None:
    assert isinstance(compose(), dict), "docker/compose.yaml parses to a mapping"
    assert "version" not in compose(), "the Compose Specification has no `version:` key"
    assert set(compose()["services"]) >= {"postgres", "rabbitmq", *KC_SERVICES}


def test_postgres_and_rabbitmq_are_the_contracts_services_with_healthchecks() -> None:
    assert as_compose_interpolates(service("postgres")["image"], {}) == "postgres:15"
    assert "pg_isready" in healthcheck_text("postgres")
    assert volume_targets("postgres") == [PurePosixPath("/var/lib/postgresql/data")], "the database has a volume"

    assert as_compose_interpolates(service("rabbitmq")["image"], {}) == "rabbitmq:3-management"
    assert "rabbitmq-diagnostics -q ping" in healthcheck_text("rabbitmq")


@pytest.mark.parametrize(
    ("name", "variable", "official"),
    [
        ("postgres", "POSTGRES_IMAGE", "postgres:15"),
        ("db-roles", "POSTGRES_IMAGE", "postgres:15"),
        ("rabbitmq", "RABBITMQ_IMAGE", "rabbitmq:3-management"),
        ("prometheus", "PROMETHEUS_IMAGE", "prom/prometheus:v2.53.0"),
        ("grafana", "GRAFANA_IMAGE", "grafana/grafana:11.1.0"),
    ],
)
def test_each_service_image_is_a_variable_whose_default_is_the_official_image(
    name: str, variable: str, official: str
) -> None:
    """make stack sets them to stand-ins where no registry answers; an operator leaves them unset."""
    assert service(name)["image"] == f"${{{variable}:-{official}}}"


def test_grafana_is_in_a_profile_of_its_own_and_every_other_service_in_none() -> None:
    """Grafana has no stand-in: make stack brings the stack up without its profile."""
    assert service("grafana").get("profiles") == ["grafana"]
    assert [name for name in compose()["services"] if service(name).get("profiles")] == ["grafana"]


def test_what_the_image_checks_is_no_ones_health_but_the_workers() -> None:
    """The image's check asks its worker for a ping: every other service of the image has a
    check of its own, or none (a one-shot, and beat, which answers no ping)."""
    for name in KC_SERVICES:
        check = service(name).get("healthcheck") or {}
        if name == "worker":
            assert "inspect ping" in healthcheck_text(name)
        else:
            assert check.get("disable") is True or "ping" not in healthcheck_text(name), name
    assert service("migrate")["healthcheck"] == {"disable": True}
    assert service("beat")["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", KC_SERVICES)
def test_every_kc_service_runs_the_one_image_built_from_docker_dockerfile(name: str) -> None:
    image = {service(other).get("image") for other in KC_SERVICES}
    build = service(name).get("build")

    assert len(image) == 1 and None not in image, f"the kc services run one named image, not {image}"
    assert isinstance(build, dict), f"the {name} service builds the image"
    assert (DOCKER / build["context"]).resolve() == ROOT, "the build context is the repository root"
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()


# What an operator's docker/.env might hold, to read the compose values as compose would.
SAMPLE_ENV = {
    "POSTGRES_PASSWORD": "pg0a1b2c3d",
    "POSTGRES_MIGRATE_PASSWORD": "pgm1a2b3c4",
    "POSTGRES_WEB_PASSWORD": "pgw5d6e7f8",
    "POSTGRES_WORKER_PASSWORD": "pgk9a8b7c6",
    "RABBITMQ_PASSWORD": "mq4e5f6a7b",
}
# The login each service connects to PostgreSQL as, and the group role it is in (README,
# Security: database roles); keyed as the passwords are (POSTGRES_<KEY>_PASSWORD). beat and
# flower never connect to PostgreSQL: they get no DATABASE_URL, hence no password.
DATABASE_LOGINS = {
    "migrate": ("kc_migrate", "kc_owner", "migrate"),
    "web": ("kc_web_app", "kc_web", "web"),
    "worker": ("kc_worker_app", "kc_worker", "worker"),
}
LOGINS_SQL = DOCKER / "logins.sql"
ROLES_SQL = ROOT / "kc_tasks" / "store" / "migrations" / "roles.sql"


def as_compose_interpolates(value: str | None, env: dict[str, str] = SAMPLE_ENV) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, rest = match.group(1) or match.group(3), match.group(2) or ""
        return env.get(name) or (rest[2:] if rest.startswith(":-") else "")

    return COMPOSE_TOKEN.sub(replace, value or "")


def test_compose_holds_no_literal_password() -> None:
    for name in ("postgres", "rabbitmq", "db-roles", *KC_SERVICES):
        env = environment(name)
        for key in env:
            if key.endswith(("PASSWORD", "_PASS")):
                assert (env[key] or "").startswith("${"), f"the {name} service's {key} comes from docker/.env"
        for key in ("DATABASE_URL", "CELERY_BROKER_URL"):
            if key in env:
                password = urlsplit(as_compose_interpolates(env[key], {})).password
                assert not password, f"the {name} service's {key} holds a literal password"


@pytest.mark.parametrize("name", KC_SERVICES)
def test_each_kc_service_logs_in_to_postgresql_as_its_own_role_or_not_at_all(name: str) -> None:
    env = {k: as_compose_interpolates(v) for k, v in environment(name).items()}
    if name not in DATABASE_LOGINS:
        assert "DATABASE_URL" not in env, f"{name} never connects to PostgreSQL: it gets no database password"
        return
    login, _, key = DATABASE_LOGINS[name]
    database = urlsplit(env.get("DATABASE_URL") or "")

    assert database.scheme == "postgresql" and database.hostname == "postgres" and database.port == 5432
    assert (database.username, database.password) == (login, SAMPLE_ENV[f"POSTGRES_{key.upper()}_PASSWORD"])
    assert database.path == "/kc_tasks"


def test_db_roles_makes_each_login_with_the_password_its_service_uses_before_migrate_runs() -> None:
    env = {k: as_compose_interpolates(v) for k, v in environment("db-roles").items()}
    postgres = {k: as_compose_interpolates(v) for k, v in environment("postgres").items()}
    command = " ".join(command_words("db-roles"))
    logins = LOGINS_SQL.read_text()

    assert service("db-roles")["image"] == service("postgres")["image"], "psql of the server's own version"
    assert (env["PGHOST"], env["PGUSER"], env["PGPASSWORD"]) == ("postgres", "postgres", postgres["POSTGRES_PASSWORD"])
    assert service("db-roles").get("restart") == "no" and depends_on("db-roles") == {"postgres": "service_healthy"}
    assert depends_on("migrate").get("db-roles") == "service_completed_successfully"
    mounted = {
        PurePosixPath(v.split(":")[1]).name: (DOCKER / v.split(":")[0]).resolve()
        for v in service("db-roles")["volumes"]
    }
    assert mounted == {"roles.sql": ROLES_SQL, "logins.sql": LOGINS_SQL}
    assert command.index("/roles.sql") < command.index("/logins.sql"), "the group roles exist before their logins"
    for login, group, key in DATABASE_LOGINS.values():
        assert env[f"{key.upper()}_PASSWORD"] == SAMPLE_ENV[f"POSTGRES_{key.upper()}_PASSWORD"]
        assert f'-v {key}_password="${key.upper()}_PASSWORD"' in command
        assert f"('{login}', '{group}')" in logins
        assert f"ALTER ROLE {login} PASSWORD :'{key}_password';" in logins
    assert "ALTER ROLE kc_migrate SET role = 'kc_owner';" in logins, "the tables migrate creates are kc_owner's"


@pytest.mark.parametrize("name", KC_SERVICES)
def test_every_kc_service_reaches_the_compose_broker(name: str) -> None:
    env = {k: as_compose_interpolates(v) for k, v in environment(name).items()}
    broker = urlsplit(env.get("CELERY_BROKER_URL") or "")
    rabbitmq = {k: as_compose_interpolates(v) for k, v in environment("rabbitmq").items()}

    assert broker.scheme == "amqp" and broker.hostname == "rabbitmq" and broker.port == 5672
    assert (broker.username, broker.password) == (rabbitmq["RABBITMQ_DEFAULT_USER"], rabbitmq["RABBITMQ_DEFAULT_PASS"])
    assert broker.path == "//", "the broker URL names RabbitMQ's default vhost /"
    assert env.get("KC_LOG_FORMAT") == "json", "the containers log one JSON object per line"


def test_compose_refuses_to_start_without_a_webhook_secret() -> None:
    for name in KC_SERVICES:
        secret = environment(name).get("KC_WEBHOOK_SECRET") or ""
        assert secret.startswith("${KC_WEBHOOK_SECRET:?"), f"the {name} service takes the webhook secret from .env"


@pytest.mark.parametrize("name", PROCESSES)
def test_each_process_service_runs_the_procfiles_command(name: str) -> None:
    assert_runs_procfile_line(name)


def test_the_image_runs_the_procfiles_worker_by_default() -> None:
    cmd = instructions(dockerfile_stages()[-1], "CMD")
    worker = procfile()["worker"]

    assert cmd, "the image has a default command"
    if "$" not in worker:
        assert json.loads(cmd[-1]) == shlex.split(worker), "`docker run` of the image starts the Procfile's worker"


def test_migrate_is_a_one_shot_that_every_process_waits_for() -> None:
    assert command_words("migrate") == ["kc-tasks", "migrate"], "the migrate service runs `kc-tasks migrate`"
    assert service("migrate").get("restart") == "no", "the migrate service runs once"
    assert depends_on("migrate").get("postgres") == "service_healthy"

    for name in PROCESSES:
        assert depends_on(name) == {
            "postgres": "service_healthy",
            "rabbitmq": "service_healthy",
            "migrate": "service_completed_successfully",
        }, f"the {name} service starts after healthy services and a finished migration"


def test_every_service_waited_for_as_healthy_has_a_healthcheck() -> None:
    for name in compose()["services"]:
        for dep, condition in depends_on(name).items():
            if condition == "service_healthy":
                assert healthcheck_text(dep), f"{name} waits for {dep} to be healthy"


def test_the_processes_have_healthchecks_of_their_own() -> None:
    web, worker, flower = healthcheck_text("web"), healthcheck_text("worker"), healthcheck_text("flower")

    assert "/healthz" in web and "PORT" in web, "web is healthy when GET /healthz answers"
    assert "celery -A kc_tasks inspect ping -d celery@$(hostname)" in worker, "a worker is healthy when it answers ping"
    worker_test = service("worker")["healthcheck"]["test"]
    assert isinstance(worker_test, str) or worker_test[0] == "CMD-SHELL", "the check needs a shell for $(hostname)"
    assert "/healthcheck" in flower and "FLOWER_PORT" in flower, "Flower is healthy when GET /healthcheck answers"


@pytest.mark.parametrize(("name", "variable"), [("web", "PORT"), ("flower", "FLOWER_PORT")])
def test_the_web_and_flower_ports_are_published(name: str, variable: str) -> None:
    port = environment(name).get(variable)

    assert port, f"the {name} service sets {variable}"
    assert port in published_container_ports(name), f"the {name} service publishes its {variable} {port}"


def test_flower_keeps_its_state_file_in_a_volume() -> None:
    words = shlex.split(expand_like_sh(procfile()["flower"], environment("flower")))
    options = dict(word.removeprefix("--").split("=", 1) for word in words if word.startswith("--") and "=" in word)
    if options.get("persistent", "False").lower() not in ("true", "1", "yes"):
        pytest.skip("the Procfile's Flower keeps no state file (no --persistent=True)")

    db = PurePosixPath(options.get("db", "flower"))  # Flower's default --db is `flower`, in the cwd
    if not db.is_absolute():
        workdirs = instructions(dockerfile_stages()[-1], "WORKDIR")
        db = PurePosixPath(service("flower").get("working_dir") or (workdirs[-1] if workdirs else "/")) / db
    targets = volume_targets("flower")

    assert any(db.is_relative_to(target) for target in targets), f"Flower's --db {db} is in a volume, not in {targets}"
    runtime = " ".join(instructions(dockerfile_stages()[-1], "RUN"))
    assert any(str(target) in runtime for target in targets if db.is_relative_to(target)), (
        "the image creates the volume's folder, so that a new volume belongs to the image's non-root user"
    )


def test_every_variable_the_code_reads_is_set_by_compose_or_optional() -> None:
    missing = []
    for name, files in sorted(code_variables().items()):
        if name in OPTIONAL_WITH_DEFAULTS:
            continue
        for kc_service in KC_SERVICES:
            if name not in environment(kc_service):
                missing.append(f"{name} (read in {', '.join(sorted(files))}) is not set for {kc_service}")
    for process, line in procfile().items():
        for name in SHELL_VARIABLE.findall(line):
            if name not in OPTIONAL_WITH_DEFAULTS and name not in environment(process):
                missing.append(f"{name} (the Procfile's {process}) is not set for {process}")

    assert not missing, "set them in docker/compose.yaml or allow-list them:\n" + "\n".join(missing)


def test_the_allow_list_names_only_variables_still_read() -> None:
    sources = PROCFILE.read_text() + "".join(p.read_text() for p in code_files())

    stale = [name for name in OPTIONAL_WITH_DEFAULTS if f'"{name}"' not in sources and f"${{{name}" not in sources]
    assert not stale, f"nothing reads {stale} any more: drop them from OPTIONAL_WITH_DEFAULTS"


# --- docker/.env.example -----------------------------------------------------------------


def test_env_example_lists_exactly_the_variables_compose_substitutes() -> None:
    assert set(env_example()) == compose_variables()


def test_env_example_explains_every_variable() -> None:
    for name, (_, above) in env_example().items():
        assert above.startswith("#") and len(above) > 2, f"docker/.env.example: {name} has no comment above it"


def test_env_example_holds_no_usable_secret() -> None:
    required = {
        match.group(1)
        for text in compose_strings(compose())
        for match in COMPOSE_TOKEN.finditer(text)
        if (match.group(2) or "").startswith(":?")
    }
    assert "KC_WEBHOOK_SECRET" in required

    for name in required:
        value = env_example().get(name, ("", ""))[0]
        assert value == "", f"{name} is empty in the example, so compose refuses to start until it is set"


# --- docker/Dockerfile and .dockerignore ---------------------------------------------------


def test_the_dockerfile_builds_on_python_3_11_slim_and_runs_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    final = stages[-1]
    users = instructions(final, "USER")

    assert dockerfile_arguments().get("PYTHON_IMAGE") == "python:3.11-slim", "the base is a build argument"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(\s+AS\s+\S+)?", stage[0][1], re.IGNORECASE), stage[0][1]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the processes do not run as root"


def test_the_images_healthcheck_is_its_default_commands_own() -> None:
    """The image runs the worker unless told otherwise: its check asks that very worker
    (celery@<the container's hostname>) to answer, as compose's worker service does."""
    final = dockerfile_stages()[-1]
    [check] = instructions(final, "HEALTHCHECK")[-1:] or [""]

    assert json.loads(instructions(final, "CMD")[-1])[:4] == ["celery", "-A", "kc_tasks", "worker"]
    assert re.search(r"\bCMD\s+celery -A kc_tasks inspect ping -d \"?celery@\$\(hostname\)\"?", check), check
    assert healthcheck_text("worker").startswith("CMD-SHELL celery -A kc_tasks inspect ping -d celery@$(hostname)")


def test_the_dockerfile_installs_the_package_with_templates_and_migrations() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "kc_tasks"}
    needed |= {f"{name}.py" for name in pyproject["tool"]["setuptools"].get("py-modules", [])}  # celeryconfig.py
    needed |= {package.split(".")[0] for package in pyproject["tool"]["setuptools"]["packages"]}  # kc_tasks
    stages = dockerfile_stages()
    copied = {
        source
        for stage in stages
        for arguments in instructions(stage, "COPY")
        if "--from" not in arguments
        for source in copy_sources(arguments)
    }
    runs = " ".join(arguments for stage in stages for arguments in instructions(stage, "RUN"))

    assert "kc_tasks.web.templates" in pyproject["tool"]["setuptools"]["packages"]
    assert "*.html" in pyproject["tool"]["setuptools"]["package-data"]["kc_tasks.web.templates"]
    assert needed <= copied, f"the build copies {sorted(needed - copied)} into the image"
    assert re.search(r"pip (install|wheel)\b.*\s\.(\s|$)", runs), "the build installs the package from the context"
    assert "pip install" in " ".join(instructions(stages[-1], "RUN")), "the runtime stage installs the package"


def test_the_dockerfiles_check_of_the_installed_files_names_files_of_the_package() -> None:
    """The build fails when the templates or migrations are missing from the installed package:
    each file that check looks for (`r.files('<package>').joinpath(...)`) is in the source tree,
    so the check fails only on an install that left it out, never on a moved folder."""
    runs = " ".join(arguments for stage in dockerfile_stages() for arguments in instructions(stage, "RUN"))
    looked_for = re.findall(r"r\.files\('([\w.]+)'\)\.joinpath\(([^)]*)\)", runs)
    assert len(looked_for) >= 2, "the build checks the templates and the migrations"
    for package, parts in looked_for:
        path = ROOT.joinpath(*package.split("."), *re.findall(r"'([^']+)'", parts))
        assert path.exists(), f"the Dockerfile looks for {path.relative_to(ROOT)}, which is not in the package"


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").strip("/")))
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, pattern in rules:
        patterns = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns):
            result = not negate
    return result


def test_the_dockerignore_keeps_secrets_environments_and_tests_out_of_the_build() -> None:
    for path in (".venv", ".git", "tests", "docker/.env", "kc_tasks/__pycache__", "kc.db", ".kc-dev"):
        assert ignored(path), f"{path} stays out of the build context"


def test_celery_finds_its_configuration_as_a_top_level_module_installed_with_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "celeryconfig" in pyproject["tool"]["setuptools"]["py-modules"], "pip installs celeryconfig.py"
    assert "celeryconfig" in pyproject["tool"]["mypy"]["modules"], "mypy checks celeryconfig.py"
    assert (ROOT / "celeryconfig.py").is_file()
    assert not (ROOT / "kc_tasks" / "celeryconfig.py").exists(), "one celeryconfig, at the top level"
    assert 'config_from_object("celeryconfig")' in (ROOT / "kc_tasks" / "celery.py").read_text()
    lint = (ROOT / "Makefile").read_text().split("lint:", 1)[1].split("\n\n", 1)[0]
    assert lint.count("celeryconfig.py") == 2, "make lint runs ruff check and ruff format on celeryconfig.py"


def test_the_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    for stage in dockerfile_stages():
        for arguments in instructions(stage, "COPY"):
            if "--from" not in arguments:
                for source in copy_sources(arguments):
                    assert not ignored(source), f"the Dockerfile copies {source}, which .dockerignore leaves out"
