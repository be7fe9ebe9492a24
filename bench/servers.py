"""The servers under test, each started by the benchmark itself on loopback ports
with its own temporary data directory, so that runs are repeatable and never
touch a system service or a developer's data.

All three expose the same small surface: start/stop/restart, the HTTP root that
frame URLs hang off, and (for the two archives) a DIMSE port and AE title.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

import procs

REPO = Path(__file__).resolve().parent.parent
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Server:
    """One server process group with a private directory under the run's temp dir."""

    name = "server"
    aet = "ANY-SCP"
    start_timeout = 120.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = procs.free_port()
        self.dimse_port = procs.free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "server.log"

    # --- to be provided by each kind -------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    web_path = ""  # path of the DICOMweb service root on the HTTP server

    @property
    def dicomweb_root(self) -> str:
        """Base URL of the DICOMweb service (no trailing slash)."""
        return self.base + self.web_path

    def ready_url(self) -> str:
        return self.dicomweb_root + "/studies"

    def frame_path(self, study: str, series: str, sop: str, frame: int) -> str:
        """URL path (no host) of one frame, 1-based as in PS3.18."""
        return f"{self.web_path}/studies/{study}/series/{series}/instances/{sop}/frames/{frame}"

    # --- lifecycle ---------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start the server and wait until it answers HTTP; seconds to ready."""
        self.proc = procs.start_group(self.command(), self.log, cwd=self.workdir,
                                      env=self.environment())
        try:
            return procs.wait_http(self.ready_url(), self.start_timeout, self.proc)
        except RuntimeError as e:
            tail = self.log.read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"{self.name}: {e}; log tail:\n{tail}") from None

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until work the server does after an ingest answered is done (nothing by default)."""

    def stop(self) -> None:
        procs.stop_group(self.proc)
        self.proc = None

    def restart(self) -> float:
        self.stop()
        return self.start()

    def wipe(self) -> None:
        """Stop and delete everything the server stored."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()


class SlideArchive(Server):
    """`python -m archive.cli serve` from the repository (same as the console script)."""

    name = "slidearchive"
    web_path = "/dicomweb"
    aet = os.environ.get("BENCH_SLIDEARCHIVE_AET", "SLIDEARCHIVE")

    def command(self) -> list[str]:
        config = self.workdir / "slidearchive.toml"
        config.write_text(os.environ.get("BENCH_SLIDEARCHIVE_CONFIG", "[auth]\nenabled = false\n"))
        return [sys.executable, "-m", "archive.cli", "serve", "--config", str(config),
                "--data-dir", str(self.workdir / "data"),
                "--http-port", str(self.http_port),
                "--dimse-port", str(self.dimse_port),
                "--host", "127.0.0.1"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def settle(self, timeout: float = 120.0) -> None:
        """Wait for the index worker's outbox to be empty (``/health/ready``), so that a frame
        load started after the STOW does not share the cores with the indexing of the slide."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            index = requests.get(self.base + "/health/ready", timeout=10).json()["components"].get("index", {})
            if index.get("status") != "ok" or not index.get("lag_events"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: the index worker did not catch up within {timeout:.0f} s")



class Orthanc(Server):
    """Debian's Orthanc with the DICOMweb plugin, default tuning, private storage.

    Only what a private instance needs is set; caches and thread counts stay at
    Orthanc's defaults so the comparison is with Orthanc as shipped.
    """

    name = "Orthanc"
    web_path = "/dicom-web"
    aet = "ORTHANC"

    def command(self) -> list[str]:
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dimse_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "StorageCompression": False,
            "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return ["Orthanc", str(path)]

    def environment(self) -> dict[str, str]:
        # Orthanc's DICOM server is DCMTK's, which Debian builds with Nagle's algorithm
        # left on unless TCP_NODELAY=1: each C-STORE response would then wait for a
        # delayed ACK (~40 ms), capping small-instance C-STORE at ~20/s whatever
        # Orthanc does. Its HTTP side already sets TCP_NODELAY ("TcpNoDelay": true).
        return {**os.environ, "TCP_NODELAY": "1"}



class Nginx(Server):
    """nginx serving each frame as a plain file: what this machine can do at best.

    The files are the frames' exact bytes, laid out as <SOPInstanceUID>/<n>, so a
    request costs one open+sendfile and no DICOM work at all.
    """

    name = "nginx"

    def __init__(self, workdir: Path, frames_root: Path) -> None:
        super().__init__(workdir)
        self.frames_root = frames_root

    def command(self) -> list[str]:
        conf = f"""
user root;
daemon off;
worker_processes 2;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    client_body_temp_path {self.workdir}/body;
    proxy_temp_path {self.workdir}/proxy;
    fastcgi_temp_path {self.workdir}/fastcgi;
    uwsgi_temp_path {self.workdir}/uwsgi;
    scgi_temp_path {self.workdir}/scgi;
    server {{
        listen 127.0.0.1:{self.http_port};
        root {self.frames_root};
        location = /ready {{ return 204; }}
    }}
}}
"""
        path = self.workdir / "nginx.conf"
        path.write_text(conf)
        return ["nginx", "-p", str(self.workdir), "-c", str(path)]

    def ready_url(self) -> str:
        return self.base + "/ready"

    def frame_path(self, study: str, series: str, sop: str, frame: int) -> str:
        return f"/{sop}/{frame}"
