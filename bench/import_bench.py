"""Vendor import: ``slidearchive import`` of an SVS-structured file, beside wsidicomizer alone
and wsidicomizer followed by ``storescu`` into Orthanc, in one run on the same file.

    python bench/import_bench.py              # ~1 GB SVS-structured file (level 0 ~ 84k x 84k)
    python bench/import_bench.py --size-mb 100
    python bench/import_bench.py --keep       # keep the generated file for the next run

Measures wall time, MB/s (vendor file bytes per second) and the peak RSS of each
process tree (sampled every 20 ms). The slide is written with pre-compressed JPEG
tiles (a few hundred distinct tissue-like tiles, repeated), so making a 1 GB file
takes seconds and no whole image is ever held in memory. Everything lives under a
temporary directory removed at the end; Orthanc is started privately on free ports.
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs  # noqa: E402
from servers import REPO, Orthanc  # noqa: E402

TILE = 256
sys.path.insert(0, str(REPO / "tests"))
from vendor_files import tissue  # noqa: E402  (the test suite's tissue-like pixels)


def _tiles(count: int, seed: int = 7) -> list[bytes]:
    from PIL import Image

    big = tissue(TILE * 16, TILE * 16, seed)
    out = []
    for k in range(count):
        y, x = (k // 16) % 16 * TILE, k % 16 * TILE
        tile = np.roll(big[y:y + TILE, x:x + TILE], k, axis=1)
        buf = io.BytesIO()
        Image.fromarray(tile).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_svs(path: Path, size_mb: int) -> tuple[int, int]:
    """An SVS-structured pyramid (level 0 plus 1/4 and 1/16) of about ``size_mb`` MB."""
    import tifffile

    tiles = _tiles(256)
    mean = sum(map(len, tiles)) / len(tiles)
    across = max(16, int((size_mb * 1024 * 1024 / mean / 1.07) ** 0.5) // 16 * 16)  # levels exactly 1/4, 1/16
    width = height = across * TILE
    desc = (f"Aperio Image Library v12.0.5 \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=90"
            "|AppMag = 20|MPP = 0.5|Date = 01/02/24|Time = 10:00:00|User = bench")
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level, factor in enumerate((1, 4, 16)):
            n = across // factor
            source = itertools.islice(itertools.cycle(tiles), n * n)
            tif.write(source, shape=(n * TILE, n * TILE, 3), dtype="uint8", tile=(TILE, TILE),
                      compression="jpeg", photometric="ycbcr", subsampling=(2, 2), metadata=None,
                      description=desc if level == 0 else desc.replace("Q=90", "Q=90 reduced"))
            if level == 0:  # SVS: the second page is the thumbnail
                tif.write(tissue(512, 512, 3), compression="jpeg", photometric="rgb", metadata=None,
                          description="Aperio Image Library v12.0.5 \r\nthumbnail")
    return width, height


def measure(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, float, int]:
    """(seconds, peak RSS MB of the process tree, exit status)."""
    t0 = time.perf_counter()
    proc = procs.start_group(cmd, log, cwd=REPO, env=env)
    with procs.MemorySampler(proc.pid) as mem:
        status = proc.wait(timeout=3600)
    return time.perf_counter() - t0, mem.peak_mb, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated file in /tmp/slidearchive-bench")
    parser.add_argument("--only-slidearchive", action="store_true",
                        help="skip wsidicomizer and Orthanc (for sizes where Orthanc needs more memory than is free)")
    args = parser.parse_args()
    procs.exit_on_sigterm()
    cache = Path(tempfile.gettempdir()) / "slidearchive-bench"
    cache.mkdir(exist_ok=True)
    svs = cache / f"bench-{args.size_mb}mb.svs"
    if not svs.is_file():
        t0 = time.perf_counter()
        w, h = make_svs(svs, args.size_mb)
        print(f"made {svs.name}: {w} x {h}, {svs.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    size_mb = svs.stat().st_size / 1e6
    work = Path(tempfile.mkdtemp(prefix="import-bench-"))
    rows = []
    try:
        data = work / "archive"
        data.mkdir()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        sec, rss, rc = measure([sys.executable, "-m", "archive.cli", "import", str(svs), "--data-dir", str(data),
                                "-q", "--workers", str(args.workers)], work / "import.log", env)
        rows.append(("slidearchive import (convert + de-identify + store + index)", sec, rss, rc))
        shutil.rmtree(data)
        if args.only_slidearchive:
            return _report(rows, size_mb, args.workers)
        out = work / "dicomized"
        sec_w, rss_w, rc_w = measure(["wsidicomizer", "-i", str(svs), "-o", str(out), "-w", str(args.workers)],
                                     work / "wsidicomizer.log")
        rows.append(("wsidicomizer alone (convert to files)", sec_w, rss_w, rc_w))
        with Orthanc(work / "orthanc") as orthanc:
            cmd = ["/usr/bin/storescu", "+sd", "-R", "-xy", "-aet", "BENCH", "-aec", orthanc.aet, "127.0.0.1",
                   str(orthanc.dimse_port), str(out)]
            t0 = time.perf_counter()
            proc = procs.start_group(cmd, work / "storescu.log", env={**os.environ, "TCP_NODELAY": "1"})
            with procs.MemorySampler(orthanc.pid) as mem:
                rc_s = proc.wait(timeout=3600)
            sec_s = time.perf_counter() - t0
        rows.append(("storescu into Orthanc (after wsidicomizer)", sec_s, mem.peak_mb, rc_s))
        rows.append(("wsidicomizer + storescu into Orthanc", sec_w + sec_s, max(rss_w, mem.peak_mb),
                     rc_w or rc_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            svs.unlink(missing_ok=True)
    return _report(rows, size_mb, args.workers)


def _report(rows: list[tuple[str, float, float, int]], size_mb: float, workers: int) -> int:
    print(f"\nSVS-structured file: {size_mb:.0f} MB, workers {workers}, load {os.getloadavg()[0]:.2f}\n")
    print("| pipeline | seconds | MB/s | peak RSS MB | exit |")
    print("|---|---:|---:|---:|---:|")
    for name, sec, rss, rc in rows:
        print(f"| {name} | {sec:.1f} | {size_mb / sec:.1f} | {rss:.0f} | {rc} |")
    if len(rows) > 1:
        ours, theirs = rows[0][1], rows[-1][1]
        print(f"\nslidearchive import / (wsidicomizer + storescu into Orthanc) time ratio: {ours / theirs:.2f}")
    return 0 if all(r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
