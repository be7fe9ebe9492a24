"""De-identifying ingest of one large file, in-process: seconds, CPU and peak RSS per run.

No HTTP and no DIMSE: this times ``Ingest.store_file`` alone (header parse, Basic
Profile, header rewrite, raw pixel copy, hash, frame index, catalog), so a change to
that path shows up without the noise of a network transfer. Each run is a fresh child
process on a fresh data directory; its peak RSS (ru_maxrss) covers imports too, so
the idle figure (after imports, before the ingest) is printed beside it.

    python bench/ingest_deid.py FILE [--runs 3]
    python bench/ingest_deid.py --small 400 [--runs 3]

``--small N`` stores N + 1 small SM instances of one series (bench/dataset.py) after the
servers' ``Ingest.warm_up`` instead, and prints the thread CPU of the first ``store_file``
and the median of the others, with the share of ``Ingest._deidentify`` (de-identification
and header write) in them. On a shared, loaded machine one tree's runs and another's a
minute later are not comparable; ``--against TREE`` keeps one process of each tree
(this PYTHONPATH's and TREE's) and has them take turns, ``--small`` instances a turn,
so both see the same minutes' load:

    PYTHONPATH=. python bench/ingest_deid.py --small 30 --turns 20 --against /path/to/main

Run it with PYTHONPATH pointing at the tree to measure (e.g. a checkout of main) to compare.
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


def _small_archive(count: int, work: Path):
    """(an Archive after the servers' warm-up, ``count`` small instances of one series, the
    thread CPU spent in its ``Ingest._deidentify`` so far, as a one-item list)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import dataset

    from archive.config import load_settings
    from archive.service import Archive

    paths = dataset.make_small_instances(work / "in", count)
    archive = Archive(load_settings(data_dir=str(work / "data")))
    archive.ingest.warm_up()
    deidentify, spent = archive.ingest._deidentify, [0.0]

    def timed(*args, **kwargs):
        started = time.thread_time()
        try:
            return deidentify(*args, **kwargs)
        finally:
            spent[0] += time.thread_time() - started

    archive.ingest._deidentify = timed
    return archive, paths, spent


def _small_child(count: int, work: Path) -> dict:
    """Thread CPU of storing ``count`` + 1 small instances, after the servers' warm-up."""
    from archive.ingest import Origin

    archive, paths, spent = _small_archive(count + 1, work)
    per = []
    for n, path in enumerate(paths):
        if n == 1:
            spent[0] = 0.0  # the first instance's share is in first_ms
        started = time.thread_time()
        archive.store_file(path, Origin("stow"))
        per.append(time.thread_time() - started)
    return {"first_ms": per[0] * 1e3, "median_ms": statistics.median(per[1:]) * 1e3,
            "deidentify_ms": spent[0] / count * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, nargs="?")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=0, metavar="N", help="N small instances instead of FILE")
    parser.add_argument("--against", type=Path, metavar="TREE", help="with --small: take turns with TREE's code")
    parser.add_argument("--turns", type=int, default=20, help="with --against: turns of --small instances each")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--turn-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.turn_child:
        _turns_child(args.small, args.turns, args.turn_child)
        return 0
    if args.child:
        print(json.dumps(_small_child(args.small, args.child) if args.small else _child(args.file, args.child)))
        return 0
    if args.small and args.against:
        return _turns(args.small, args.turns, args.against)
    if args.small:
        return _small(args.small, args.runs)
    if args.file is None:
        parser.error("give FILE or --small N")
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


def _turns_child(count: int, turns: int, work: Path) -> None:
    """``--against``'s child: per line read, ``count`` instances stored; prints the mean thread
    CPU of store_file and of its de-identification, in ms."""
    from archive.ingest import Origin

    archive, paths, spent = _small_archive(count * (turns + 1), work)
    print("ready", flush=True)
    for _ in sys.stdin:
        spent[0], total = 0.0, 0.0
        for path in paths[:count]:
            started = time.thread_time()
            archive.store_file(path, Origin("stow"))
            total += time.thread_time() - started
        del paths[:count]
        print(json.dumps([total / count * 1e3, spent[0] / count * 1e3]), flush=True)


def _turns(count: int, turns: int, against: Path) -> int:
    """This tree and ``against`` in turns (the first turn warms up and is not counted)."""
    import os

    trees = {"this": os.environ.get("PYTHONPATH", ""), "against": str(against)}
    results: dict[str, list[list[float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="ingest-turns-") as tmp:
        children = {name: subprocess.Popen(
            [sys.executable, __file__, "--small", str(count), "--turns", str(turns), "--turn-child", f"{tmp}/{name}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": tree})
            for name, tree in trees.items()}
        for child in children.values():
            assert child.stdout.readline().strip() == "ready"
        for turn in range(turns + 1):
            for name in (list(trees) if turn % 2 == 0 else list(reversed(trees))):
                children[name].stdin.write("go\n")
                children[name].stdin.flush()
                figures = json.loads(children[name].stdout.readline())
                if turn:
                    results[name].append(figures)
        for child in children.values():
            child.stdin.close()
            child.wait(timeout=60)
    for name, rows in results.items():
        print(f"{name} ({trees[name] or '.'}): store_file {statistics.median(r[0] for r in rows):.2f} ms CPU "
              f"(de-identification and header write {statistics.median(r[1] for r in rows):.2f}), "
              f"median of {len(rows)} turns of {count}")
    for k, what in ((0, "store_file"), (1, "de-identification and header write")):
        ratios = [a[k] / b[k] for a, b in zip(results["this"], results["against"])]
        print(f"{what}: this / against, paired by turn: median {statistics.median(ratios):.3f}")
    return 0


def _small(count: int, runs: int) -> int:
    """``--small``: a fresh child process per run; the medians over the runs."""
    results = []
    for _ in range(max(1, min(runs, 20))):
        with tempfile.TemporaryDirectory(prefix="ingest-small-") as tmp:
            out = subprocess.run([sys.executable, __file__, "--small", str(count), "--child", tmp],
                                 capture_output=True, text=True, timeout=900, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in results:
        print(json.dumps(r))
    med = {k: statistics.median(r[k] for r in results) for k in ("first_ms", "median_ms", "deidentify_ms")}
    print(f"{count} small instances, median of {len(results)} runs: store_file {med['median_ms']:.2f} ms CPU "
          f"(de-identification and header write {med['deidentify_ms']:.2f}), first after warm-up {med['first_ms']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
