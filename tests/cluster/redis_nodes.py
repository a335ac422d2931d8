"""A Redis primary, its replica and a Sentinel watching them: the installed redis-server, each
on a port and in a directory of the test's own, never the machine's Redis on 6379."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.cluster.rabbitmq_nodes import free_port

MASTER_NAME = "kc-primary"


@dataclass
class Server:
    """One redis-server process (a data node, or a Sentinel)."""

    name: str
    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self, *args: str) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        log = (self.base / f"{self.name}.log").open("a")
        self.process = subprocess.Popen(
            ["redis-server", *args], cwd=self.base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server {self.name} did not start:\n{self.log()[-2000:]}")
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it: Redis lets its replicas catch up first."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        path = self.base / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Sentinel:
    """A primary, a replica of it, and one Sentinel that fails the primary over to the replica
    one second after it stops answering."""

    base: Path
    primary: Server
    replica: Server
    sentinel: Server

    @classmethod
    def start(cls) -> Sentinel:
        base = Path(tempfile.mkdtemp(prefix="kc-sentinel-"))
        setup = cls(
            base,
            Server("primary", base / "primary"),
            Server("replica", base / "replica"),
            Server("sentinel", base / "sentinel"),
        )
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        try:
            setup.primary.start("--port", str(setup.primary.port), *common)
            setup.replica.start(
                "--port", str(setup.replica.port), *common, "--replicaof", "127.0.0.1", str(setup.primary.port)
            )
            deadline = time.monotonic() + 30
            while setup.replica.client().info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync with the primary"
                time.sleep(0.05)
            config = setup.sentinel.base / "sentinel.conf"
            setup.sentinel.base.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f"port {setup.sentinel.port}\n"
                "bind 127.0.0.1\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {setup.primary.port} 1\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            setup.sentinel.start(str(config), "--sentinel")
            deadline = time.monotonic() + 30
            while not setup.sentinel.client().execute_command("SENTINEL", "REPLICAS", MASTER_NAME):
                assert time.monotonic() < deadline, "the Sentinel did not find the replica"
                time.sleep(0.1)
        except BaseException:
            setup.stop()
            raise
        return setup

    def master(self) -> int:
        """The port of the primary the Sentinel names now."""
        _, port = self.sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def url(self, db: int = 0) -> str:
        """The broker URL: Celery's sentinel:// form (the primary's name is a transport option)."""
        return f"sentinel://127.0.0.1:{self.sentinel.port}/{db}"

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()
        shutil.rmtree(self.base, ignore_errors=True)
