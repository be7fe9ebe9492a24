"""Frame-serving benchmark: random single-frame WADO-RS requests under load.

For each server and each level, wrk keeps 8 connections busy for a bounded time
(and a bounded number of responses), each request asking for a frame chosen at
random, which is what a viewer panning a slide does to a cold tile cache.
nginx serves the same frames as plain files: the ceiling of this machine.

Before loading a server, one frame is fetched and compared byte for byte with
the frame in the file, so a fast wrong answer cannot pass as a result.

    python bench/frames.py SLIDE_DIR [--seconds 12] [--servers slidearchive,Orthanc,nginx]
(the slide is STOWed into each archive first; see run.py for the whole suite).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import dataset
import procs
from dataset import Instance
from servers import Nginx, Orthanc, Server, SlideArchive

HERE = Path(__file__).resolve().parent
LUA = HERE / "frames.lua"
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CONNECTIONS = 8
WRK_THREADS = 2
REQUEST_TIMEOUT_S = 60
FIRST_FRAME_RESTARTS = 3
SLOW_RUN_CAP_S = 90  # longest run granted to a server that needs seconds per frame


@dataclass
class FrameResult:
    """One wrk run: a server, a level, what it achieved."""

    server: str
    level: str
    frames: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    detail: str = ""
    cpu_ms_per_frame: float | None = None  # server CPU per response: robust to a busy machine
    problem: str = ""  # set when the probe frame was wrong or missing: no load was run

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def accept_for(server: Server) -> str | None:
    return None if isinstance(server, Nginx) else FRAME_ACCEPT


def get_frame(server: Server, inst: Instance, frame: int) -> tuple[float, int, str, bytes]:
    """One frame request: (seconds, status, content type, body)."""
    url = server.base + server.frame_path(inst.study, inst.series, inst.sop, frame)
    req = urllib.request.Request(url)
    if accept := accept_for(server):
        req.add_header("Accept", accept)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S * 5) as r:
            body = r.read()
            return time.monotonic() - t0, r.status, r.headers.get("Content-Type", ""), body
    except urllib.error.HTTPError as e:
        return time.monotonic() - t0, e.code, e.headers.get("Content-Type", ""), e.read()


def check_frame(server: Server, inst: Instance, frame: int) -> tuple[float, str]:
    """Fetch one frame and compare it with the file; (seconds, problem or '')."""
    seconds, status, ctype, body = get_frame(server, inst, frame)
    url = server.frame_path(inst.study, inst.series, inst.sop, frame)
    if status != 200:
        return seconds, f"GET {url} -> HTTP {status} {ctype}: {body[:300]!r}"
    expected = dataset.read_frame(inst.path, frame)
    if accept_for(server) and not ctype.startswith("multipart/related"):
        return seconds, f"GET {url} -> 200 but Content-Type {ctype!r}, not multipart/related"
    if expected not in body:
        return seconds, (f"GET {url} -> 200 {ctype} but the body ({len(body)} bytes) does not "
                         f"contain the frame's {len(expected)} bytes")
    return seconds, ""


def resolve_stored(server: Server, levels: dict[str, Instance],
                   stored: list[tuple[str, str, str]]) -> dict[str, Instance]:
    """The levels under the UIDs the server stored them with.

    A server that kept the file's UIDs needs nothing more; for one that gave new
    UIDs (de-identification), each level is found among the stored instances by
    its NumberOfFrames, through QIDO-RS, which is unique within one slide's levels.
    """
    sops = {sop for _, _, sop in stored}
    if all(inst.sop in sops for inst in levels.values()):
        return dict(levels)
    frames_of: dict[str, tuple[str, str, int]] = {}
    for study, series in sorted({(st, se) for st, se, _ in stored}):
        url = (f"{server.dicomweb_root}/studies/{study}/series/{series}/instances"
               "?includefield=00280008")
        req = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                items = json.loads(r.read() or b"[]")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"QIDO GET {url} -> HTTP {e.code}: {e.read()[:300]!r}") from None
        for item in items:
            sop = item.get("00080018", {}).get("Value", [""])[0]
            n = item.get("00280008", {}).get("Value", [1])[0]
            frames_of[sop] = (study, series, int(n))
    out = {}
    for level, inst in levels.items():
        match = [(st, se, sop) for sop, (st, se, n) in frames_of.items()
                 if n == inst.frames and sop in sops]
        if len(match) != 1:
            raise RuntimeError(f"cannot tell which stored instance is the {level}: "
                               f"{len(match)} stored instances have {inst.frames} frames "
                               f"(QIDO saw {len(frames_of)} instances)")
        st, se, sop = match[0]
        out[level] = replace(inst, study=st, series=se, sop=sop)
    return out


def write_paths(server: Server, inst: Instance, out: Path) -> Path:
    """frames.lua's input: the frame URL path without the frame number, and the frame count."""
    first = server.frame_path(inst.study, inst.series, inst.sop, 1)
    prefix = first.removesuffix("1")
    if not prefix.endswith("/") or server.frame_path(inst.study, inst.series, inst.sop, inst.frames) \
            != f"{prefix}{inst.frames}":
        raise RuntimeError(f"{server.name}: frame URLs do not end with the frame number: {first}")
    out.write_text(f"{prefix}\n{inst.frames}\n")
    return out


