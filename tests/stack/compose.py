"""docker/compose.yaml brought up as an operator would, on this machine's engine, under a
project name of its own, with an env file of its own (fresh secrets, the service images
scripts/containers.sh resolved, free host ports), and taken down with its volumes.

`up` honours every `depends_on` condition. docker compose does that itself (`up --wait`).
podman-compose on podman 4.3 (Debian 12) cannot wait for `service_healthy` (it needs podman
4.6's `wait --condition=healthy`, and warns that it ignores it), so with podman the services
start in waves, each once what it depends on is healthy, completed or started, as compose
would start them: `up --no-deps` of a wave, then the checks of what the next wave waits for.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.stack.engine import ROOT, containers, engine, engine_name, exited, healthy, logs

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
# What docker/.env.example says is required: each a fresh random value (letters and digits:
# they are parts of URLs).
SECRETS = (
    "KC_WEBHOOK_SECRET",
    "POSTGRES_PASSWORD",
    "POSTGRES_MIGRATE_PASSWORD",
    "POSTGRES_WEB_PASSWORD",
    "POSTGRES_WORKER_PASSWORD",
    "RABBITMQ_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "KC_JWT_SECRET",
)
HOST_PORTS = ("WEB_HOST_PORT", "FLOWER_HOST_PORT", "PROMETHEUS_HOST_PORT", "GRAFANA_HOST_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_file() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def default_services() -> dict[str, dict[str, Any]]:
    """The services `up` starts without --profile: all but those in a profile (Grafana)."""
    return {name: spec for name, spec in compose_file()["services"].items() if not spec.get("profiles")}


def dependencies(spec: dict[str, Any]) -> dict[str, str]:
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (how or {}).get("condition", "service_started") for name, how in deps.items()}


def one_shot(spec: dict[str, Any]) -> bool:
    return str(spec.get("restart", "no")) == "no"


def waves(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The services in start order: each wave depends only on the waves before it."""
    placed: list[str] = []
    order: list[list[str]] = []
    while len(placed) < len(services):
        wave = sorted(
            name
            for name, spec in services.items()
            if name not in placed and all(dep in placed for dep in dependencies(spec))
        )
        assert wave, f"docker/compose.yaml's depends_on has a cycle among {set(services) - set(placed)}"
        order.append(wave)
        placed += wave
    return order


@dataclass
class Stack:
    tmp: Path
    project: str = field(default_factory=lambda: f"kc-stack-{secrets.token_hex(4)}")
    env: dict[str, str] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=default_services)

    def __post_init__(self) -> None:
        self.env = {name: secrets.token_hex(20) for name in SECRETS}
        self.env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_hex(12)}"
        self.env |= {name: str(free_port()) for name in HOST_PORTS}
        for line in containers("service-images").stdout.splitlines():
            name, _, image = line.partition("=")
            self.env[name] = image
        self.env_file = self.tmp / "stack.env"
        self.env_file.write_text("".join(f"{name}={value}\n" for name, value in self.env.items()))
        self.env_file.chmod(0o600)

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        project = ("-f", str(COMPOSE_FILE), "--env-file", str(self.env_file), "-p", self.project)
        done = containers("compose", *project, *args, check=check, timeout=timeout)
        return done.stdout + done.stderr

    def container(self, service: str) -> str:
        """The name of the service's (first) container."""
        project, of_service = f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"
        listed = engine(
            "ps", "-a", "--format", "{{.Names}}", "--filter", f"label={project}", "--filter", f"label={of_service}"
        )
        names = listed.stdout.split()
        assert names, f"the {service} service has no container"
        return sorted(names)[0]

    def port(self, name: str) -> int:
        return int(self.env[name])

    def up(self) -> None:
        if engine_name() == "docker":
            self.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300")
            return
        for wave in waves(self.services):
            awaited = {(dep, how) for name in wave for dep, how in dependencies(self.services[name]).items()}
            for dep, condition in sorted(awaited):
                self.wait_for(dep, condition)
            self.compose("up", "-d", "--no-build", "--no-deps", *wave)

    def wait_for(self, service: str, condition: str) -> None:
        container = self.container(service)
        if condition == "service_healthy":
            assert healthy(container), f"{service} did not become healthy:\n{logs(container)}"
        elif condition == "service_completed_successfully":
            code = exited(container)
            assert code == 0, f"{service} did not complete successfully (exit {code}):\n{logs(container)}"
        # service_started: the container exists (self.container found it), and was started.

    def logs(self) -> str:
        """Every service's last lines: what a failed run shows."""
        return "\n".join(f"--- {name}\n{logs(self.container(name), 60)}" for name in self.services)

    def down(self) -> str:
        """Stop (SIGTERM, then each service's stop_grace_period) and remove, volumes included."""
        return self.compose("down", "-v", check=False)
