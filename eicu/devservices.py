"""Throw-away local Mosquitto and PostgreSQL servers on free ports, for tests and benchmarks.

Each server lives in its own temporary folder and can be stopped and started again to inject
faults. Binaries come from Debian's ``mosquitto`` and ``postgresql`` packages. PostgreSQL
refuses to run as root, so when running as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class ServiceError(RuntimeError):
    """A local server could not be started or stopped."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(iter(glob.glob("/usr/sbin/mosquitto")), None)


def postgres_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


class Mosquitto:
    """A Mosquitto broker on a free port, with persistence so sessions survive a restart."""

    def __init__(
        self,
        port: int | None = None,
        *,
        auth: list[str] | None = None,
        listener: list[str] | None = None,
    ) -> None:
        """``auth``: configuration lines that replace anonymous access (see eicu.brokerauth);
        ``listener``: settings of the listener itself (TLS files, ``use_username_as_clientid``;
        see :func:`eicu.brokerauth.listener_config`)."""
        binary = mosquitto_binary()
        if binary is None:
            raise ServiceError("mosquitto not installed (Debian package 'mosquitto')")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eicu-mosquitto-"))
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(listener or []),
            *(auth or ["allow_anonymous true"]),
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.dir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        if self.proc is not None:
            return self
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """A PostgreSQL cluster on a free port (trust authentication on 127.0.0.1)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        durable: bool = False,
        bindir: Path | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        """``bindir``: the server's bin folder (default: the newest Debian PostgreSQL);
        ``options``: more postgresql.conf settings, e.g. ``shared_preload_libraries``."""
        bindir = bindir or postgres_bindir()
        if bindir is None:
            raise ServiceError("PostgreSQL server not installed (Debian package 'postgresql')")
        if not (bindir / "initdb").is_file():
            raise ServiceError(f"no PostgreSQL server in {bindir} (initdb missing)")
        self.bindir = bindir
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eicu-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        extra = options
        options = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "max_connections": "100",
            "shared_buffers": "256MB",
        }
        if not durable:
            options.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        options.update(extra or {})
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in options.items())
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, check=False)
        if result.returncode != 0:
            raise ServiceError(f"{tool} failed: {result.stderr.strip()[-500:]}")

    def start(self) -> Postgres:
        if not self.running:
            log = self.dir / "server.log"
            self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "30", "start")
            self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        with contextlib.suppress(ServiceError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
