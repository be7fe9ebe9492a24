"""Run the whole benchmark suite: slidearchive, Orthanc and nginx side by side.

    python bench/run.py            # 65536 x 49152 slide (870 MB), ~15 min
    python bench/run.py --quick    # 16384 x 12288 slide (55 MB), ~2-3 min

Builds its data in a temporary directory under /tmp, starts every server
itself on loopback ports with private storage, prints one Markdown table and
writes it to bench/results.md. Every server is stopped (its whole process
group) on the way out, whatever happened.

Per archive the order is: fresh server -> STOW the slide (ingest MB/s, memory)
-> frame load on the level of ~192 frames and on the largest level -> restart
-> first frame (3 restarts); then more fresh servers: the STOW again (the median
of the runs is reported), the C-STORE of the slide (the same), and one C-STORE of
the small instances.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import dataset
import frames
import ingest
import procs
from dataset import Instance
from frames import FrameResult
from ingest import IngestResult
from servers import REPO, Nginx, Orthanc, Server, SlideArchive

HERE = Path(__file__).resolve().parent
ARCHIVES = {"slidearchive": SlideArchive, "Orthanc": Orthanc}
COLUMNS = ["slidearchive", "Orthanc", "nginx"]


@dataclass
class Profile:
    """Sizes and durations of one suite run."""

    width: int
    height: int
    small_instances: int
    seconds: int
    max_requests: int
    repeats: int  # fresh-server runs of each slide ingest; the median is reported


FULL = Profile(65536, 49152, 1000, 12, 1_000_000, 3)
QUICK = Profile(16384, 12288, 200, 5, 1_000_000, 1)


@dataclass
class Outcome:
    """Everything measured for one server (missing entries were not measured)."""

    frames: dict[str, FrameResult] = field(default_factory=dict)
    first_frame: tuple[float, str] | None = None
    ingest: dict[str, IngestResult] = field(default_factory=dict)
    ingest_runs: dict[str, list[IngestResult]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class Data:
    slide: list[Path]
    levels: dict[str, Instance]
    small: list[Path]
    frames_root: Path


def build_data(work: Path, prof: Profile) -> Data:
    """Slide, the two levels to load, small instances, frames as files for nginx."""
    print(f"building a {prof.width} x {prof.height} slide in {work} ...", flush=True)
    slide = dataset.make_slide(work / "slide", prof.width, prof.height)
    insts = [dataset.describe(p) for p in slide]
    small_level = dataset.level_with_frames(insts, 192)
    large_level = max(insts, key=lambda i: i.frames)
    levels = {level_name(small_level): small_level, level_name(large_level): large_level}
    for inst in levels.values():
        dataset.extract_frames(inst, work / "frames")
    small = dataset.make_small_instances(work / "small", prof.small_instances)
    return Data(slide, levels, small, work / "frames")


def level_name(inst: Instance) -> str:
    return f"{inst.frames:,}-frame level ({inst.size / 1e6:.0f} MB)"


def bench_archive(name: str, data: Data, prof: Profile, work: Path) -> Outcome:
    """STOW, frames, first frame, then more slide ingests (STOW again, C-STORE) and the
    small C-STORE, each ingest on a fresh server."""
    out = Outcome()
    cls = ARCHIVES[name]
    server: Server = cls(work / f"{name}-stow")
    try:
        print(f"{name}: STOW-RS of the slide, then frame load", flush=True)
        server.start()
        stow = ingest.measure(server, "stow-slide", data.slide,
                              lambda: ingest.stow(server, data.slide))
        out.ingest["stow-slide"] = stow
        if not stow.ok:
            out.failures.append(f"STOW-RS of the slide: {stow.detail}")
        else:
            stored = ingest.stored_instances(server, stow.response)
            levels = frames.resolve_stored(server, data.levels, stored)
            load_frames(server, levels, prof, work, out)
    except Exception as e:  # report and go on with the other measurements
        out.failures.append(f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        server.wipe()
    plan = ingest.ingest_plan(data.slide, data.small)
    for label, files, send in plan:
        runs = prof.repeats - (1 if label == "stow-slide" else 0)  # STOW ran once above
        if label in ("cstore-small", "stow-small"):
            runs = 1  # long, and per-instance overhead varies little between runs
        extra = []
        for n in range(runs):
            print(f"{name}: {label} ({len(files)} files), fresh server", flush=True)
            try:
                fresh = cls(work / f"{name}-{label}-{n}")
                extra.append(ingest.measure_fresh(fresh, label, files, lambda s=fresh, f=send: f(s)))
            except Exception as e:
                out.failures.append(f"{label}: {type(e).__name__}: {e}")
                traceback.print_exc()
        runs_done = ([out.ingest[label]] if label in out.ingest else []) + extra
        if runs_done:
            out.ingest[label] = median_run(runs_done)
            out.ingest_runs[label] = runs_done
            bad = [r for r in runs_done if not r.ok]
            if bad and label != "stow-slide":  # the first STOW's failure is already reported
                out.failures.append(f"{label}: {bad[0].detail}")
    return out


def median_run(runs: list[IngestResult]) -> IngestResult:
    """The run with the median time (a failed run counts as the slowest).

    The machine is shared; the median of a few fresh-server runs is steadier
    than one run, and every run's rate is listed under the table.
    """
    ranked = sorted(runs, key=lambda r: (not r.ok, r.seconds))
    return ranked[(len(ranked) - 1) // 2]


def load_frames(server: Server, levels: dict[str, Instance], prof: Profile, work: Path,
                out: Outcome) -> None:
    """Frame load on each level of a running server, then the first frame after restart."""
    large = list(levels)[-1]
    results, first = frames.run_frames(server, levels, prof.seconds, prof.max_requests,
                                       large, work)
    for res in results:
        out.frames[res.level] = res
        if res.problem:
            out.failures.append(f"frames of {res.level}: {res.detail}")
    out.first_frame = first
    if first[1]:
        out.failures.append(f"first frame after restart: {first[1]}")


def bench_nginx(data: Data, prof: Profile, work: Path) -> Outcome:
    out = Outcome()
    server = Nginx(work / "nginx", data.frames_root)
    try:
        print("nginx: frame load on static files", flush=True)
        server.start()
        load_frames(server, data.levels, prof, work, out)
    except Exception as e:
        out.failures.append(f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        server.wipe()
    return out


# --- the table ------------------------------------------------------------

def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    x = a / b
    if x >= 10:
        return f"{x:,.0f}x"
    if x >= 0.01:
        return f"{x:.2f}x"
    return f"1/{1 / x:,.0f}"


def rows(outcomes: dict[str, Outcome], data: Data, prof: Profile) -> list[list[str]]:
    """One row per metric: label, a value per column, ratios to Orthanc (and nginx)."""
    table = []

    def add(label: str, values: dict[str, float | None], digits: int = 1,
            vs_nginx: bool = False) -> None:
        sa = values.get("slidearchive")
        r = ratio(sa, values.get("Orthanc"))
        if vs_nginx:
            r += f" ({ratio(sa, values.get('nginx'))} nginx)"
        table.append([label] + [fmt(values.get(c), digits) for c in COLUMNS] + [r])

    def frame_metric(level: str, attr: str) -> dict[str, float | None]:
        vals = {}
        for col, o in outcomes.items():
            res = o.frames.get(level)
            vals[col] = getattr(res, attr) if res and not res.problem else None
        return vals

    for level in data.levels:
        add(f"frames/s, {level}, 8 conn (higher is better)", frame_metric(level, "per_s"),
            vs_nginx=True)
        add(f"p50 latency ms, {level}", frame_metric(level, "p50_ms"), 2, vs_nginx=True)
        add(f"p99 latency ms, {level}", frame_metric(level, "p99_ms"), 2, vs_nginx=True)
        add(f"server CPU ms per frame, {level}", frame_metric(level, "cpu_ms_per_frame"), 3,
            vs_nginx=True)
    large = list(data.levels)[-1]
    add(f"first frame after restart ms, {large}",
        {c: (o.first_frame[0] if o.first_frame and not o.first_frame[1] else None)
         for c, o in outcomes.items()}, 1, vs_nginx=True)

    def ingest_metric(label: str, attr: str) -> dict[str, float | None]:
        vals = {}
        for col, o in outcomes.items():
            res = o.ingest.get(label)
            vals[col] = getattr(res, attr) if res and res.ok else None
        return vals

    size = sum(p.stat().st_size for p in data.slide) / 1e6
    n = len(data.slide)
    add(f"STOW-RS ingest MB/s, whole slide ({n} instances, {size:.0f} MB, one request)",
        ingest_metric("stow-slide", "mb_per_s"))
    add("server CPU s per GB, STOW-RS", ingest_metric("stow-slide", "cpu_s_per_gb"))
    add("server RSS MB when idle, just started (lower is better)",
        ingest_metric("stow-slide", "start_rss_mb"), 0)
    add("peak server RSS MB during STOW-RS (lower is better)",
        ingest_metric("stow-slide", "peak_rss_mb"), 0)
    add("server PSS MB when idle, shared pages counted once (lower is better)",
        ingest_metric("stow-slide", "start_pss_mb"), 0)
    add("peak server PSS MB during STOW-RS (lower is better)",
        ingest_metric("stow-slide", "peak_pss_mb"), 0)
    add("C-STORE ingest MB/s, whole slide (storescu +sd -R -xy, one association)",
        ingest_metric("cstore-slide", "mb_per_s"))
    add("server CPU s per GB, C-STORE of the slide", ingest_metric("cstore-slide", "cpu_s_per_gb"))
    add("peak server RSS MB during C-STORE of the slide (lower is better)",
        ingest_metric("cstore-slide", "peak_rss_mb"), 0)
    add(f"C-STORE instances/s, {len(data.small)} small instances (storescu +sd -R)",
        ingest_metric("cstore-small", "instances_per_s"))
    add("server CPU ms per small instance, C-STORE",
        ingest_metric("cstore-small", "cpu_ms_per_instance"), 2)
    add("peak server RSS MB during C-STORE of small instances (lower is better)",
        ingest_metric("cstore-small", "peak_rss_mb"), 0)
    add(f"STOW-RS instances/s, {len(data.small)} small instances (one request each)",
        ingest_metric("stow-small", "instances_per_s"))
    add("server CPU ms per small instance, STOW-RS",
        ingest_metric("stow-small", "cpu_ms_per_instance"), 2)
    return table


def markdown(table: list[list[str]]) -> str:
    head = ["metric"] + COLUMNS + ["ratio slidearchive/Orthanc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    return "\n".join(lines)


def notes(outcomes: dict[str, Outcome]) -> str:
    """Per-run details (responses achieved, errors, probes) and every failure, verbatim."""
    lines = []
    for col, o in outcomes.items():
        for res in o.frames.values():
            lines.append(f"- {col}, {res.level}: {res.detail}")
        for label, runs in o.ingest_runs.items():
            res = o.ingest[label]
            rates = ", ".join(f"{r.mb_per_s:.1f} MB/s" if r.ok else "failed" for r in runs)
            lines.append(f"- {col}, {label}: {res.instances} instances, {res.nbytes / 1e6:.0f} MB "
                         f"in {res.seconds:.1f} s"
                         + (f" (median of {len(runs)} fresh-server runs: {rates})" if len(runs) > 1 else "")
                         + "; "
                         f"RSS {res.start_rss_mb:.0f} MB at start, {res.peak_rss_mb:.0f} MB peak; "
                         f"load average {res.load:.1f} before"
                         + (f"; {res.detail}" if res.ok and res.detail else ""))
        for f in o.failures:
            lines.append(f"- **{col} FAILED** {f}")
    return "\n".join(lines)


def first_line(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def head_commit() -> str:
    """The checked-out commit; servers are started many times during a run, so a
    commit landing mid-run would change the code under test (the report says so)."""
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no",
                        "--", "archive", "dicomweb", "deid", "indexer", "config"])
    commit = first_line(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"])
    return commit + (" (with uncommitted changes in the archive's code)" if dirty not in ("", "?") else "")


def versions(start_commit: str) -> str:
    commit = head_commit()
    if commit != start_commit:
        commit = f"{start_commit} at the start, {commit} at the end (code changed during the run)"
    pkgs = first_line(["dpkg-query", "-W", "-f", "${Package} ${Version}, ",
                       "orthanc", "orthanc-dicomweb", "nginx", "wrk", "dcmtk"])
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"- repository at {commit}\n- {pkgs.rstrip(', ')}\n"
            f"- load average at the end (1/5/15 min): {load} (the machine is shared: other "
            f"work running at the same time shows up here and in the numbers)\n"
            f"- Python {platform.python_version()}, {platform.machine()}, "
            f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores")


def report(outcomes: dict[str, Outcome], data: Data, prof: Profile, command: str,
           start_commit: str) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# Benchmark results

Measured {when} with:

    {command}

{markdown(rows(outcomes, data, prof))}

What the numbers are:
- frames/s: random single-frame WADO-RS requests that got 200, per second, from wrk with
  {frames.CONNECTIONS} connections and {frames.WRK_THREADS} threads for {prof.seconds} s (longer, up to {frames.SLOW_RUN_CAP_S} s, for a
  server that needs seconds per frame) or {prof.max_requests:,} responses, whichever comes first.
  Accept: `{frames.FRAME_ACCEPT}`.
  nginx serves the same frame bytes as plain files (no multipart): the ceiling of this
  machine. wrk shares the 2 cores with the server.
- p50/p99: wrk's latency percentiles over those requests.
- first frame after restart: the server is stopped and started again (its HTTP service
  answering counts as started), then one random frame of the largest level is fetched;
  median of {frames.FIRST_FRAME_RESTARTS} restarts. The OS page cache stays warm, so this is what
  the process itself has to load before it serves a frame.
- ingest MB/s: file bytes sent / wall time until the STOW response or storescu's exit, on
  a freshly started server with empty storage; the median of {prof.repeats} such runs for the slide
  (each run's rate is listed below), one run for the small instances.
- server CPU: user+system CPU time of the server's whole process tree during that
  measurement, divided by the responses (frames) or bytes/instances ingested. Unlike the
  rates, it hardly depends on what else the shared machine is doing; lower is better.
- peak RSS: resident memory summed over the server's process tree, sampled every 20 ms
  during that ingest. A page shared by forked processes counts once per process in that
  sum; PSS (`/proc/<pid>/smaps_rollup`, sampled every 100 ms) splits it among them, so
  its sum is what the machine gives the server.
- ratio: slidearchive / Orthanc, and in parentheses slidearchive / nginx for frames
  ("1/N" when slidearchive's value is N times smaller). For rates higher is better
  (ratio > 1 favours slidearchive); for latency, CPU and memory lower is better
  (ratio < 1 favours slidearchive).
- Every frame server is checked first: one frame is fetched and compared byte for byte
  with the frame in the file.

Details:
{notes(outcomes)}

Environment:
{versions(start_commit)}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small slide and short runs (~2-3 min)")
    p.add_argument("--servers", default="slidearchive,Orthanc,nginx",
                   help="comma-separated subset to run")
    p.add_argument("--repeats", type=int, help="fresh-server runs of each slide ingest "
                   f"(default {FULL.repeats}, or {QUICK.repeats} with --quick)")
    p.add_argument("--output", type=Path, default=HERE / "results.md")
    a = p.parse_args()
    procs.exit_on_sigterm()
    prof = QUICK if a.quick else FULL
    if a.repeats:
        prof = replace(prof, repeats=max(1, min(a.repeats, 10)))
    command = "python bench/run.py" + (" --quick" if a.quick else "") + (
        f" --repeats {a.repeats}" if a.repeats else "") + (
        f" --servers {a.servers}" if a.servers != "slidearchive,Orthanc,nginx" else "")
    start_commit = head_commit()
    work = Path(tempfile.mkdtemp(prefix="slidearchive-bench-", dir="/tmp"))
    try:
        data = build_data(work, prof)
        outcomes: dict[str, Outcome] = {}
        for name in a.servers.split(","):
            outcomes[name] = bench_nginx(data, prof, work) if name == "nginx" else \
                bench_archive(name, data, prof, work)
        text = report(outcomes, data, prof, command, start_commit)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    a.output.write_text(text)
    print(f"written to {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
