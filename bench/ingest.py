"""Ingest benchmarks: how fast a whole slide goes in, and what it costs in memory.

Three measurements, each on a freshly started server with empty storage so the
memory peak belongs to this ingest alone:
  * STOW-RS of every instance of the slide in one multipart/related request,
    streamed from the files with a Content-Length (never held in memory here);
  * DIMSE C-STORE of the same files with DCMTK's storescu, one association;
  * C-STORE of many small instances, for the per-instance overhead;
  * STOW-RS of the same small instances, one request each (on one connection).
Peak memory is the summed RSS of the server's process tree, sampled every 20 ms.

    python bench/ingest.py SLIDE_DIR [--small N] [--servers slidearchive,Orthanc]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dataset
import procs
from servers import Orthanc, Server, SlideArchive

CHUNK = 1 << 20
STOW_TIMEOUT = 1800.0
STORESCU_TIMEOUT = 1800.0


@dataclass
class IngestResult:
    """One ingest: what went in, how long it took, the server's memory peak."""

    label: str
    server: str
    nbytes: int
    instances: int
    seconds: float
    peak_rss_mb: float
    start_rss_mb: float
    ok: bool
    detail: str = ""
    cpu_s: float = 0.0  # CPU the server tree used during the ingest
    load: float = 0.0  # 1-minute load average before the ingest (the machine is shared)
    response: str = ""  # the STOW response (JSON + Warning headers), for the UIDs stored
    start_pss_mb: float = 0.0  # PSS: shared pages counted once (procs.rollup_kb)
    peak_pss_mb: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.ok and self.seconds else 0.0

    @property
    def cpu_s_per_gb(self) -> float | None:
        return self.cpu_s / (self.nbytes / 1e9) if self.ok and self.nbytes else None

    @property
    def cpu_ms_per_instance(self) -> float | None:
        return self.cpu_s * 1000 / self.instances if self.ok and self.instances else None

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.ok and self.seconds else 0.0


def multipart_body(paths: list[Path], boundary: str) -> tuple[int, Iterator[bytes]]:
    """Length and chunks of a multipart/related body of DICOM files, read lazily."""
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in paths]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(h) + p.stat().st_size + 2 for h, p in zip(heads, paths)) + len(tail)

    def chunks() -> Iterator[bytes]:
        for head, path in zip(heads, paths):
            yield head
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    yield block
            yield b"\r\n"
        yield tail

    return length, chunks()


def stow(server: Server, paths: list[Path]) -> tuple[float, int, str]:
    """POST all paths in one STOW-RS request; (seconds, HTTP status, body).

    Warning headers, where the server sends any, are appended to the body after
    a blank line, so that what the server said about each part is kept.
    """
    boundary = uuid.uuid4().hex
    length, body = multipart_body(paths, boundary)
    url = urlsplit(server.dicomweb_root + "/studies")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=STOW_TIMEOUT)
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Content-Length": str(length),
        "Accept": "application/dicom+json",
    }
    t0 = time.monotonic()
    try:
        conn.request("POST", url.path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        warnings = resp.headers.get_all("Warning") or []
    finally:
        conn.close()
    if warnings:
        text += "\n\nWarning: " + "\nWarning: ".join(warnings)
    return time.monotonic() - t0, resp.status, text


def stow_json(text: str) -> dict:
    """The JSON part of what stow() returned (Warning headers stripped)."""
    doc = text.split("\n\nWarning: ")[0]
    return json.loads(doc) if doc.strip() else {}


def stow_failures(status: int, text: str) -> str:
    """Empty if the STOW response says every part was stored (or stored with a
    warning, as PS3.18 allows with 202), else why not."""
    if status not in (200, 202):
        return f"HTTP {status}: {text[:800]}"
    try:
        doc = stow_json(text)
    except ValueError:
        return f"HTTP {status} but the body is not JSON: {text[:300]}"
    failed = doc.get("00081198", {}).get("Value") if isinstance(doc, dict) else None
    return f"FailedSOPSequence has {len(failed)} items: {json.dumps(failed)[:500]}" if failed else ""


def stow_warnings(status: int, text: str) -> str:
    """What a 202 said about the parts stored with warnings (for the report)."""
    if status != 202:
        return ""
    warned = [i for i in stow_json(text).get("00081199", {}).get("Value", []) if "00081196" in i]
    reasons = sorted({f"0x{v:04X}" for i in warned for v in i["00081196"]["Value"]})
    said = [line for line in text.split("\n") if line.startswith("Warning: ")]
    return (f"HTTP 202, {len(warned)} part(s) with WarningReason {', '.join(reasons)}"
            + (f"; {'; '.join(said)[:400]}" if said else ""))


def stow_each(server: Server, paths: list[Path]) -> tuple[float, int, str]:
    """One STOW-RS request per file, one after another on one keep-alive connection
    (a pipeline posting its results as they come); (seconds, HTTP status, problem).

    The status is 200 when every request was answered 200 or 202 without failed
    parts; otherwise the first bad answer's status and body are returned.
    """
    url = urlsplit(server.dicomweb_root + "/studies")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=STOW_TIMEOUT)
    t0 = time.monotonic()
    try:
        for path in paths:
            boundary = uuid.uuid4().hex
            head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
            conn.request("POST", url.path, body=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json"})
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            if stow_failures(resp.status, text):
                return time.monotonic() - t0, resp.status, f"{path.name}: {text[:500]}"
    finally:
        conn.close()
    return time.monotonic() - t0, 200, ""


def stored_instances(server: Server, text: str) -> list[tuple[str, str, str]]:
    """(study, series, instance) UIDs the server reports for what it stored.

    An archive that de-identifies on ingest gives new UIDs, so frame requests
    must use what the STOW response's RetrieveURLs say, not the file's UIDs.
    """
    out = []
    for item in stow_json(text).get("00081199", {}).get("Value", []):
        url = item.get("00081190", {}).get("Value", [""])[0]
        parts = url.split("/")
        if "instances" in parts:
            i = parts.index("instances")
            out.append((parts[i - 3], parts[i - 1], parts[i + 1]))
    return out


def storescu(server: Server, source: Path, extra: list[str]) -> tuple[float, int, str]:
    """Send every file under source in one association; (seconds, exit code, output tail)."""
    # The DIMSE listener may come up after the HTTP service; do not time its start-up.
    if not procs.wait_tcp(server.dimse_port, 60):
        return 0.0, -1, f"nothing listens on DIMSE port {server.dimse_port} after 60 s"
    cmd = ["/usr/bin/storescu", "+sd", "-R", *extra, "-aet", "BENCH", "-aec", server.aet,
           "-to", "60", "-ta", "60", "-td", "600", "127.0.0.1", str(server.dimse_port),
           str(source)]
    # Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1 is set: then each
    # small instance waits for a delayed ACK and storescu alone caps at ~11 instances/s
    # (measured against DCMTK's own storescp --ignore), whatever the server does.
    env = {**os.environ, "TCP_NODELAY": "1"}
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=STORESCU_TIMEOUT, env=env)
    out = (done.stdout + done.stderr).strip()
    return time.monotonic() - t0, done.returncode, out[-800:]


