"""A real PostgreSQL cluster for the catalog tests: Debian's server binaries, a temporary
data directory, loopback TCP on a free port, trust authentication for the test user.

PostgreSQL refuses to run as root (CI runs as root), so when the tests are root the
cluster's processes run as ``nobody`` (``subprocess`` switches the user before exec);
otherwise as the current user. ``stop()``/``start()`` keep the data directory, which
the fault tests use to restart the engine under a running archive.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

SUPERUSER = "slidearchive"


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin (Debian's layout), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, root: Path | None = None):
        """A new cluster in its own directory under the system's temporary directory (pytest's
        per-test directories are private to root, so ``nobody`` could not enter them), or the
        cluster kept in ``root`` (a benchmark's generated rows, reused by its next run)."""
        self.bin = _bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="slidearchive-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        env = dict(os.environ, LC_ALL="C.UTF-8", PGTZ="UTC")
        out = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, env=env,
                             timeout=timeout, cwd=self.root, **kwargs)
        if check and out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return out

    def init(self) -> "PgCluster":
        """Create the cluster; one kept from an earlier run only gets this run's port."""
        if (self.data / "PG_VERSION").exists():
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(f"\nport = {self.port}\n")  # the last setting wins
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\nlisten_addresses = '127.0.0.1'\n"
                       f"port = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "max_connections = 300\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nshared_buffers = 128MB\n")
        return self

    def start(self) -> "PgCluster":
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = name or "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


_cluster: PgCluster | None = None


def shared_cluster() -> PgCluster:
    """One cluster per test process, started on first use and stopped at exit."""
    global _cluster
    if _cluster is None:
        import atexit

        _cluster = PgCluster().init().start()
        atexit.register(_cluster.destroy)
    return _cluster


if __name__ == "__main__":  # a quick manual check: start, create a database, stop
    c = PgCluster().init().start()
    print(c.create_database())
    c.destroy()
