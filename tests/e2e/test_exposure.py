"""The Procfile's flower and beat, really started: Flower stays on the loopback interface
unless it has authentication, and beat's and Flower's pickle state files live in private
folders, never in a folder other users can write."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import BIN, free_port, procfile, stop_group, wait_until


@dataclass
class Started:
    process: subprocess.Popen
    log: Path
    port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def exited(self) -> int | None:
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            return None


@pytest.fixture
def run(tmp_path: Path, rabbitmq_url: str) -> Iterator[Callable[..., Started]]:
    """run(kind, **env) starts the Procfile's line of `kind` in tmp_path, as `sh -c "exec ..."`."""
    started: list[Started] = []

    def start(kind: str, **extra: str) -> Started:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "KC_BEAT"))}
        env.update(PATH=BIN + os.pathsep + env.get("PATH", ""), FLOWER_PORT=str(port), PYTHONUNBUFFERED="1")
        env.update(CELERY_BROKER_URL=rabbitmq_url, **extra)
        log = tmp_path / f"{kind}{len(started)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                ["sh", "-c", "exec " + procfile(kind)],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(Started(process, log, port))
        return started[-1]

    yield start
    for s in started:
        stop_group(s.process)


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def outward_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def healthy(flower: Started) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{flower.port}/healthcheck", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_flower_listens_on_loopback_only_by_default(run: Callable[..., Started], tmp_path: Path) -> None:
    flower = run("flower")
    assert wait_until(lambda: healthy(flower) or flower.process.poll() is not None, timeout=60), flower.text()
    assert healthy(flower), flower.text()[-3000:]
    outward = outward_address()
    if outward is not None:
        assert not answers(outward, flower.port), f"Flower answers on {outward}"
    # Its pickle database: in a private folder of the working directory, not in /tmp.
    state = tmp_path / ".kc-state"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "/tmp/kc_tasks-flower.db" not in flower.text()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"FLOWER_ADDRESS": "0.0.0.0"}, "without authentication: set FLOWER_BASIC_AUTH"),
        ({"FLOWER_ADDRESS": "::"}, "Flower would listen on :: without authentication"),
        (
            {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "kc:pw-of-flower", "FLOWER_UNAUTHENTICATED_API": "true"},
            "FLOWER_UNAUTHENTICATED_API opens Flower's API",
        ),
        # On loopback too: without authentication Flower skips its cross-site check, so any page
        # open in a browser that reaches 127.0.0.1:5555 (an SSH tunnel's too) could post
        # /api/task/async-apply/kc_tasks.create_purchase and grant a course.
        (
            {"FLOWER_UNAUTHENTICATED_API": "true"},
            "FLOWER_UNAUTHENTICATED_API opens Flower's API to anyone who reaches 127.0.0.1, and to any web page",
        ),
        ({"FLOWER_UNAUTHENTICATED_API": "yes", "FLOWER_BASIC_AUTH": "kc:pw-of-flower"}, "unset it"),
    ],
    ids=["all-ipv4", "all-ipv6", "unauthenticated-api", "unauthenticated-api-on-loopback", "open-api-beside-auth"],
)
def test_flower_refuses_a_public_address_without_authentication_and_an_open_api_anywhere(
    run: Callable[..., Started], env: dict[str, str], says: str
) -> None:
    flower = run("flower", **env)
    assert flower.exited() == 1, flower.text()[-3000:]
    refusals = [line for line in flower.text().splitlines() if "kc_tasks flower: refusing to start:" in line]
    assert len(refusals) == 1 and says in refusals[0], flower.text()[-3000:]
    assert not answers("127.0.0.1", flower.port)


def test_flower_with_basic_auth_may_listen_on_every_interface(run: Callable[..., Started]) -> None:
    flower = run("flower", FLOWER_ADDRESS="0.0.0.0", FLOWER_BASIC_AUTH="kc:pw-of-flower")
    assert wait_until(lambda: healthy(flower) or flower.process.poll() is not None, timeout=60), flower.text()
    assert healthy(flower), flower.text()[-3000:]
    base = f"http://127.0.0.1:{flower.port}"
    anonymous = httpx.post(base + "/api/task/async-apply/kc_tasks.create_purchase", json={"kwargs": {}}, timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers.get("access-control-allow-origin") is None


def test_flower_refuses_a_database_in_a_folder_others_can_write(run: Callable[..., Started], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    flower = run("flower", FLOWER_DB=str(shared / "flower.db"))
    assert flower.exited() == 1, flower.text()[-3000:]
    assert "writable by other users" in flower.text()


def test_beat_keeps_its_schedule_in_a_private_folder(run: Callable[..., Started], tmp_path: Path) -> None:
    beat = run("beat")
    schedule = tmp_path / ".kc-state"
    assert wait_until(lambda: any(schedule.glob("beat-schedule*")) or beat.process.poll() is not None, timeout=60)
    assert any(schedule.glob("beat-schedule*")), beat.text()[-3000:]
    assert stat.S_IMODE(schedule.stat().st_mode) == 0o700


def test_beat_refuses_a_schedule_in_a_folder_others_can_write(run: Callable[..., Started], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    beat = run("beat", KC_BEAT_SCHEDULE=str(shared / "beat-schedule"))
    assert beat.exited() == 1, beat.text()[-3000:]
    assert "kc_tasks beat: refusing to start:" in beat.text() and "writable by other users" in beat.text()
    assert not any(shared.iterdir()), "nothing was opened there"
