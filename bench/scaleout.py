"""Scale-out benchmark: one run, side by side, 1 and 2 nodes of each setup, and study QIDO at scale.

    python bench/scaleout.py [--quick] [--seconds 10] [--small 300] [--setups sqlite,pg-s3,orthanc-pg]
                             [--qido 1000000,10000000] [--qido-budget 15] [--no-slide]

Setups (every engine is started by the benchmark on loopback, in a temporary directory):

- ``sqlite``: slidearchive on its embedded defaults (SQLite catalog, storage directory); one
  node only, since a second node cannot share them.
- ``pg-s3``: slidearchive nodes sharing a PostgreSQL catalog (Debian's server, tests/pg_cluster.py)
  and an S3 bucket on s3proxy (tests/s3_server.py), each node with its own data directory.
- ``orthanc-pg``: Debian's Orthanc with the DICOMweb plugin and its PostgreSQL index plugin
  (orthanc-postgresql, ``Lock: false`` so that several Orthancs share the database), storage
  in one directory the nodes share; otherwise Orthanc's default tuning.

Measured per setup: STOW-RS of a whole slide (MB/s), random single frames of the largest level
under wrk (frames/s and p99; 8 connections to one node, or 4 to each of two nodes at once),
small-instance STOW-RS (one instance per request; one sender per node, all at once), and the
peak RSS and PSS of each node's process tree. The machine has 2 cores: two nodes on it share those
cores, so the 2-node rows show what the sharing costs or gains here, not what two machines give.

Then, for each ``--qido`` size, every setup's catalog is filled with the same generated rows
(bench/catalog_bench.py for slidearchive's two, bench/orthanc_catalog.py for Orthanc's index)
and one node of each answers catalog_bench's study searches over HTTP, interleaved
(bench/scaleout_qido.py): p95 and p50 per query shape. The report (also written to
bench/scaleout_results.md) ends with the command, the date, the run time and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dataset
import frames
import ingest
import procs
import scaleout_qido
from servers import ORTHANC_DICOMWEB_PLUGIN, Orthanc, SlideArchive

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
ORTHANC_PG_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
RESULTS = HERE / "scaleout_results.md"


class ArchiveNode(SlideArchive):
    """A slidearchive node with its own data directory and the setup's shared configuration."""

    def __init__(self, workdir: Path, config: str, name: str, catalog_url: str | None = None) -> None:
        super().__init__(workdir)
        self.config_text = config
        self.name = name
        self.catalog_url = catalog_url  # None: the SQLite file in the data directory

    def ready_url(self) -> str:  # not /studies: with millions of generated studies that lists a page of them
        return self.base + "/health/ready"

    def command(self) -> list[str]:
        config = self.workdir / "slidearchive.toml"
        config.write_text("[auth]\nenabled = false\n" + self.config_text)
        return [sys.executable, "-m", "archive.cli", "serve", "--config", str(config),
                "--data-dir", str(self.workdir / "data"), "--http-port", str(self.http_port),
                "--dimse-port", str(self.dimse_port), "--host", "127.0.0.1"]


