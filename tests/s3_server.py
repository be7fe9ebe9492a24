"""A real S3 server on loopback for the storage tests and benchmarks: s3proxy (Maven Central).

s3proxy with its filesystem backend keeps each bucket as a directory under a temporary
root; it answers the S3 REST API with AWS signature v4, like a cloud bucket would. The
jars come from ``mvn -q -f tests/s3/pom.xml dependency:copy-dependencies``; without them
the S3 half of the tests is skipped locally and fails under CI (CI=true).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JARS = REPO / "tests" / "s3" / "target" / "dependency"
LOGBACK = REPO / "tests" / "s3" / "logback.xml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """Why s3proxy cannot run here, or None."""
    if shutil.which("java") is None:
        return "java is not installed"
    if not any(JARS.glob("s3proxy-*.jar")):
        return "run `mvn -q -f tests/s3/pom.xml dependency:copy-dependencies` first"
    return None


class S3Proxy:
    """One s3proxy process on 127.0.0.1; ``stop()`` then ``start()`` keeps its buckets."""

    def __init__(self, root: Path | None = None, port: int | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="s3proxy-"))
        self.data = self.root / "buckets"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.access_key = "test-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS_* variables a client (the archive) needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    def start(self, timeout: float = 60) -> "S3Proxy":
        conf = self.root / "s3proxy.conf"
        conf.write_text("\n".join([
            f"s3proxy.endpoint={self.endpoint}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={self.access_key}",
            f"s3proxy.credential={self.secret_key}",
            "jclouds.provider=filesystem-nio2",
            f"jclouds.filesystem.basedir={self.data}",
            "",
        ]))
        log = open(self.root / "s3proxy.log", "ab")
        self.process = subprocess.Popen(
            ["java", "-Xmx512m", "-XX:+UseSerialGC", f"-Dlogback.configurationFile={LOGBACK}",
             "-cp", f"{JARS}/*", "org.gaul.s3proxy.Main", "--properties", str(conf)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"s3proxy exited early:\n{self.log()[-3000:]}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
            except urllib.error.HTTPError:
                return self  # it answers (403 to an unsigned request): up
            except OSError:
                time.sleep(0.1)
            else:
                return self
        self.stop()
        raise RuntimeError(f"s3proxy did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        path = self.root / "s3proxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def client(self):
        """A boto3 client for test set-up and inspection (not the archive's own client)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def create_bucket(self, name: str | None = None) -> str:
        """Create bucket ``name`` (default: a fresh random name); returns the name."""
        name = name or f"sa-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def environment(self) -> dict[str, str]:
        return self.env()

    def config_lines(self) -> str:
        """Extra ``[storage]`` lines an archive on this server needs: none (all comes from ``env()``)."""
        return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- one server for a whole test session ---------------------------------------------

_shared: S3Proxy | None = None


def shared() -> S3Proxy:
    """The session's s3proxy, started on first use (conftest stops it at the end of the session)."""
    global _shared
    if _shared is None:
        reason = missing()
        if reason:
            raise RuntimeError(f"s3proxy unavailable: {reason}")
        _shared = S3Proxy().start()
    return _shared


def stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.cleanup()
        _shared = None


def new_bucket(s3: S3Proxy) -> str:
    """A fresh bucket: one per archive, so archives in one session never see each other's objects."""
    return s3.create_bucket()


S3Server = S3Proxy  # the name bench/scaleout.py uses
