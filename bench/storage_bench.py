"""Storage benchmark: the same slidearchive on local disk and on S3 (s3proxy on loopback), one run.

For each setup a fresh server receives the slide by STOW-RS (MB/s), then wrk asks for
frames of its largest level in each access pattern (frames/s, p50, p99, server CPU per
frame); one frame is compared with the file first. Patterns (bench/frames.lua):

- ``random``: one random frame per request (a cold tile cache: the 2x target's figure);
- ``row:8``: one frame per request, 8 neighbours of a tile row in a row (a viewer
  filling its viewport, several requests in flight);
- ``multi:8``: 8 neighbouring frames in one request (frames/n,n+1,...).

Setups:

- ``local``: the default storage directory;
- ``s3``: ``[storage] url = "s3://..."`` with the hot-frame cache off (frame_cache_mb = 0,
  hence no read-ahead): every frame is fetched from S3;
- ``s3-cache``: the defaults (64 MB cache, 128 KB read-ahead); this level (about 60 MB)
  fits that cache, so once warm this row measures the cache more than S3;
- ``s3-small-cache``: a 16 MB cache, a quarter of the level (a large level of a real
  slide is hundreds of MB): random frames mostly miss, tile rows are read ahead;
- ``s3-small-cache-no-readahead``: the same without read-ahead (what it brings).

``s3proxy alone`` is the ceiling: the same frames' byte ranges fetched straight from
s3proxy by obstore on 8 threads (no archive, no HTTP server, no wrk), in the same run.
s3proxy itself runs on the same 2 cores (a JVM serving GETs from its filesystem), so the S3
rows carry its CPU as well; its own CPU is reported per frame too. s3proxy's JIT is warmed
by GETs (not counted) before the first S3 row. Every server runs from the start; the
patterns run in the order given, each on every server in turn, so a cached setup's later
patterns start with what the earlier ones cached.

    python3 bench/storage_bench.py [--width 16384 --height 16384] [--seconds 8]
        [--setups local,s3,s3-cache,s3-small-cache,s3-small-cache-no-readahead]
        [--patterns random,row:8,multi:8] [--rounds 1]

``run_storage(...)`` returns the rows, for bench/scaleout.py or run.py to reuse.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dataset
import frames
import ingest
import procs
from servers import SlideArchive

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import s3_server  # noqa: E402

RESULTS = HERE / "storage_results.md"
SETUPS = {  # name -> (extra [storage] lines, what the row is called)
    "local": (None, "slidearchive, local disk"),
    "s3": ("frame_cache_mb = 0\n", "slidearchive, S3, no cache"),
    "s3-cache": ("", "slidearchive, S3, defaults (64 MB cache)"),
    "s3-small-cache": ("frame_cache_mb = 16\n", "slidearchive, S3, 16 MB cache"),
    "s3-small-cache-no-readahead": ("frame_cache_mb = 16\nframe_readahead_kb = 0\n",
                                    "slidearchive, S3, 16 MB cache, no read-ahead"),
}
ALONE = "s3proxy alone (obstore, 8 threads, no archive)"
WARM_ROUND_S = 3
WARM_ROUNDS_MAX = 30
WARM_GETS = 20_000


class StorageArchive(SlideArchive):
    """slidearchive with a [storage] section (and the S3 server's AWS_* variables)."""

    def __init__(self, workdir: Path, storage: str, env: dict[str, str], name: str) -> None:
        super().__init__(workdir)
        self.storage, self.extra_env, self.name = storage, env, name

    def command(self) -> list[str]:
        cmd = super().command()
        config = self.workdir / "slidearchive.toml"
        config.write_text("[auth]\nenabled = false\n" + self.storage)
        return cmd

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.extra_env}


@dataclass
class StorageRow:
    setup: str
    pattern: str
    stow_mb_per_s: float | None
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_frame: float | None
    s3proxy_cpu_ms_per_frame: float | None
    detail: str