class OrthancPg(Orthanc):
    """Orthanc with its PostgreSQL index; nodes share the database and the storage directory."""

    def __init__(self, workdir: Path, storage: Path, pg: dict, name: str) -> None:
        super().__init__(workdir)
        self.storage, self.pg, self.name = storage, pg, name
        self.catalog_url = f"postgresql://{pg['user']}@127.0.0.1:{pg['port']}/{pg['database']}"

    def ready_url(self) -> str:  # not /studies: Orthanc reads a file of every study it lists
        return self.base + "/system"

    def command(self) -> list[str]:
        config = {
            "Name": self.name, "StorageDirectory": str(self.storage), "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port, "DicomPort": self.dimse_port, "DicomAet": self.aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "SaveJobs": False,
            "StorageCompression": False, "Plugins": [ORTHANC_DICOMWEB_PLUGIN, ORTHANC_PG_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": "127.0.0.1",
                           "Port": self.pg["port"], "Database": self.pg["database"],
                           "Username": self.pg["user"], "Password": "", "Lock": False,
                           "EnableSsl": False},
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return ["Orthanc", str(path)]


@dataclass
class Result:
    setup: str
    nodes: int
    stow_mb_s: float | None = None
    frames_per_s: float | None = None
    frames_p99_ms: float | None = None
    small_per_s: float | None = None
    rss_mb: list[float] = field(default_factory=list)
    pss_mb: list[float] = field(default_factory=list)  # proportional: pages a forked tree shares count once
    problems: list[str] = field(default_factory=list)


@dataclass
class Engines:
    """PostgreSQL and s3proxy, started once for the run."""

    work: Path
    keep: Path | None = None  # --catalogs: the PostgreSQL cluster lives there and outlives the run
    pg: object | None = None
    s3: object | None = None

    def postgres(self):
        if self.pg is None:
            import pg_cluster

            self.pg = pg_cluster.PgCluster(self.keep / "pg" if self.keep else None).init().start()
        return self.pg

    def database(self, name: str | None = None) -> tuple[str, dict]:
        """A new database, or the one called name if it exists: (URL, what Orthanc's configuration needs)."""
        import psycopg

        cluster = self.postgres()
        with psycopg.connect(cluster.url()) as db:
            exists = name and db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        url = cluster.url(name) if exists else cluster.create_database(name)
        return url, {"port": cluster.port, "database": url.rsplit("/", 1)[1], "user": "slidearchive"}

    def drop_database(self, url: str) -> None:
        """Give a filled catalog's disk back (10 M instances take gigabytes)."""
        import psycopg

        with psycopg.connect(self.postgres().url(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}"')

    def s3proxy(self):
        if self.s3 is None:
            import s3_server

            self.s3 = s3_server.S3Proxy(self.work / "s3").start()
        return self.s3

    def stop(self) -> None:
        if self.s3 is not None:
            self.s3.cleanup()
        if self.pg is not None:
            self.pg.destroy() if self.keep is None else self.pg.stop()


def make_nodes(setup: str, count: int, engines: Engines, root: Path, database: str | None = None) -> list:
    """count nodes of setup under root sharing a catalog (database: by that name, else a new one) and a new bucket."""
    if setup == "sqlite":
        return [ArchiveNode(root / "node1", "", SETUP_NAMES[setup])]
    if setup == "pg-s3":
        url, _ = engines.database(database)
        bucket = engines.s3proxy().create_bucket()
        shared = f'[catalog]\nurl = "{url}"\n[storage]\nurl = "s3://{bucket}/archive"\n'
        return [ArchiveNode(root / f"node{i + 1}", shared, SETUP_NAMES[setup], url) for i in range(count)]
    if setup == "orthanc-pg":
        _, pg = engines.database(database)
        return [OrthancPg(root / f"node{i + 1}", root / "storage", pg, SETUP_NAMES[setup]) for i in range(count)]
    raise ValueError(setup)


def with_environment(nodes: list, setup: str, engines: Engines) -> list:
    """The nodes, each started with the S3 endpoint and credentials its setup needs."""
    env = engines.s3proxy().env() if setup == "pg-s3" else {}
    for node in nodes:
        node.environment = (lambda base=node.environment: {**base(), **env})
    return nodes


def frames_at_once(nodes: list, level, seconds: int, max_requests: int, tmp: Path) -> tuple[float, float, list[str]]:
    """wrk on every node at once, the 8 connections split between them: (frames/s summed, worst p99, problems)."""
    problems, probes = [], []
    for node in nodes:
        probe, problem = frames.check_frame(node, level, random.randint(1, level.frames))
        probes.append(probe)
        if problem:
            problems.append(f"{node.name}: {problem}")
    if problems:
        return 0.0, 0.0, problems
    seconds = frames.run_length(seconds, max(probes))  # a server taking seconds per frame gets a few rounds
    connections = max(1, frames.CONNECTIONS // len(nodes))
    outcomes: list[dict] = [None] * len(nodes)

    def load(i: int) -> None:
        paths = frames.write_paths(nodes[i], level, tmp / f"paths-{i}.txt")
        outcomes[i] = frames.run_wrk(nodes[i], level, seconds, max_requests // len(nodes), paths,
                                     connections=connections)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum((r["requests"] - r["not_200"]) / (r["duration_us"] / 1e6) for r in outcomes)
    errors = sum(r["not_200"] + r["timeouts"] + r["connect_errors"] + r["read_errors"] for r in outcomes)
    if errors:
        problems.append(f"{errors} failed frame requests")
    if not sum(r["requests"] for r in outcomes):
        problems.append(f"no frame answered within {seconds} s")
    return rate, max(r["p99_us"] for r in outcomes) / 1000, problems


def small_at_once(nodes: list, small: list[Path]) -> tuple[float, list[str]]:
    """The small instances split between the nodes, one STOW-RS per instance, one sender per node."""
    shares = [small[i::len(nodes)] for i in range(len(nodes))]
    outcomes: list[tuple] = [None] * len(nodes)

    def send(i: int) -> None:
        outcomes[i] = ingest.stow_each(nodes[i], shares[i])

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    problems = [f"{n.name}: HTTP {code} {why}" for n, (_, code, why) in zip(nodes, outcomes) if code != 200]
    return len(small) / elapsed, problems


def bench_setup(setup: str, count: int, data: dict, engines: Engines, a, work: Path) -> Result:
    result = Result(setup, count)
    nodes = with_environment(make_nodes(setup, count, engines, work / f"{setup}-{count}"), setup, engines)
    try:
        for node in nodes:
            node.start()
        samplers = [procs.MemorySampler(node.pid) for node in nodes]
        for s in samplers:
            s.__enter__()
        try:
            seconds, status, text = ingest.stow(nodes[0], data["slide"])
            if why := ingest.stow_failures(status, text):
                result.problems.append(f"STOW: {why}")
                return result
            result.stow_mb_s = data["slide_bytes"] / 1e6 / seconds
            level = frames.resolve_stored(nodes[0], {"large": data["level"]},
                                          ingest.stored_instances(nodes[0], text))["large"]
            rate, p99, problems = frames_at_once(nodes, level, a.seconds, a.max_requests, work)
            result.frames_per_s, result.frames_p99_ms = (rate, p99) if not problems else (None, None)
            result.problems += problems
            small = dataset.make_small_instances(work / f"small-{setup}-{count}", a.small)
            rate, problems = small_at_once(nodes, small)
            result.small_per_s = None if problems else rate
            result.problems += problems
        finally:
            for s in samplers:
                s.__exit__(None, None, None)
        result.rss_mb = [round(s.peak_mb) for s in samplers]
        result.pss_mb = [round(s.peak_pss_kb / 1024) for s in samplers]
    except Exception as e:  # noqa: BLE001 - one setup failing must not hide the others
        result.problems.append(f"{type(e).__name__}: {e}")
    finally:
        for node in nodes:
            node.stop()
        if nodes[0].catalog_url:
            engines.drop_database(nodes[0].catalog_url)
    return result


def table(results: list[Result]) -> str:
    def fmt(v, digits=1):
        return "n/a" if v is None else f"{v:,.{digits}f}"

    lines = ["| setup | nodes | frames/s (8 conn) | frame p99 ms | STOW MB/s (whole slide, node 1) | "
             "small instances/s | peak RSS per node MB | peak PSS per node MB |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {SETUP_NAMES[r.setup]} | {r.nodes} | {fmt(r.frames_per_s)} | {fmt(r.frames_p99_ms)} | "
                     f"{fmt(r.stow_mb_s)} | {fmt(r.small_per_s)} | {', '.join(map(str, r.rss_mb)) or 'n/a'} | "
                     f"{', '.join(map(str, r.pss_mb)) or 'n/a'} |")
    return "\n".join(lines)


SETUP_NAMES = {"sqlite": "slidearchive, SQLite + disk", "pg-s3": "slidearchive, PostgreSQL + S3 (s3proxy)",
               "orthanc-pg": "Orthanc 1.10, PostgreSQL index + disk"}


def qido_size(instances: int, setups: list[str], engines: Engines, work: Path, a) -> scaleout_qido.QidoResult:
    """A catalog of each setup holding instances generated rows (filled now, or kept from an earlier run
    with --catalogs), a node started on each, then the searches."""
    nodes: dict[str, object] = {}
    result = scaleout_qido.QidoResult(instances)
    kept = scaleout_qido.Kept(engines.keep) if engines.keep else None
    try:
        for setup in setups:
            if setup in a.qido_skip_10m.split(",") and instances > 1_000_000:
                result.fill_s[setup] = None
                continue
            name = f"qido_{setup.replace('-', '_')}_{instances}"
            root = (engines.keep if kept else work) / name
            earlier = kept.filled(name) if kept else None
            if kept and not earlier:  # a kept catalog whose fill was cut short is filled again from nothing
                shutil.rmtree(root, ignore_errors=True)
                if setup != "sqlite":
                    engines.drop_database(engines.postgres().url(name))
            node = with_environment(make_nodes(setup, 1, engines, root, name), setup, engines)[0]
            nodes[setup] = node
            if earlier:
                result.fill_s[setup], result.reused[setup] = earlier["seconds"], earlier["date"]
                continue
            print(f"QIDO at {instances:,} instances: filling {setup} ...", file=sys.stderr, flush=True)
            result.fill_s[setup] = scaleout_qido.fill(setup, instances, node)
            if kept:
                kept.record(name, result.fill_s[setup])
        for node in nodes.values():
            node.start()
        print(f"QIDO at {instances:,} instances: searching ...", file=sys.stderr, flush=True)
        measured = scaleout_qido.measure(nodes, instances, a.qido_repeats, a.qido_budget)
        result.shapes, result.problems = measured.shapes, measured.problems
    except Exception as e:  # noqa: BLE001 - one size failing must not hide the rest of the table
        result.problems.append(f"{type(e).__name__}: {e}")
    finally:
        for node in nodes.values():
            node.stop()
            if not kept:
                if node.catalog_url:
                    engines.drop_database(node.catalog_url)
                shutil.rmtree(node.workdir.parent, ignore_errors=True)
    return result


class LoadSampler(threading.Thread):
    """The 1-minute load average every 15 s: the machine is shared, the report says how busy it was."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = [os.getloadavg()[0]]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(15):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        ordered = sorted(self.samples)
        return (f"load average (1 min, 2 cores) min {ordered[0]:.1f}, median {ordered[len(ordered) // 2]:.1f}, "
                f"max {ordered[-1]:.1f} over the run")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 16384 x 12288 slide instead of 65536 x 49152")
    p.add_argument("--seconds", type=int, default=10, help="wrk run time per measurement")
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--small", type=int, default=300, help="small instances per measurement")
    p.add_argument("--setups", default="sqlite,pg-s3,orthanc-pg")
    p.add_argument("--no-slide", action="store_true", help="only the QIDO part (no frames, STOW, small ingest)")
    p.add_argument("--qido", default="1000000,10000000", help="catalog sizes (instances) for study QIDO; '' skips")
    p.add_argument("--qido-skip-10m", default="orthanc-pg",
                   help="setups whose catalog is not filled above 1 M instances (Orthanc's takes ~50 min for 10 M here)")
    p.add_argument("--catalogs", type=Path, help="keep the generated catalogs in this directory and reuse them "
                   "in later runs (the fill is the slow part; delete the directory when done)")
    p.add_argument("--qido-repeats", type=int, default=100, help="timed searches per query shape and setup")
    p.add_argument("--qido-budget", type=float, default=15, help="seconds per query shape and setup (at least 5 searches unless one exceeds 60 s)")
    a = p.parse_args()
    procs.exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="slidearchive-scaleout-"))
    engines = Engines(work, a.catalogs)
    setups = a.setups.split(",")
    results: list[Result] = []
    qido: list[scaleout_qido.QidoResult] = []
    load = LoadSampler()
    load.start()
    started = time.monotonic()
    try:
        width, height = (16384, 12288) if a.quick else (65536, 49152)
        if not a.no_slide:
            slide = dataset.make_slide(work / "slide", width, height)
            instances = [dataset.describe(s) for s in slide]
            data = {"slide": slide, "slide_bytes": sum(i.size for i in instances),
                    "level": max((i for i in instances if i.path.name.startswith("level")), key=lambda i: i.frames)}
            for setup in setups:
                for count in ((1,) if setup == "sqlite" else (1, 2)):
                    print(f"{setup}, {count} node(s) ...", file=sys.stderr, flush=True)
                    results.append(bench_setup(setup, count, data, engines, a, work))
        for size in filter(None, a.qido.split(",")):
            qido.append(qido_size(int(size), setups, engines, work, a))
    finally:
        engines.stop()
        shutil.rmtree(work, ignore_errors=True)
        load.done.set()
    minutes = (time.monotonic() - started) / 60
    problems = [f"- {SETUP_NAMES[r.setup]}, {r.nodes} node(s): {p}" for r in results for p in r.problems]
    problems += [f"- QIDO at {q.instances:,} instances: {p}" for q in qido for p in q.problems]
    command = "python bench/scaleout.py " + " ".join(sys.argv[1:])
    slide_text = "" if a.no_slide else (f"slide {width} x {height} ({data['slide_bytes'] / 1e6:.0f} MB, largest "
                                        f"level {data['level'].frames} frames), {a.small} small instances; ")
    report = ((f"{table(results)}\n\n" if results else "")
              + (f"{scaleout_qido.table(qido, setups, SETUP_NAMES)}\n\n" if qido else "")
              + f"`{command.strip()}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {minutes:.0f} minutes: "
              f"{slide_text}{load.summary()}.\n"
              + "".join(f"\n{q.fill_text(SETUP_NAMES)}" for q in qido)
              + ("\n\nProblems:\n" + "\n".join(problems) + "\n" if problems else "\n"))
    print(report)
    RESULTS.write_text(report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
