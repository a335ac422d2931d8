"""PostgreSQL as deployments run it, for the tests: PgBouncer in transaction pooling mode in front
of the test server, and a primary with a synchronous streaming standby that a test can fail over.

Each is made by the harness from the installed packages (Debian's pgbouncer; PostgreSQL's
initdb, pg_basebackup, pg_ctl), on free ports, in a folder of its own, as the `postgres` user when
the tests run as root (neither server runs as root), and stopped by the fixture that made it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

BIN = Path(
    subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
    or "/usr/lib/postgresql/15/bin"
)
RUN_AS = "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    """The command as the `postgres` user when the tests run as root."""
    return ["runuser", "-u", RUN_AS, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def _private_folder(prefix: str) -> Path:
    """A new folder of the server user's, where that user can reach it (not under a folder of
    root's, such as pytest's temporary ones)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, RUN_AS, RUN_AS)
    return path


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:.0f} s")
        time.sleep(0.1)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PgBouncer:
    """Debian's pgbouncer, `pool_mode = transaction`, forwarding every database of the server at
    `target_port` to the same name: a test database reached through it is the same database. A few
    server connections per database, handed out in turn (server_round_robin), so that a client's
    consecutive transactions run on different ones, as under load in production."""

    def __init__(self, target_port: int = 5432, pool_size: int = 4) -> None:
        self.folder = _private_folder("kc-pgbouncer-")
        self.port = free_port()
        self.target_port = target_port
        self.pool_size = pool_size
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, direct_url: str) -> str:
        """`direct_url` (a database of the target server) through this pooler."""
        return direct_url.replace(f"127.0.0.1:{self.target_port}/", f"127.0.0.1:{self.port}/", 1)

    def start(self) -> PgBouncer:
        users = self.folder / "userlist.txt"
        users.write_text("".join(f'"{u}" ""\n' for u in ("postgres", "kc_owner", "kc_web", "kc_worker")))
        config = self.folder / "pgbouncer.ini"
        config.write_text(
            f"""[databases]
* = host=127.0.0.1 port={self.target_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 1000
server_reset_query =
server_login_retry = 1
server_round_robin = 1
ignore_startup_parameters = extra_float_digits
logfile = {self.folder / "pgbouncer.log"}
"""
        )
        for path in (users, config):
            if os.geteuid() == 0:
                shutil.chown(path, RUN_AS, RUN_AS)
        log = (self.folder / "stdout.log").open("wb")
        self.process = subprocess.Popen(_as_server_user(["pgbouncer", str(config)]), stdout=log, stderr=log)
        wait_for(lambda: answers(self.port) or self.process.poll() is not None, what="pgbouncer listening")  # type: ignore[union-attr]
        if self.process.poll() is not None:
            raise RuntimeError(f"pgbouncer did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


class Server:
    """One PostgreSQL server of the installed release: its data folder and port."""

    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        _run(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "60", "start"]
        )

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m fast (or immediate: as a crash, no shutdown checkpoint)."""
        if (self.data / "postmaster.pid").exists():
            _run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def promote(self) -> None:
        _run([str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote"])

    def in_recovery(self) -> bool:
        with psycopg.connect(self.url(), connect_timeout=3) as conn:
            return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]

    def log(self) -> str:
        path = self.data / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    """A primary and a streaming standby that confirms every commit (synchronous replication):
    what the primary acknowledged, the standby has. The standby itself waits for no standby, so
    that once promoted it takes writes alone."""

    def __init__(self) -> None:
        self.folder = _private_folder("kc-pg-cluster-")
        self.primary = Server(self.folder / "primary", free_port())
        self.standby = Server(self.folder / "standby", free_port())

    def url(self, database: str, **params: str) -> str:
        """A multi-host URL naming both servers, primary first, as libpq's clients list them."""
        query = "&".join(f"{k}={v}" for k, v in {"target_session_attrs": "read-write", **params}.items())
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/{database}?{query}"

    def start(self) -> Cluster:
        primary, standby = self.primary, self.standby
        _run(
            [str(BIN / "initdb"), "-D", str(primary.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]
        )
        _append(
            primary.data / "postgresql.conf",
            port=primary.port,
            listen_addresses="'127.0.0.1'",
            unix_socket_directories=f"'{self.folder}'",
            wal_level="replica",
            max_wal_senders=5,
            hot_standby="on",
            fsync="off",
            synchronous_standby_names="'standby'",
        )
        primary.start()
        _run(
            [
                str(BIN / "pg_basebackup"),
                "-D",
                str(standby.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-X",
                "stream",
                "--no-sync",
            ]
        )
        _append(
            standby.data / "postgresql.conf",
            port=standby.port,
            synchronous_standby_names="''",
            primary_conninfo=f"'host=127.0.0.1 port={primary.port} user=postgres application_name=standby'",
        )
        (standby.data / "standby.signal").touch()
        if os.geteuid() == 0:
            shutil.chown(standby.data / "standby.signal", RUN_AS, RUN_AS)
        standby.start()
        wait_for(self._synchronous, what="the standby streaming synchronously")
        return self

    def _synchronous(self) -> bool:
        with psycopg.connect(self.primary.url(), connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'"
            ).fetchone()
        return row is not None and row[0] == "sync"

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            try:
                server.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def _append(path: Path, **settings: object) -> None:
    with path.open("a") as conf:
        conf.write("\n# tests/servers.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
