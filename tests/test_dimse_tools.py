"""Helpers for the DIMSE tests: DCMTK's command-line tools against a running server (no tests here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from conftest import REPO

DCMTK = Path("/usr/bin")  # the pynetdicom apps shadow the DCMTK names on PATH
TOOLS = ("echoscu", "storescu", "findscu", "movescu", "getscu", "storescp")
AE = "SLIDEARCHIVE"
#: storescu options that make it propose each codec's transfer syntax.
PROPOSE = {"jpeg": ["-xy"], "native": [], "jpeg2000": ["-xv"]}

needs_dcmtk = pytest.mark.skipif(not all((DCMTK / t).exists() for t in TOOLS),
                                 reason="DCMTK not installed (apt-get install -y dcmtk)")


def dcmtk(tool: str, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(DCMTK / tool), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def echo_ok(server, calling: str = "ECHOSCU") -> bool:
    return dcmtk("echoscu", "-aet", calling, "-aec", AE, "127.0.0.1", str(server.dimse_port),
                 timeout=60).returncode == 0


def store(server, *paths: Path | str, options: list[str] = (), calling: str = "STORESCU") -> subprocess.CompletedProcess:
    """storescu proposing only what the files need (-R), folders scanned (+sd)."""
    return dcmtk("storescu", "-R", "+sd", *options, "-aet", calling, "-aec", AE, "127.0.0.1",
                 str(server.dimse_port), *map(str, paths))


def verify(server) -> subprocess.CompletedProcess:
    """``slidearchive verify`` on the live data directory (it only reads)."""
    return subprocess.run([sys.executable, "-m", "archive.cli", "verify", "--data-dir", str(server.data_dir),
                           "--config", str(server.config_path)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def assert_healthy(server, calling: str = "ECHOSCU") -> None:
    """After any bad input: the SCP still answers and storage and catalog agree."""
    assert echo_ok(server, calling), server.log_path.read_text()[-2000:]
    result = verify(server)
    assert result.returncode == 0, result.stdout + result.stderr
    spool = server.data_dir / "dimse-spool"
    assert not list(spool.iterdir()), "a partial C-STORE was left in the spool"


def find(server, out_dir: Path, level: str, keys: dict[str, str], model: str = "-S",
         calling: str = "FINDSCU") -> tuple[subprocess.CompletedProcess, list[pydicom.Dataset]]:
    """findscu with -X: every pending response identifier read back from disk."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    args = [model, "-aet", calling, "-aec", AE, "-X", "-od", str(out_dir), "-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        args += ["-k", f"{keyword}={value}"]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.dimse_port), timeout=120)
    responses = [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
    return result, responses
