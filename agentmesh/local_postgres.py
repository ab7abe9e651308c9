"""A PostgreSQL server of one's own, for tests and benchmarks: a fresh cluster in a temp dir, on a
free loopback port, stopped by its pid. Each user gets a database of its own on it (`new_database`).

PostgreSQL refuses to run as root; as root the cluster is made and run as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from services.runtime.procs import free_port

# scripts/test sets this: there, a missing PostgreSQL is a failure, not a skip.
REQUIRED_ENV = "AGENTMESH_TEST_POSTGRES"


def find_bin_dir() -> Path | None:
    """The newest installed server's bin dir (Debian keeps it off PATH), or where initdb is."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="agentmesh-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "agentmesh"
        self.proc: subprocess.Popen[bytes] | None = None
        # Run as `postgres` when we are root (the server will not run as root), with its own group
        # and none of root's.
        self._as: dict[str, object] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout_s: float = 30.0) -> None:
        if self._as:
            os.chown(self.root, self._as["user"], self._as["group"])  # type: ignore[arg-type]
        log = self.root / "server.log"
        subprocess.run(
            [
                str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ],
            check=True, capture_output=True, timeout=120, **self._as,
        )  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                    "-c", "max_connections=200",
                ],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **self._as,
            )  # fmt: skip
        self._wait_ready(timeout_s, log)

    def _wait_ready(self, timeout_s: float, log: Path) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{log.read_text()[-2000:]}")
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    tail = log.read_text()[-2000:]
                    raise RuntimeError(f"postgres not ready in {timeout_s:g}s:\n{tail}") from exc
                time.sleep(0.1)

    def new_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: clients are cut off, no wait
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
