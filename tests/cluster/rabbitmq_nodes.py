"""Three RabbitMQ nodes of the installed server, clustered, each the test run's own.

Each node has its own name (kc-a-<run id>@localhost, ...), AMQP, management and distribution
ports, and data and log directories under one temporary directory. They share the Erlang
cookie that `rabbitmqctl` uses on this machine (/var/lib/rabbitmq/.erlang.cookie, copied,
never changed), so that `rabbitmqctl -n <node>` reaches them as it reaches the machine's own
node, which they leave alone (epmd on 4369 is shared by every node of the machine, as usual).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SHARED_COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")
USER, PASSWORD = "guest", "guest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DeadPort:
    """A port bound and never listened on: a connection to it is refused, as by a node that is
    down, and no other process can take it meanwhile. Close it when done."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])

    def close(self) -> None:
        self._socket.close()


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass
class Node:
    name: str  # kc-a-<run id>@localhost
    base: Path  # its data, logs, configuration and the cookie's home
    amqp_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)

    seed: str | None = None  # the node to join at first boot

    def __post_init__(self) -> None:
        for folder in ("home", "mnesia", "log"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        cookie = self.base / "home" / ".erlang.cookie"
        cookie.write_bytes(SHARED_COOKIE.read_bytes().strip())
        cookie.chmod(0o400)
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            # A node alone after its peers stopped keeps serving (the default, said aloud).
            "cluster_partition_handling = ignore\n"
        )
        if self.seed:  # joins the seed's cluster at its first boot (RabbitMQ's peer discovery)
            with (self.base / "rabbitmq.conf").open("a") as conf:
                conf.write(
                    "cluster_formation.peer_discovery_backend = classic_config\n"
                    f"cluster_formation.classic_config.nodes.1 = {self.seed}\n"
                    "cluster_formation.randomized_startup_delay_range.min = 0\n"
                    "cluster_formation.randomized_startup_delay_range.max = 1\n"
                )
        (self.base / "rabbitmq-env.conf").write_text("")  # not the machine's (its NODENAME)

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            HOME=str(self.base / "home"),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )

    def ctl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """`rabbitmqctl -n <this node> ARGS...`; its output."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"rabbitmqctl -n {self.name} {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> None:
        """Boots the node in the background (`rabbitmq-server -detached`); see await_started."""
        subprocess.run([str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"], env=self.env(), check=True, cwd=self.base)

    def await_started(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not (answers(self.amqp_port) and answers(self.management_port)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not start in {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        self.ctl("await_startup")

    def stop(self) -> None:
        """Stops the node and waits for its process to end (`rabbitmqctl shutdown`)."""
        self.ctl("shutdown", check=False)

    def kill(self) -> None:
        """SIGKILL to the node's Erlang VM, as a crash or a power cut would take it; returns once
        it is gone."""
        pid_file = self.base / "mnesia" / f"{self.name}.pid"
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, f"{self.name} ({pid}) outlived SIGKILL"
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return answers(self.amqp_port)

    def log(self) -> str:
        logs = sorted((self.base / "log").glob("*.log"))
        return "".join(path.read_text(errors="replace") for path in logs)

    def url(self, vhost: str) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.amqp_port}/{quote(vhost, safe='')}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.management_url + "/api", auth=(USER, PASSWORD), timeout=10)


@dataclass
class Cluster:
    nodes: list[Node]
    base: Path

    @classmethod
    def start(cls, run_id: str, size: int = 3) -> Cluster:
        """The first node booted, then the others at once, each joining the first as it boots."""
        base = Path(tempfile.mkdtemp(prefix=f"kc-cluster-{run_id}-"))
        names = [f"kc-{chr(ord('a') + i)}-{run_id}@localhost" for i in range(size)]
        nodes = [Node(name, base / f"node{i}", seed=names[0] if i else None) for i, name in enumerate(names)]
        cluster = cls(nodes, base)
        try:
            nodes[0].start()
            nodes[0].await_started()
            for node in nodes[1:]:
                node.start()
            for node in nodes[1:]:
                node.await_started()
            running = nodes[0].ctl("cluster_status", "--formatter", "json")
            assert all(name in running.split('"running_nodes"')[1] for name in names), running
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def destroy(self) -> None:
        for node in self.nodes:
            if node.running:
                node.kill()  # its data goes with it: nothing to shut down cleanly for
        shutil.rmtree(self.base, ignore_errors=True)

    def add_vhost(self, vhost: str, default_queue_type: str | None = "quorum") -> None:
        """A vhost of the cluster, guest allowed in; new queues declared in it without a type
        are of `default_queue_type`."""
        args = ["add_vhost", vhost] + (["--default-queue-type", default_queue_type] if default_queue_type else [])
        node = self.any_running()
        node.ctl(*args)
        node.ctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        self.any_running().ctl("delete_vhost", vhost, check=False)

    def any_running(self) -> Node:
        return next(node for node in self.nodes if node.running)

    def url_list(self, vhost: str, nodes: Sequence[Node] | None = None) -> str:
        """The broker URL list (kombu's failover form), the first node first."""
        return ";".join(node.url(vhost) for node in nodes or self.nodes)

    def queues(self, vhost: str) -> dict[str, dict[str, str]]:
        """Each queue of the vhost: its type, leader, members and messages (ready and
        unacknowledged), as a running node knows them now (the management API's figures lag)."""
        columns = ("name", "type", "leader", "members", "messages")
        listed = self.any_running().ctl("list_queues", "-p", vhost, *columns, "--no-table-headers")
        rows = [dict(zip(columns, line.split("\t"), strict=True)) for line in listed.splitlines() if line]
        return {row["name"]: row for row in rows}

    def messages(self, vhost: str, queue: str) -> int:
        return int(self.queues(vhost).get(queue, {}).get("messages", 0))

    def leader(self, vhost: str, queue: str) -> Node:
        """The node that leads quorum queue `queue`."""
        return self.node(self.queues(vhost)[queue]["leader"])

    def management_urls(self) -> str:
        """Each node's management API, a ;-separated list (`kc-tasks dlq policy --management-url`)."""
        return ";".join(node.management_url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)
