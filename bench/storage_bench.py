"""Storage benchmark: the same slidearchive on local disk and on S3 (s3proxy on loopback), one run.

For each setup a fresh server receives the slide by STOW-RS (MB/s), then wrk asks for
random single frames of its largest level (frames/s, p50, p99, server CPU per frame);
one frame is compared with the file first. Setups:

- ``local``: the default storage directory;
- ``s3``: ``[storage] url = "s3://..."`` with the hot-frame cache off (frame_cache_mb = 0):
  every frame is one ranged GET, the figure the 2x target is about;
- ``s3-cache``: the same with the default 64 MB cache (random frames of a level larger
  than the cache still miss often; a viewer re-reading tiles hits it).

s3proxy itself runs on the same 2 cores (a JVM serving GETs from its filesystem), so the S3
rows carry its CPU as well; its own CPU is reported per frame too. Before an S3 setup is
measured, 3 s of the same load warm s3proxy's JIT (not counted).

    python3 bench/storage_bench.py [--width 16384 --height 16384] [--seconds 10] [--setups local,s3,s3-cache]

``run_storage(...)`` returns the rows, for bench/scaleout.py or run.py to reuse.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
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
    stow_mb_per_s: float
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_frame: float | None
    s3proxy_cpu_ms_per_frame: float | None
    detail: str


def _setup(name: str, s3: s3_server.S3Proxy | None, work: Path) -> StorageArchive:
    if name == "local":
        return StorageArchive(work / name, "", {}, "slidearchive, local disk")
    assert s3 is not None
    cache = 0 if name == "s3" else 64
    section = f'[storage]\nurl = "s3://{s3.create_bucket()}/archive"\nframe_cache_mb = {cache}\n'
    return StorageArchive(work / name, section, s3.env(), f"slidearchive, S3 (s3proxy), frame cache {cache} MB")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_storage(slide: list[Path], setups: list[str], seconds: int, work: Path) -> list[StorageRow]:
    """Each setup on a fresh server: STOW the slide, then random frames of its largest level."""
    insts = [dataset.describe(p) for p in slide]
    big = max(insts, key=lambda i: i.frames)
    size = sum(p.stat().st_size for p in slide)
    s3 = s3_server.S3Proxy(work / "s3proxy").start() if any(s.startswith("s3") for s in setups) else None
    rows = []
    try:
        for name in setups:
            server = _setup(name, s3, work)
            server.start()
            try:
                stow_s, status, text = ingest.stow(server, slide)
                if why := ingest.stow_failures(status, text):
                    raise RuntimeError(f"{server.name}: STOW failed: {why}")
                level = frames.resolve_stored(server, {"large": big}, ingest.stored_instances(server, text))["large"]
                if name != "local":  # s3proxy's JIT: its first thousands of GETs are 2-5x slower (bench/FINDINGS.md)
                    frames.run_wrk(server, level, 3, 0, frames.write_paths(server, level, work / "warm.txt"))
                proxy_cpu = _cpu_s(s3.process.pid) if s3 and name != "local" else None
                result = frames.bench_level(server, level, "large level", seconds, 1_000_000, work)
                if result.problem:
                    raise RuntimeError(f"{server.name}: {result.problem}")
                proxy_ms = None
                if proxy_cpu is not None and result.requests:
                    proxy_ms = (_cpu_s(s3.process.pid) - proxy_cpu) * 1000 / result.requests
                rows.append(StorageRow(server.name, size / 1e6 / stow_s, result.per_s, result.p50_ms, result.p99_ms,
                                       result.cpu_ms_per_frame, proxy_ms, result.detail))
                print(f"  {server.name}: STOW {rows[-1].stow_mb_per_s:.1f} MB/s; {result.per_s:.0f} frames/s, "
                      f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms [{result.detail}]", flush=True)
            finally:
                server.wipe()
    finally:
        if s3 is not None:
            s3.cleanup()
    return rows


def table(rows: list[StorageRow], level_frames: int, size_mb: float) -> str:
    local = next((r for r in rows if "local" in r.setup), None)
    lines = [f"Slide of {size_mb:.0f} MB; random single frames of its largest level ({level_frames} frames), "
             "wrk with 8 connections; load average before each run in the detail.", "",
             "| storage | STOW MB/s | frames/s | vs local | p50 ms | p99 ms | server CPU ms/frame | s3proxy CPU ms/frame |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{local.frames_per_s / r.frames_per_s:.2f}x slower" if local and r is not local and r.frames_per_s \
            else "-"
        lines.append(f"| {r.setup} | {r.stow_mb_per_s:.1f} | {r.frames_per_s:.0f} | {ratio} | {r.p50_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {r.cpu_ms_per_frame or 0:.2f} | "
                     f"{'-' if r.s3proxy_cpu_ms_per_frame is None else f'{r.s3proxy_cpu_ms_per_frame:.2f}'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16384)
    p.add_argument("--height", type=int, default=16384)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--setups", default="local,s3,s3-cache")
    a = p.parse_args()
    procs.exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir="/tmp"))
    try:
        slide = dataset.make_slide(work / "slide", a.width, a.height)
        rows = run_storage(slide, a.setups.split(","), a.seconds, work)
        big = max((dataset.describe(s) for s in slide), key=lambda i: i.frames)
        text = table(rows, big.frames, sum(s.stat().st_size for s in slide) / 1e6)
        print(text)
        RESULTS.write_text("# Storage benchmark (bench/storage_bench.py)\n\n"
                           f"`python3 bench/storage_bench.py --width {a.width} --height {a.height} "
                           f"--seconds {a.seconds} --setups {a.setups}`\n\n" + text + "\n"
                           + "\n".join(f"- {r.setup}: {r.detail}" for r in rows) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