def measure(server: Server, label: str, files: list[Path], send) -> IngestResult:
    """Run send() against the running server, sampling its memory meanwhile."""
    load = os.getloadavg()[0]
    with procs.MemorySampler(server.pid) as mem:
        seconds, code, detail = send()
    ok, why = judge(label, code, detail)
    if ok and label == "stow-slide":
        why = stow_warnings(code, detail)
    res = IngestResult(label, server.name, sum(p.stat().st_size for p in files), len(files),
                       seconds, mem.peak_mb, mem.start_kb / 1024, ok, why,
                       mem.cpu_s, load, detail if label == "stow-slide" else "",
                       mem.start_pss_kb / 1024, mem.peak_pss_kb / 1024)
    print(f"    {label}: {res.seconds:.1f} s, {res.mb_per_s:.1f} MB/s, "
          f"{res.instances_per_s:.1f} inst/s, peak RSS {res.peak_rss_mb:.0f} MB, "
          f"server CPU {res.cpu_s:.1f} s"
          + ("" if res.ok else f"  FAILED: {res.detail}")
          + (f"  ({res.detail})" if res.ok and res.detail else ""), flush=True)
    return res


def measure_fresh(server: Server, label: str, files: list[Path], send) -> IngestResult:
    """measure() on a newly started, empty server, wiped afterwards."""
    server.start()
    try:
        return measure(server, label, files, send)
    finally:
        server.wipe()


def judge(label: str, code: int, detail: str) -> tuple[bool, str]:
    if label == "stow-small":
        return code == 200, (f"HTTP {code}: {detail}" if code != 200 else "")
    if label.startswith("stow"):
        why = stow_failures(code, detail)
        return not why, why
    # storescu exits 0 even when some C-STORE got a failure status; look at its output.
    bad = code != 0 or "E: " in detail or "Failed" in detail or "Error" in detail
    return not bad, (f"storescu exit {code}: {detail}" if bad else "")


def run_ingest(slide: list[Path], small: list[Path], servers: list[str],
               work: Path) -> list[IngestResult]:
    """All ingest measurements for each named server kind, each on a fresh server."""
    results = []
    for name in servers:
        for label, files, send in ingest_plan(slide, small):
            print(f"  {name}: {label} ({len(files)} files) ...", flush=True)
            server = make_server(name, work / f"{name}-{label}")
            results.append(measure_fresh(server, label, files, lambda s=server, f=send: f(s)))
    return results


def ingest_plan(slide: list[Path], small: list[Path]) -> list[tuple]:
    """(label, files, send(server)) for each ingest measured."""
    slide_dir = slide[0].parent
    plan = [
        ("stow-slide", slide, lambda s: stow(s, slide)),
        ("cstore-slide", slide, lambda s: storescu(s, slide_dir, ["-xy"])),
    ]
    if small:
        plan.append(("cstore-small", small, lambda s: storescu(s, small[0].parent, [])))
        plan.append(("stow-small", small, lambda s: stow_each(s, small)))
    return plan


def make_server(name: str, workdir: Path) -> Server:
    return {"slidearchive": SlideArchive, "Orthanc": Orthanc}[name](workdir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide_dir", type=Path)
    p.add_argument("--small", type=int, default=1000, help="small instances to C-STORE")
    p.add_argument("--servers", default="slidearchive,Orthanc")
    a = p.parse_args()
    procs.exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir="/tmp"))
    try:
        slide = sorted(a.slide_dir.glob("*.dcm"))
        small = dataset.make_small_instances(work / "small", a.small) if a.small else []
        for r in run_ingest(slide, small, a.servers.split(","), work):
            print(f"{r.server:12} {r.label:13} {r.mb_per_s:8.1f} MB/s {r.instances_per_s:8.1f} inst/s "
                  f"peak RSS {r.peak_rss_mb:6.0f} MB  {'ok' if r.ok else 'FAILED ' + r.detail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
