"""De-identifying ingest of one large file, in-process: seconds, CPU and peak RSS per run.

No HTTP and no DIMSE: this times ``Ingest.store_file`` alone (header parse, Basic
Profile, header rewrite, raw pixel copy, hash, frame index, catalog), so a change to
that path shows up without the noise of a network transfer. Each run is a fresh child
process on a fresh data directory; its peak RSS (ru_maxrss) covers imports too, so
the idle figure (after imports, before the ingest) is printed beside it.

    python bench/ingest_deid.py FILE [--runs 3]

Small instances are bench/store_small.py's (the parts of ``store_file``, and two trees in
turns with ``--against``). Run it with PYTHONPATH pointing at the tree to measure (e.g. a
checkout of main) to compare.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(path: Path, data_dir: Path) -> dict:
    from archive.config import load_settings
    from archive.ingest import Origin
    from archive.service import Archive

    archive = Archive(load_settings(data_dir=str(data_dir)))
    import deid.core  # noqa: F401 - loaded before the idle figure, as in a running server

    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = archive.store_file(path, Origin("import"), owned=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"status": result.status, "seconds": seconds, "cpu_s": cpu, "idle_rss_mb": idle, "peak_rss_mb": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.file, args.child)))
        return 0
    size = args.file.stat().st_size
    runs = []
    for _ in range(max(1, min(args.runs, 20))):
        with tempfile.TemporaryDirectory(prefix="ingest-deid-") as tmp:
            out = subprocess.run([sys.executable, __file__, str(args.file), "--child", tmp],
                                 capture_output=True, text=True, timeout=900, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in runs:
        print(json.dumps(r))
    med = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "cpu_s", "idle_rss_mb", "peak_rss_mb")}
    print(f"{args.file.name}: {size / 1e6:.0f} MB, median of {len(runs)}: {med['seconds']:.2f} s "
          f"({size / 1e6 / med['seconds']:.0f} MB/s), CPU {med['cpu_s']:.2f} s, "
          f"RSS idle {med['idle_rss_mb']:.0f} MB / peak {med['peak_rss_mb']:.0f} MB")
    return 0 if all(r["status"] == "stored" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
