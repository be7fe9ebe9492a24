"""Shared fixtures: a real slidearchive server in a subprocess, on free loopback ports."""
from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
MAKE_WSI = SHARED / "tools" / "make_wsi.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import s3_server  # noqa: E402

#: ``SLIDEARCHIVE_TEST_STORAGE=s3``: every Server stores its instances in a bucket of the session's
#: s3proxy instead of its data directory (scripts/test.sh runs the whole suite a second time so, with
#: the PostgreSQL catalog).
TEST_STORAGE = os.environ.get("SLIDEARCHIVE_TEST_STORAGE", "local")
S3_PREFIX = "archive"  # the key prefix of those servers' objects

import catalog_rows  # noqa: E402  (tests/ is on sys.path from here on)
import pg_cluster  # noqa: E402

#: The catalog backend the suite's servers use: "sqlite" (default) or "postgresql".
TEST_CATALOG = os.environ.get("SLIDEARCHIVE_TEST_CATALOG", "sqlite")
if TEST_CATALOG not in ("sqlite", "postgresql"):
    raise RuntimeError(f"SLIDEARCHIVE_TEST_CATALOG must be sqlite or postgresql, not {TEST_CATALOG!r}")


def make_wsi(out: Path, *args: str) -> dict[str, Path]:
    """A slide from the shared generator (PHI in headers, burned into LABEL and OVERVIEW): {stem: path}."""
    subprocess.run([sys.executable, str(MAKE_WSI), str(out), *args], check=True, capture_output=True)
    return {p.stem: p for p in sorted(Path(out).glob("*.dcm"))}


#: Listening ports come from 20000-31999, below Linux's ephemeral range (32768-60999), split in
#: one block per xdist worker: a port the kernel handed out (bind to 0) can be taken by an
#: outgoing connection before the server meant to listen on it binds it (a Java peer failed
#: that way in CI), and two workers never pick the same port.
PORTS = range(20000, 32000)
_next_port = itertools.count()


