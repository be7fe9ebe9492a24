"""Frames from two checkouts of slidearchive side by side: a before/after in the same minutes.

    python bench/frames_ab.py SLIDE_DIR /path/to/before [--rounds 4] [--seconds 4] [--config TOML]
        [--before-config TOML]

``--before-config`` adds lines to the "before" server's configuration only: with the same
checkout as both, it compares two settings (``--before-config $'[server]\\nthreads = 1'``).

Both servers run at once with the slide STOWed into each; wrk (as in frames.py) loads the
largest level of one, then of the other, alternating for ``--rounds`` rounds, so that the
load of the shared machine falls on both alike. Reported per round: frames/s and the
server's CPU per frame (which moves much less with the machine's load than the rate).
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
from servers import REPO, SlideArchive


class SlideArchiveAt(SlideArchive):
    """slidearchive from the checkout at ``repo``."""

    def __init__(self, workdir: Path, repo: Path, config: str) -> None:
        super().__init__(workdir)
        self.repo, self.config = repo, config

    def command(self) -> list[str]:
        os.environ["BENCH_SLIDEARCHIVE_CONFIG"] = self.config  # read by SlideArchive.command
        return super().command()

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.repo), os.environ.get("PYTHONPATH")]))
        return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide_dir", type=Path)
    p.add_argument("before", type=Path, help="the other checkout (this one is the 'after')")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--config", default="", help="TOML lines added to both servers' configuration")
    p.add_argument("--before-config", default="", help="TOML lines added to the 'before' server's only")
    a = p.parse_args()
    procs.exit_on_sigterm()
    config = "[auth]\nenabled = false\n" + a.config
    slide = sorted(a.slide_dir.glob("*.dcm"))
    big = max((dataset.describe(s) for s in slide), key=lambda i: i.frames)
    work = Path(tempfile.mkdtemp(prefix="bench-frames-ab-", dir="/tmp"))
    checkouts = {"before": a.before.resolve(), "after": REPO}
    started: dict[str, SlideArchiveAt] = {}
    try:
        levels = {}
        for name, repo in checkouts.items():
            extra = "\n" + a.before_config if name == "before" and a.before_config else ""
            started[name] = SlideArchiveAt(work / name, repo, config + extra)
            levels[name] = frames.load(started[name], slide, {"large": big}, work)["large"]
        results: dict[str, list[frames.FrameResult]] = {name: [] for name in checkouts}
        for n in range(a.rounds):
            for name in (checkouts if n % 2 == 0 else reversed(list(checkouts))):
                res = frames.bench_level(started[name], levels[name], "large", a.seconds, 1_000_000, work)
                results[name].append(res)
                print(f"  round {n + 1} {name:6s} {res.per_s:8.1f} frames/s, CPU {res.cpu_ms_per_frame or 0:.3f} ms/frame,"
                      f" p99 {res.p99_ms:.1f} ms  [{res.detail}]", flush=True)
        for name, rs in results.items():
            print(f"{name} ({checkouts[name]}): median {statistics.median(r.per_s for r in rs):.0f} frames/s, "
                  f"{statistics.median(r.cpu_ms_per_frame or 0 for r in rs):.3f} ms CPU per frame "
                  f"({len(rs)} rounds of {big.frames} frames' level)")
    finally:
        for server in started.values():
            server.wipe()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
