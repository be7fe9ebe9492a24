"""What the audit trail costs on the frame fast path: the same wrk load with [audit] on and off.

Runs slidearchive (authentication off, so only the audit differs) with the audit trail
disabled and enabled, alternating, each round a fresh server with the slide STOWed, and
loads its largest level with random single frames (frames.py's wrk script). Prints the
median of the rounds per setting and the ratio on/off for frames/s, p99 and server CPU
per frame (CPU moves least with other load on a shared machine).

    python bench/audit_frames.py SLIDE_DIR [--rounds 3] [--seconds 10]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import dataset
import frames
import procs

SETTINGS = {"audit off": "[auth]\nenabled = false\n[audit]\nenabled = false\n",
            "audit on": "[auth]\nenabled = false\n[audit]\nenabled = true\n"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide_dir", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10)
    a = p.parse_args()
    procs.exit_on_sigterm()
    slide = sorted(a.slide_dir.glob("*.dcm"))
    big = max((dataset.describe(s) for s in slide), key=lambda i: i.frames)
    results: dict[str, list[frames.FrameResult]] = {name: [] for name in SETTINGS}
    work = Path(tempfile.mkdtemp(prefix="bench-audit-", dir="/tmp"))
    try:
        for n in range(a.rounds):
            for name, config in SETTINGS.items():
                os.environ["BENCH_SLIDEARCHIVE_CONFIG"] = config
                server = frames.make_server("slidearchive", work / f"{n}-{name.replace(' ', '-')}")
                try:
                    served = frames.load(server, slide, {"large level": big}, work)
                    r = frames.bench_level(server, served["large level"], "large level", a.seconds, 1_000_000, work)
                finally:
                    server.wipe()
                print(f"  round {n + 1} {name}: {r.per_s:.0f} frames/s, p99 {r.p99_ms:.1f} ms, "
                      f"CPU {r.cpu_ms_per_frame or 0:.3f} ms/frame, {r.errors} errors", flush=True)
                results[name].append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: (statistics.median(r.per_s for r in rs), statistics.median(r.p99_ms for r in rs),
                     statistics.median(r.cpu_ms_per_frame or 0 for r in rs)) for name, rs in results.items()}
    print(f"\n| {big.frames}-frame level, {a.rounds} rounds x {a.seconds} s | frames/s | p99 ms | CPU ms/frame |")
    print("|---|---|---|---|")
    for name, (rate, p99, cpu) in median.items():
        print(f"| {name} | {rate:.0f} | {p99:.1f} | {cpu:.3f} |")
    (r0, p0, c0), (r1, p1, c1) = median["audit off"], median["audit on"]
    print(f"| on / off | {r1 / r0:.2f}x | {p1 / p0:.2f}x | {c1 / c0:.2f}x |")


if __name__ == "__main__":
    main()