def free_port() -> int:
    """A loopback port nobody listens on now, from this test worker's own block."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    block = len(PORTS) // workers
    base = PORTS.start + worker * block
    for _ in range(block):
        port = base + next(_next_port) % block
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + block - 1}")


def _wait_port(port: int, deadline: float) -> bool:
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Server:
    """``slidearchive serve`` as a child process; its output goes to ``log_path``."""

    def __init__(self, root: Path, config: str = "", dimse: bool = True, args: tuple[str, ...] = (),
                 storage: str = ""):
        """``storage``: lines of a [storage] section, added to the bucket's when the suite runs on S3."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.http_port = free_port()
        self.dimse_port = free_port()
        self.log_path = root / "server.log"
        self.config_path = root / "config.toml"
        #: The catalog: <data_dir>/catalog.sqlite, or a fresh PostgreSQL database when the suite
        #: runs with SLIDEARCHIVE_TEST_CATALOG=postgresql (and the test names no [catalog] itself).
        self.catalog_location: Path | str = self.data_dir / "catalog.sqlite"
        if TEST_CATALOG == "postgresql" and "[catalog]" not in config:
            self.catalog_location = pg_cluster.shared_cluster().create_database()
            config += f'\n[catalog]\nurl = "{self.catalog_location}"\n'
        self.env = dict(os.environ)
        #: The directory s3proxy keeps this server's bucket in, when the suite runs on S3.
        self.bucket_dir: Path | None = None
        if TEST_STORAGE == "s3" and "[storage]" not in config:
            section, self.bucket_dir = s3_storage_config(self.env)
            config += section + storage
        elif storage:
            config += "\n[storage]\n" + storage
        self.config_path.write_text(config if "[auth]" in config else AUTH_OFF + config)
        self.dimse = dimse
        self.args = args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def cli_args(self) -> tuple[str, ...]:
        """What a ``slidearchive`` command needs to act on this server's archive, whatever its backends."""
        return ("--data-dir", str(self.data_dir), "--config", str(self.config_path))

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicomweb"

    def start(self, timeout: float = 60) -> "Server":
        cmd = [sys.executable, "-m", "archive.cli", "serve", "--data-dir", str(self.data_dir),
               "--http-port", str(self.http_port), "--dimse-port", str(self.dimse_port),
               "--config", str(self.config_path), "--workers", "2", *self.args]
        if not self.dimse:
            cmd.append("--no-dimse")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env=self.env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not answer:\n{self.log_path.read_text()[-3000:]}")
        if self.dimse and importlib.util.find_spec("archive.dimse.listener") and not _wait_port(self.dimse_port, deadline):
            raise RuntimeError(f"DIMSE port did not open:\n{self.log_path.read_text()[-3000:]}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(45)  # the documented bound: stop_timeout (30 s) + 10 s
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def stored_file(self, storage_id: str) -> Path:
        """Where the instance with catalog ``storage_id`` lies at rest: its file, or the object s3proxy keeps."""
        if self.bucket_dir:
            return self.bucket_dir / S3_PREFIX / storage_id
        return self.data_dir / "storage" / storage_id[:2] / storage_id[2:4] / storage_id

    def stored_files(self) -> list[Path]:
        """The stored instances as files: the storage directory's, or the objects s3proxy keeps for the bucket."""
        root = self.bucket_dir or self.data_dir / "storage"
        return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")

    def kept(self) -> list[tuple[str, bytes]]:
        """Everything this server keeps at rest, as (where, bytes): the files of its data directory
        (key files under ``secrets`` left out), its bucket's objects, every row of a PostgreSQL
        catalog, and its log. What the privacy tests search for identifiers, whatever the backends.

        A SQLite catalog's files are searched with its zlib columns cut out, and its rows as well,
        those columns inflated (catalog_rows.sqlite_rows): compressed bytes would hide an identifier
        and could match a short one by chance."""
        roots = [self.data_dir] + ([self.bucket_dir] if self.bucket_dir else [])
        kept = [(str(p), p.read_bytes()) for root in roots for p in root.rglob("*")
                if p.is_file() and "secrets" not in p.relative_to(root).parts]
        if isinstance(self.catalog_location, str):
            kept += catalog_rows.postgresql_rows(self.catalog_location)
        elif self.catalog_location.exists():
            rows, compressed = catalog_rows.sqlite_rows(self.catalog_location)
            catalog_files = str(self.catalog_location)  # with its -wal and -shm
            kept = [(where, catalog_rows.without(data, compressed) if where.startswith(catalog_files) else data)
                    for where, data in kept] + rows
        return kept + [("server log", self.log_path.read_bytes())]


def s3_storage_config(env: dict[str, str]) -> tuple[str, Path]:
    """A [storage] section on a fresh bucket of the session's s3proxy, and the directory s3proxy keeps
    that bucket in; its AWS_* variables go into ``env`` and into this process's environment (tests run
    ``slidearchive verify`` and ``import`` against the server's data directory as subprocesses; one
    server, so the same credentials for all)."""
    s3 = s3_server.shared()
    env.update(s3.env())
    os.environ.update(s3.env())
    bucket = s3_server.new_bucket(s3)
    return f'\n[storage]\nurl = "s3://{bucket}/{S3_PREFIX}"\n', s3.data / bucket


def require_s3() -> None:
    reason = s3_server.missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"s3proxy unavailable under CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def s3proxy() -> Iterator[s3_server.S3Proxy]:
    """The session's real S3 server (s3proxy on loopback): ``endpoint``, ``env()``, ``client()``."""
    require_s3()
    yield s3_server.shared()


@pytest.fixture(scope="session", autouse=True)
def _stop_s3proxy():
    yield
    s3_server.stop_shared()


@pytest.fixture
def make_server(tmp_path_factory):
    """Factory: ``make_server(config="...", dimse=True)`` starts a fresh server, stopped at teardown."""
    servers: list[Server] = []

    def factory(config: str = "", dimse: bool = True, args: tuple[str, ...] = ()) -> Server:
        server = Server(tmp_path_factory.mktemp("server"), config, dimse, args).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One identified-policy server per test module (stores as received), DIMSE on."""
    s = Server(tmp_path_factory.mktemp("server"), IDENTIFIED).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    """Like ``server`` but DICOMweb only, for tests that need no DIMSE listener."""
    s = Server(tmp_path_factory.mktemp("server"), IDENTIFIED, dimse=False).start()
    yield s
    s.stop()


#: Tests that do not test access control run with authentication off (allowed on loopback only);
#: the auth tests write their own [auth] section.
AUTH_OFF = """
[auth]
enabled = false
"""

IDENTIFIED = """
[deid]
default = "identified"
[deid.policies.identified]
identified = true
"""


@pytest.fixture(scope="session")
def postgresql() -> pg_cluster.PgCluster:
    """The test PostgreSQL cluster (Debian's server on loopback, a temporary directory), one per session."""
    return pg_cluster.shared_cluster()


@pytest.fixture
def postgresql_url(postgresql) -> str:
    """A ``postgresql://`` URL of a fresh, empty database."""
    return postgresql.create_database()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"shared test objects not found at {SHARED_DATA}"
    return SHARED_DATA
