"""Scale-out benchmark: one run, side by side, 1 and 2 nodes of each setup.

    python bench/scaleout.py [--quick] [--seconds 10] [--small 300] [--setups sqlite,pg-s3,orthanc-pg]

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
peak RSS of each node's process tree. The machine has 2 cores: two nodes on it share those
cores, so the 2-node rows show what the sharing costs or gains here, not what two machines give.
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
from servers import ORTHANC_DICOMWEB_PLUGIN, Orthanc, SlideArchive

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
ORTHANC_PG_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
RESULTS = HERE / "scaleout_results.md"


class ArchiveNode(SlideArchive):
    """A slidearchive node with its own data directory and the setup's shared configuration."""

    def __init__(self, workdir: Path, config: str, name: str) -> None:
        super().__init__(workdir)
        self.config_text = config
        self.name = name

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
    problems: list[str] = field(default_factory=list)


@dataclass
class Engines:
    """PostgreSQL and s3proxy, started once for the run."""

    work: Path
    pg: object | None = None
    s3: object | None = None

    def postgres(self):
        if self.pg is None:
            import pg_cluster

            self.pg = pg_cluster.PgCluster().init().start()
        return self.pg

    def database(self) -> tuple[str, dict]:
        cluster = self.postgres()
        url = cluster.create_database()
        return url, {"port": cluster.port, "database": url.rsplit("/", 1)[1], "user": "slidearchive"}

    def s3proxy(self):
        if self.s3 is None:
            import s3_server

            self.s3 = s3_server.S3Proxy(self.work / "s3").start()
        return self.s3

    def stop(self) -> None:
        if self.s3 is not None:
            self.s3.cleanup()
        if self.pg is not None:
            self.pg.destroy()


def make_nodes(setup: str, count: int, engines: Engines, work: Path) -> list:
    root = work / f"{setup}-{count}"
    if setup == "sqlite":
        return [ArchiveNode(root / "node1", "", "slidearchive sqlite+disk")]
    if setup == "pg-s3":
        url, _ = engines.database()
        s3 = engines.s3proxy()
        bucket = s3.create_bucket(f"bench-{count}")
        shared = f'[catalog]\nurl = "{url}"\n[storage]\nurl = "s3://{bucket}/archive"\n'
        return [ArchiveNode(root / f"node{i + 1}", shared, "slidearchive postgresql+s3proxy") for i in range(count)]
    if setup == "orthanc-pg":
        _, pg = engines.database()
        return [OrthancPg(root / f"node{i + 1}", root / "storage", pg, "Orthanc postgresql index")
                for i in range(count)]
    raise ValueError(setup)


def environment_for(setup: str, engines: Engines) -> dict[str, str]:
    return engines.s3proxy().env() if setup == "pg-s3" else {}


def frames_at_once(nodes: list, level, seconds: int, max_requests: int, tmp: Path) -> tuple[float, float, list[str]]:
    """wrk on every node at once, the 8 connections split between them: (frames/s summed, worst p99, problems)."""
    problems = []
    for node in nodes:
        _, problem = frames.check_frame(node, level, random.randint(1, level.frames))
        if problem:
            problems.append(f"{node.name}: {problem}")
    if problems:
        return 0.0, 0.0, problems
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
    nodes = make_nodes(setup, count, engines, work)
    env = environment_for(setup, engines)
    for node in nodes:
        node.environment = (lambda base=node.environment: {**base(), **env})
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
    except Exception as e:  # noqa: BLE001 - one setup failing must not hide the others
        result.problems.append(f"{type(e).__name__}: {e}")
    finally:
        for node in nodes:
            node.stop()
    return result


def table(results: list[Result]) -> str:
    def fmt(v, digits=1):
        return "n/a" if v is None else f"{v:,.{digits}f}"

    lines = ["| setup | nodes | frames/s (8 conn) | frame p99 ms | STOW MB/s (whole slide, node 1) | "
             "small instances/s | peak RSS per node MB |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {SETUP_NAMES[r.setup]} | {r.nodes} | {fmt(r.frames_per_s)} | {fmt(r.frames_p99_ms)} | "
                     f"{fmt(r.stow_mb_s)} | {fmt(r.small_per_s)} | {', '.join(map(str, r.rss_mb)) or 'n/a'} |")
    return "\n".join(lines)


SETUP_NAMES = {"sqlite": "slidearchive, SQLite + disk", "pg-s3": "slidearchive, PostgreSQL + S3 (s3proxy)",
               "orthanc-pg": "Orthanc 1.10, PostgreSQL index + disk"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 16384 x 12288 slide instead of 65536 x 49152")
    p.add_argument("--seconds", type=int, default=10, help="wrk run time per measurement")
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--small", type=int, default=300, help="small instances per measurement")
    p.add_argument("--setups", default="sqlite,pg-s3,orthanc-pg")
    a = p.parse_args()
    procs.exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="slidearchive-scaleout-"))
    engines = Engines(work)
    results: list[Result] = []
    try:
        width, height = (16384, 12288) if a.quick else (65536, 49152)
        slide = dataset.make_slide(work / "slide", width, height)
        instances = [dataset.describe(s) for s in slide]
        data = {"slide": slide, "slide_bytes": sum(i.size for i in instances),
                "level": max((i for i in instances if i.path.name.startswith("level")), key=lambda i: i.frames)}
        for setup in a.setups.split(","):
            for count in ((1,) if setup == "sqlite" else (1, 2)):
                print(f"{setup}, {count} node(s) ...", file=sys.stderr, flush=True)
                results.append(bench_setup(setup, count, data, engines, a, work))
    finally:
        engines.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = table(results)
    problems = [f"- {SETUP_NAMES[r.setup]}, {r.nodes} node(s): {p}" for r in results for p in r.problems]
    command = "python bench/scaleout.py " + " ".join(sys.argv[1:])
    report = (f"{text}\n\n`{command.strip()}`, slide {width} x {height} "
              f"({data['slide_bytes'] / 1e6:.0f} MB, largest level {data['level'].frames} frames), "
              f"{a.small} small instances, load average {os.getloadavg()[0]:.1f} at the end.\n"
              + ("\nProblems:\n" + "\n".join(problems) + "\n" if problems else ""))
    print(report)
    RESULTS.write_text(report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