def run_wrk(server: Server, inst: Instance, seconds: int, max_requests: int,
            paths_file: Path, connections: int = CONNECTIONS, pattern: str = "random") -> dict:
    """wrk with random frame URLs (``pattern``: see frames.lua); the RESULT line of frames.lua as a dict."""
    threads = min(WRK_THREADS, connections)
    per_thread = max(1, max_requests // threads) if max_requests else 0
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", f"{REQUEST_TIMEOUT_S}s", "-s", str(LUA), server.base, "--",
           str(paths_file), accept_for(server) or "-", str(per_thread), "-", pattern]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def run_length(seconds: int, probe: float) -> int:
    """The run time for a server whose single frame took probe seconds.

    When 8 requests in parallel would each take a good part of the run, a fixed
    short run would end with none completed and say nothing; such a server gets
    time for a few rounds of requests, up to SLOW_RUN_CAP_S.
    """
    if probe * CONNECTIONS * 4 <= seconds:
        return seconds
    return int(min(SLOW_RUN_CAP_S, max(seconds, probe * CONNECTIONS * 3)))


def bench_level(server: Server, inst: Instance, level: str, seconds: int,
                max_requests: int, tmp: Path, pattern: str = "random") -> FrameResult:
    """Check one frame, then load the server with random frames of inst (``pattern``: frames.lua)."""
    probe, problem = check_frame(server, inst, random.randint(1, inst.frames))
    if problem:
        return FrameResult(server.name, level, inst.frames, 0, 0.0, 0.0, 0.0, 1, problem,
                           problem=problem)
    paths = write_paths(server, inst, tmp / f"paths-{server.name}-{inst.sop}.txt")
    seconds = run_length(seconds, probe)
    load = os.getloadavg()[0]
    with procs.MemorySampler(server.pid) as mem:
        r = run_wrk(server, inst, seconds, max_requests, paths, pattern=pattern)
    errors = (r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
              + r["not_200"])
    detail = (f"{r['requests']} responses in {r['duration_us'] / 1e6:.1f} s; "
              f"one probe request took {probe * 1000:.0f} ms; server peak RSS {mem.peak_mb:.0f} MB; "
              f"load average {load:.1f} before")
    if errors:
        detail += (f"; errors: {r['not_200']} non-200, {r['timeouts']} timeouts, "
                   f"{r['connect_errors'] + r['read_errors'] + r['write_errors']} socket")
    cpu = mem.cpu_s * 1000 / r["requests"] if r["requests"] else None
    return FrameResult(server.name, level, inst.frames, r["requests"] - r["not_200"],
                       r["duration_us"] / 1e6, r["p50_us"] / 1000, r["p99_us"] / 1000,
                       errors, detail, cpu)


def first_frame_ms(server: Server, inst: Instance, restarts: int = FIRST_FRAME_RESTARTS
                   ) -> tuple[float, str]:
    """Median over a few restarts of the time of one random frame of inst, asked
    right after the server starts; (ms, problem or '').

    The server counts as started when its HTTP service answers; the time is that
    of the first frame request alone. The OS page cache stays warm: this measures
    what the server process itself has to (re)load before it can serve a frame.
    """
    times = []
    for _ in range(restarts):
        server.restart()
        seconds, problem = check_frame(server, inst, random.randint(1, inst.frames))
        if problem:
            return seconds * 1000, problem
        times.append(seconds * 1000)
    times.sort()
    return times[len(times) // 2], ""


def run_frames(server: Server, levels: dict[str, Instance], seconds: int,
               max_requests: int, large: str, tmp: Path) -> tuple[list[FrameResult], tuple[float, str]]:
    """Every level on one running server, then the first frame after a restart."""
    server.settle()
    results = []
    for level, inst in levels.items():
        print(f"  {server.name}: frames of {level} ({inst.frames} frames) for up to {seconds} s ...",
              flush=True)
        res = bench_level(server, inst, level, seconds, max_requests, tmp)
        print(f"    {res.per_s:.1f} req/s, p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, "
              f"server CPU {res.cpu_ms_per_frame or 0:.2f} ms/frame"
              + (f"  [{res.detail}]" if res.detail else ""), flush=True)
        results.append(res)
    first = first_frame_ms(server, levels[large])
    print(f"  {server.name}: first frame after restart {first[0]:.1f} ms {first[1]}", flush=True)
    return results, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide_dir", type=Path)
    p.add_argument("--seconds", type=int, default=12)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--servers", default="slidearchive,Orthanc,nginx")
    a = p.parse_args()
    procs.exit_on_sigterm()
    slide = sorted(a.slide_dir.glob("*.dcm"))
    insts = [dataset.describe(s) for s in slide]
    big = max(insts, key=lambda i: i.frames)
    levels = {"small level": dataset.level_with_frames(insts, 192), "large level": big}
    work = Path(tempfile.mkdtemp(prefix="bench-frames-", dir="/tmp"))
    try:
        for name in a.servers.split(","):
            server = make_server(name, work)
            try:
                served = load(server, slide, levels, work)
                run_frames(server, served, a.seconds, a.max_requests, "large level", work)
            finally:
                server.wipe()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_server(name: str, work: Path) -> Server:
    if name == "nginx":
        return Nginx(work / "nginx", work / "frames")
    return {"slidearchive": SlideArchive, "Orthanc": Orthanc}[name](work / name)


def load(server: Server, slide: list[Path], levels: dict[str, Instance],
         work: Path) -> dict[str, Instance]:
    """Start server with the slide in it: frames as files for nginx, STOW for an archive."""
    import ingest  # only the stand-alone run needs to load data itself

    if isinstance(server, Nginx):
        for inst in levels.values():
            dataset.extract_frames(inst, work / "frames")
        server.start()
        return levels
    server.start()
    _, status, text = ingest.stow(server, slide)
    if why := ingest.stow_failures(status, text):
        raise RuntimeError(f"{server.name}: STOW failed: {why}")
    return resolve_stored(server, levels, ingest.stored_instances(server, text))


if __name__ == "__main__":
    main()
