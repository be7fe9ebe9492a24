"""Resident memory of ``slidearchive serve``: idle per process (RSS and PSS), and the peak
during one STOW-RS of the quick slide, on fresh servers.

    python bench/memory.py                       # 3 fresh servers, the quick 55 MB slide
    python bench/memory.py --runs 1 --config $'[server]\nworkers = 1'
    python bench/memory.py --repo /path/to/other/checkout   # its code, for a before/after

RSS summed over the process tree is what ``bench/run.py`` reports and what issue 9's
targets are stated in; PSS (``/proc/<pid>/smaps_rollup``) counts a page shared by several
processes (after a fork) once, split between them, so its sum is closer to what the machine
actually gives the server. Idle is measured a few seconds after the server first answers,
when the background process has started its index worker and nothing is in flight.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import dataset
import ingest
import procs
import servers
from servers import SlideArchive

QUICK = (16384, 12288)
SETTLE = 5.0  # seconds after the first answer before the idle sample


def roles(server: SlideArchive) -> dict[int, str]:
    """pid -> supervisor / background / HTTP worker (the supervisor's run file names the background)."""
    try:
        background = json.loads((server.workdir / "data" / "run" / "supervisor.json").read_text())["background"]["pid"]
    except (OSError, ValueError, KeyError):
        background = None
    return {server.pid: "supervisor", background: "background (DIMSE, index worker)"}


def idle(server: SlideArchive) -> list[tuple[int, str, int, int, int]]:
    """(pid, role, RSS, PSS, anonymous kB) of every process in the server's tree."""
    role = roles(server)
    return [(p, role.get(p, "HTTP worker"), procs.rss_kb(p), procs.rollup_kb(p), procs.rollup_kb(p, "Anonymous"))
            for p in procs.process_tree(server.pid)]


def summed(rows: list[tuple[int, str, int, int, int]]) -> tuple[float, float]:
    """RSS and PSS summed over the tree, MB."""
    return sum(r[2] for r in rows) / 1024, sum(r[3] for r in rows) / 1024


def report(v: tuple[float, ...]) -> str:
    return (f"idle RSS {v[0]:.0f} / PSS {v[1]:.0f} MB; STOW peak RSS {v[2]:.0f} / PSS {v[3]:.0f} MB; "
            f"after the STOW RSS {v[4]:.0f} / PSS {v[5]:.0f} MB")


def one_run(work: Path, slide: list[Path], config: str) -> tuple[float, ...]:
    """A fresh server, MB summed over its processes: idle RSS and PSS, their peaks during the STOW, both after it."""
    os.environ["BENCH_SLIDEARCHIVE_CONFIG"] = "[auth]\nenabled = false\n" + config
    server = SlideArchive(work)
    server.start()
    try:
        time.sleep(SETTLE)
        rows = idle(server)
        for pid, what, rss, pss, anon in rows:
            print(f"    {pid:>7}  RSS {rss / 1024:6.1f} MB  PSS {pss / 1024:6.1f} MB  anonymous {anon / 1024:6.1f} MB  {what}")
        rss_mb, pss_mb = summed(rows)
        res = ingest.measure(server, "stow-slide", slide, lambda: ingest.stow(server, slide))
        if not res.ok:
            raise RuntimeError(f"STOW failed: {res.detail}")
        time.sleep(SETTLE)  # the index worker has indexed the new series
        after_rss, after_pss = summed(idle(server))
        values = (rss_mb, pss_mb, res.peak_rss_mb, res.peak_pss_mb, after_rss, after_pss)
        print(f"  {report(values)} ({len(rows)} processes; load {os.getloadavg()[0]:.1f})", flush=True)
        return values
    finally:
        server.wipe()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="fresh servers (the median is reported)")
    p.add_argument("--config", default="", help="TOML lines added to the server's configuration")
    p.add_argument("--slide", type=Path, help="a slide directory made by make_wsi.py (default: build the quick one)")
    p.add_argument("--repo", type=Path, help="run the server from this checkout (default: this one)")
    args = p.parse_args()
    if args.repo:
        servers.REPO = args.repo.resolve()
    procs.exit_on_sigterm()
    config = args.config
    print(f"slidearchive from {servers.REPO}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        slide = sorted(args.slide.glob("*.dcm")) if args.slide else dataset.make_slide(work / "slide", *QUICK)
        runs = [one_run(work / f"server-{n}", slide, config) for n in range(args.runs)]
    median = tuple(statistics.median(r[i] for r in runs) for i in range(6))
    print(f"median of {len(runs)}: {report(median)} (issue 9's targets, RSS: idle < 150, peak < 300)")


if __name__ == "__main__":
    main()
