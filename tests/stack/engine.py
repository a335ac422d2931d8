"""The container engine as the stack tests use it: scripts/containers.sh picks podman or docker
(the one that works here) and holds every engine-specific flag, so the tests never do."""

from __future__ import annotations

import json
import subprocess
import time
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "containers.sh"
IMAGE = "kc-tasks:local"


def containers(*args: str, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """`scripts/containers.sh ARGS`: its output, stderr kept for the failure message."""
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and done.returncode != 0:
        raise AssertionError(f"scripts/containers.sh {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def engine(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The engine itself (`podman --runtime runc ARGS` or `docker ARGS`)."""
    return containers("run", *args, check=check, timeout=timeout)


@cache
def engine_name() -> str:
    return containers("engine").stdout.strip()


def inspect(container: str) -> dict:
    [info] = json.loads(engine("inspect", "--type", "container", container).stdout)
    return info


def state(container: str) -> dict:
    return inspect(container)["State"]


def logs(container: str, tail: int = 200) -> str:
    done = engine("logs", "--tail", str(tail), container, check=False)
    return done.stdout + done.stderr


def checked(container: str) -> bool:
    """The container's own healthcheck, as the engine runs it: did it pass?

    docker runs the checks itself, on their interval: its verdict, once it has one. podman 4.3
    runs them from systemd timers, and a machine without systemd (this one, CI) has none:
    `podman healthcheck run` runs the check now, records its result, and exits 0 only when it
    passed."""
    if engine_name() == "podman":
        return engine("healthcheck", "run", container, check=False, timeout=120).returncode == 0
    while (state(container).get("Health") or {}).get("Status") == "starting":
        time.sleep(2)
    return (state(container).get("Health") or {}).get("Status") == "healthy"


def healthy(container: str, timeout: float = 180) -> bool:
    """Whether the container's healthcheck passes before `timeout` (while it still runs)."""
    deadline = time.monotonic() + timeout
    while state(container).get("Status") == "running":
        if checked(container):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(2)
    return False


def exited(container: str, timeout: float = 180) -> int | None:
    """The exit code of a container that runs once, when it has ended before `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = state(container)
        if current.get("Status") in ("exited", "stopped"):
            return int(current.get("ExitCode", -1))
        time.sleep(1)
    return None


def stopped_cleanly(container: str) -> bool:
    """Exited by itself after SIGTERM: 0, or 143 (128 + SIGTERM) from a process that re-raises
    the signal once it has shut down (uvicorn); never 137, a SIGKILL at the end of the grace period."""
    current = state(container)
    return current.get("Status") in ("exited", "stopped") and current.get("ExitCode") in (0, 143)