def _setup(name: str, s3: s3_server.S3Proxy | None, work: Path) -> tuple[StorageArchive, str | None]:
    lines, label = SETUPS[name]
    if lines is None:
        return StorageArchive(work / name, "", {}, label), None
    assert s3 is not None
    bucket = s3.create_bucket()
    section = f'[storage]\nurl = "s3://{bucket}/archive"\n{lines}'
    return StorageArchive(work / name, section, s3.env(), label), bucket


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connections_to(port: int, root_pid: int) -> int:
    """Established TCP connections from ``root_pid``'s process tree to port ``port`` (its pool to s3proxy)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, grown = {root_pid}, True
    while grown:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grown = bool(more)
    sockets = set()
    for pid in tree:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        sockets.add(link[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                n += fields[3] == "01" and fields[2].endswith(f":{port:04X}") and fields[9] in sockets
    return n


def _frames_per_request(pattern: str) -> int:
    return int(pattern.split(":")[1]) if pattern.startswith("multi:") else 1


def _ranged_gets(store, key: str, ranges: list[tuple[int, int]], threads: int,
                 seconds: float) -> tuple[float, list[float]]:
    """Random ranges of ``key`` fetched by ``threads`` threads for ``seconds``: (elapsed, latencies)."""
    import obstore

    until, per_thread = time.perf_counter() + seconds, [[] for _ in range(threads)]

    def loop(out: list[float]) -> None:
        while (t0 := time.perf_counter()) < until:
            start, length = random.choice(ranges)
            obstore.get_range(store, key, start=start, length=length)
            out.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=loop, args=(out,)) for out in per_thread]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0, [x for out in per_thread for x in out]


def s3proxy_alone(s3: s3_server.S3Proxy, bucket: str, seconds: float, threads: int = 8) -> StorageRow:
    """The stored level's frame ranges fetched straight from s3proxy: what S3 alone can serve here.

    First s3proxy's JIT is warmed, in rounds of WARM_ROUND_S, until WARM_GETS GETs are done
    and a round is no more than 10% faster than the one before: its first ~15,000 GETs cost
    it 2-20x the CPU of later ones (0.1-0.2 ms each once warm), and a cold s3proxy was what an
    earlier run of this benchmark measured.
    """
    from obstore.store import S3Store

    stored = max((p for p in (s3.data / bucket).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    ranges = dataset.frame_ranges(stored)
    key = str(stored.relative_to(s3.data / bucket))
    store = S3Store(bucket, config={"endpoint": s3.endpoint, "region": "us-east-1",
                                    "access_key_id": s3.access_key, "secret_access_key": s3.secret_key},
                    client_options={"allow_http": True})
    rates: list[float] = []
    gets = 0
    while len(rates) < WARM_ROUNDS_MAX and (gets < WARM_GETS or rates[-1] > 1.1 * rates[-2]):
        elapsed, done = _ranged_gets(store, key, ranges, threads, WARM_ROUND_S)
        rates.append(len(done) / elapsed)
        gets += len(done)
    load, proxy0, client0 = os.getloadavg()[0], _cpu_s(s3.process.pid), time.process_time()
    elapsed, latencies = _ranged_gets(store, key, ranges, threads, seconds)
    n = len(latencies)
    latencies.sort()
    proxy_ms = (_cpu_s(s3.process.pid) - proxy0) * 1000 / n
    client_ms = (time.process_time() - client0) * 1000 / n
    warm = ", ".join(f"{r:.0f}" for r in rates)
    return StorageRow(ALONE, "random", None, n / elapsed, latencies[n // 2] * 1000,
                      latencies[min(n - 1, n * 99 // 100)] * 1000, client_ms, proxy_ms,
                      f"{n} GETs in {elapsed:.1f} s; client (bench process) CPU {client_ms:.2f} ms/GET; "
                      f"JIT warm-up rounds of {WARM_ROUND_S} s before: {warm} GET/s; load average {load:.1f} before")


def _bench_pattern(server: StorageArchive, s3: s3_server.S3Proxy | None, level, pattern: str,
                   seconds: int, work: Path) -> StorageRow:
    proxy_cpu = _cpu_s(s3.process.pid) if s3 else None
    pool: list[int] = []
    if s3 is not None:  # the connections the archive keeps to s3proxy, halfway through the run
        threading.Timer(seconds / 2, lambda: pool.append(_connections_to(s3.port, server.pid))).start()
    result = frames.bench_level(server, level, "large level", seconds, 1_000_000, work, pattern=pattern)
    if result.problem:
        raise RuntimeError(f"{server.name}: {result.problem}")
    k = _frames_per_request(pattern)
    proxy_ms = None
    if proxy_cpu is not None and result.requests:
        proxy_ms = (_cpu_s(s3.process.pid) - proxy_cpu) * 1000 / (result.requests * k)
    detail = result.detail + (f"; {pool[0]} connections open to s3proxy mid-run" if pool else "")
    cpu = result.cpu_ms_per_frame / k if result.cpu_ms_per_frame is not None else None
    return StorageRow(server.name, pattern, None, result.per_s * k, result.p50_ms, result.p99_ms, cpu, proxy_ms,
                      detail)


def run_storage(slide: list[Path], setups: list[str], seconds: int, work: Path,
                patterns: tuple[str, ...] = ("random",), rounds: int = 1) -> list[StorageRow]:
    """Every setup's server up at once, each STOWed the slide; then each pattern on each server in turn.

    Interleaved (pattern by pattern, setup by setup) so that the load other work puts on the
    machine drifts over all setups alike, and each ratio to local disk compares runs minutes
    apart at most. With ``rounds`` > 1 the whole loop is repeated and each row is the median run.
    """
    insts = [dataset.describe(p) for p in slide]
    big = max(insts, key=lambda i: i.frames)
    size = sum(p.stat().st_size for p in slide)
    s3 = s3_server.S3Proxy(work / "s3proxy").start() if any(s.startswith("s3") for s in setups) else None
    rows: list[StorageRow] = []
    running: list[tuple[StorageArchive, str | None]] = []
    try:
        stowed = {}
        for name in setups:
            server, bucket = _setup(name, s3, work)
            running.append((server, bucket))
            server.start()
            stow_s, status, text = ingest.stow(server, slide)
            if why := ingest.stow_failures(status, text):
                raise RuntimeError(f"{server.name}: STOW failed: {why}")
            level = frames.resolve_stored(server, {"large": big}, ingest.stored_instances(server, text))["large"]
            stowed[server.name] = (level, size / 1e6 / stow_s)
        buckets = [b for _, b in running if b is not None]
        if buckets:
            rows.append(s3proxy_alone(s3, buckets[0], seconds))
            _print(rows[-1])
        runs: dict[tuple[str, str], list[StorageRow]] = {}
        for _ in range(rounds):
            for pattern in patterns:
                for server, bucket in running:
                    level, _ = stowed[server.name]
                    row = _bench_pattern(server, s3 if bucket else None, level, pattern, seconds, work)
                    runs.setdefault((server.name, pattern), []).append(row)
                    _print(row)
        for (name, pattern), measured in runs.items():
            rows.append(_median(measured))
            if pattern == patterns[0]:
                rows[-1].stow_mb_per_s = stowed[name][1]
    finally:
        for server, _ in running:
            server.wipe()
        if s3 is not None:
            s3.cleanup()
    return rows


def _median(measured: list[StorageRow]) -> StorageRow:
    """The run with the median frames/s, its detail listing every round's figure."""
    ordered = sorted(measured, key=lambda r: r.frames_per_s)
    row = ordered[(len(ordered) - 1) // 2]
    if len(measured) > 1:
        row.detail = (f"median of {len(measured)} rounds (" + ", ".join(f"{r.frames_per_s:.0f}" for r in measured)
                      + " frames/s); this one: " + row.detail)
    return row


def _print(r: StorageRow) -> None:
    stow = f"STOW {r.stow_mb_per_s:.1f} MB/s; " if r.stow_mb_per_s else ""
    print(f"  {r.setup}, {r.pattern}: {stow}{r.frames_per_s:.0f} frames/s, p50 {r.p50_ms:.1f} ms, "
          f"p99 {r.p99_ms:.1f} ms [{r.detail}]", flush=True)


def _cpu_per_frame(r: StorageRow) -> float | None:
    """Server (or bench client) plus s3proxy CPU per frame: what one frame costs the machine."""
    if r.cpu_ms_per_frame is None:
        return None
    return r.cpu_ms_per_frame + (r.s3proxy_cpu_ms_per_frame or 0)


def table(rows: list[StorageRow], level_frames: int, size_mb: float) -> str:
    local = {r.pattern: r for r in rows if "local" in r.setup}
    lines = [f"Slide of {size_mb:.0f} MB; frames of its largest level ({level_frames} frames), wrk with 8 "
             "connections; `local / this`: local disk's frames/s in the same pattern over this row's (the "
             "target: at most 2); `CPU this / local`: server + s3proxy CPU per frame over local disk's server "
             "CPU per frame (steadier than rates on a shared machine; wrk's own CPU not counted); load "
             "average before each run in the details.", "",
             "| storage | pattern | STOW MB/s | frames/s | local / this | p50 ms | p99 ms | server CPU ms/frame "
             "| s3proxy CPU ms/frame | CPU this / local |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = local.get(r.pattern)
        ratio = f"{ref.frames_per_s / r.frames_per_s:.2f}" if ref and r is not ref and r.frames_per_s else "-"
        mine, theirs = _cpu_per_frame(r), _cpu_per_frame(ref) if ref else None
        cpu_ratio = f"{mine / theirs:.2f}" if mine and theirs and r is not ref else "-"
        stow = f"{r.stow_mb_per_s:.1f}" if r.stow_mb_per_s else "-"
        proxy = "-" if r.s3proxy_cpu_ms_per_frame is None else f"{r.s3proxy_cpu_ms_per_frame:.2f}"
        cpu = f"{r.cpu_ms_per_frame or 0:.2f}" + (" (client)" if r.setup == ALONE else "")
        lines.append(f"| {r.setup} | {r.pattern} | {stow} | {r.frames_per_s:.0f} | {ratio} | {r.p50_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {cpu} | {proxy} | {cpu_ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16384)
    p.add_argument("--height", type=int, default=16384)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--setups", default="local,s3,s3-cache,s3-small-cache,s3-small-cache-no-readahead")
    p.add_argument("--rounds", type=int, default=1, help="repeat every run; each row is the median")
    p.add_argument("--patterns", default="random,row:8,multi:8")
    a = p.parse_args()
    unknown = set(a.setups.split(",")) - set(SETUPS)
    if unknown:
        p.error(f"unknown setups {', '.join(sorted(unknown))}; known: {', '.join(SETUPS)}")
    procs.exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir="/tmp"))
    try:
        slide = dataset.make_slide(work / "slide", a.width, a.height)
        rows = run_storage(slide, a.setups.split(","), a.seconds, work, tuple(a.patterns.split(",")), a.rounds)
        big = max((dataset.describe(s) for s in slide), key=lambda i: i.frames)
        text = table(rows, big.frames, sum(s.stat().st_size for s in slide) / 1e6)
        print(text)
        RESULTS.write_text("# Storage benchmark (bench/storage_bench.py)\n\n"
                           f"`python3 bench/storage_bench.py --width {a.width} --height {a.height} "
                           f"--seconds {a.seconds} --setups {a.setups} --patterns {a.patterns} --rounds {a.rounds}`\n\n" + text + "\n"
                           + "\n".join(f"- {r.setup}, {r.pattern}: {r.detail}" for r in rows) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
