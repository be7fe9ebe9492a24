"""Study QIDO-RS against catalogs of generated rows, the three setups of scaleout.py side by side.

For each size (instances in the catalog) every setup's catalog gets the same patients,
studies, series and instances: slidearchive's SQLite file and PostgreSQL database through
bench/catalog_bench.py (what ingest leaves: SQLite in one transaction, PostgreSQL by COPY),
Orthanc's PostgreSQL index through bench/orthanc_catalog.py (what Orthanc leaves). Then one
node of each setup is started on its catalog and the study searches of catalog_bench are
sent over HTTP, interleaved between the setups so that all see the same machine load, each
on a kept-alive connection, timed until the whole answer is read. The answers' lengths are
compared: a fast wrong answer does not pass.
"""
from __future__ import annotations

import http.client
import json
import math
import random
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import catalog_bench
import orthanc_catalog

REQUEST_TIMEOUT_S = 60  # a slower search is reported as such, not waited for
WARM_UP = 2  # searches per shape and setup not timed
MIN_TIMED = 5
SMALL_INSTANCE = Path("/work/shared/data/sm_image.dcm")


@dataclass
class QidoResult:
    """One size: per query shape and setup, p50/p95 in ms and how many searches were timed."""

    instances: int
    fill_s: dict[str, float | None] = field(default_factory=dict)  # None: not filled at this size
    reused: dict[str, str] = field(default_factory=dict)  # setup -> date of the earlier run that filled it
    shapes: dict[str, dict[str, dict]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fill_text(self, names: dict[str, str]) -> str:
        parts = []
        for setup, seconds in self.fill_s.items():
            if seconds is None:
                parts.append(f"{names[setup]} not filled (--qido-skip-10m)")
            else:
                parts.append(f"{names[setup]} in {seconds:,.0f} s"
                             + (f" (kept from the run of {self.reused[setup]})" if setup in self.reused else ""))
        return f"Catalogs of {self.instances:,} generated instances: " + "; ".join(parts) + "."

    def worst_p95(self, setup: str) -> str:
        """The slowest shape's p95 in bold, '> N s' if a search timed out, 'n/a' if none was measured."""
        measured = [s[setup] for s in self.shapes.values() if setup in s]
        if any("slow" in m for m in measured):
            return f"**> {REQUEST_TIMEOUT_S} s**"
        return f"**{max(m['p95_ms'] for m in measured):,.1f}**" if measured else "n/a"


def fill(setup: str, instances: int, node) -> float:
    """Fill the catalog of a stopped node of setup with instances generated rows; seconds taken."""
    if setup == "sqlite":
        data = node.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        return catalog_bench.fill_sqlite(data / "catalog.sqlite", instances)
    if setup == "pg-s3":
        return catalog_bench.fill_postgresql(node.catalog_url, instances)
    node.start()  # Orthanc creates its schema in the empty database, then the rows go in behind its back
    node.stop()
    started = time.perf_counter()
    orthanc_catalog.fill(node.catalog_url, instances, orthanc_catalog.write_file(node.storage, SMALL_INSTANCE))
    return time.perf_counter() - started


class Kept:
    """--catalogs DIR: which generated catalogs DIR already holds (filled.json: name -> seconds, date)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "filled.json"
        root.mkdir(parents=True, exist_ok=True)

    def filled(self, name: str) -> dict | None:
        return json.loads(self.path.read_text()).get(name) if self.path.exists() else None

    def record(self, name: str, seconds: float) -> None:
        done = json.loads(self.path.read_text()) if self.path.exists() else {}
        done[name] = {"seconds": round(seconds), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        self.path.write_text(json.dumps(done, indent=1))


class Client:
    """One kept-alive HTTP connection to a node's QIDO-RS."""

    def __init__(self, node) -> None:
        self.node = node
        self.conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=REQUEST_TIMEOUT_S)

    def search(self, params: list[tuple[str, str]]) -> tuple[float, int, int]:
        """(seconds, HTTP status, studies in the answer); once more on a new connection if the server
        closed the kept-alive one."""
        path = f"{self.node.web_path}/studies?" + urllib.parse.urlencode(params, safe="*^")
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                self.conn.request("GET", path, headers={"Accept": "application/dicom+json"})
                response = self.conn.getresponse()
                body = response.read()
                break
            except ConnectionError:
                self.reconnect()
                if attempt == 2:
                    raise
        seconds = time.perf_counter() - started
        if response.status != 200:
            return seconds, response.status, 0
        return seconds, 200, len(json.loads(body)) if body.strip() else 0

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.node.http_port, timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.conn.close()


def measure(nodes: dict[str, object], instances: int, repeats: int, budget: float) -> QidoResult:
    """catalog_bench's study searches on every running node, interleaved. Each setup gets about budget
    seconds per query shape (at least MIN_TIMED searches, unless one takes longer than TIMEOUT_S)."""
    result = QidoResult(instances)
    clients = {setup: Client(node) for setup, node in nodes.items()}
    try:
        for shape, make in catalog_bench.queries(instances, random.Random(7)).items():
            times: dict[str, list[float]] = {setup: [] for setup in clients}
            spent = dict.fromkeys(clients, 0.0)
            active = list(clients)
            slow: dict[str, str] = {}
            for n in range(WARM_UP + repeats):
                if not active:
                    break
                params = make()
                found = {}
                for setup in list(active):
                    try:
                        seconds, status, count = clients[setup].search(params)
                    except TimeoutError:
                        slow[setup] = f"> {REQUEST_TIMEOUT_S} s"
                        clients[setup].reconnect()
                        active.remove(setup)
                        continue
                    except ConnectionError as e:
                        result.problems.append(f"{setup}: {shape}: {type(e).__name__}: {e} for {params}")
                        active.remove(setup)
                        continue
                    if status != 200:
                        result.problems.append(f"{setup}: {shape}: HTTP {status} for {params}")
                        active.remove(setup)
                        continue
                    found[setup] = count
                    spent[setup] += seconds
                    if n >= WARM_UP:  # the first few warm the caches
                        times[setup].append(seconds * 1000)
                    if len(times[setup]) >= MIN_TIMED and spent[setup] > budget:
                        active.remove(setup)
                if len(set(found.values())) > 1:
                    result.problems.append(f"{shape}: different answers for {params}: {found}")
            result.shapes[shape] = {setup: _summary(v) for setup, v in times.items() if v}
            for setup, why in slow.items():
                result.shapes[shape][setup] = {"n": len(times[setup]), "slow": why}
    finally:
        for client in clients.values():
            client.close()
    return result


def _summary(ms: list[float]) -> dict:
    """p50 and p95 by nearest rank (with under 20 searches, p95 is the slowest)."""
    ordered = sorted(ms)
    return {"n": len(ms), "p50_ms": statistics.median(ordered),
            "p95_ms": ordered[math.ceil(0.95 * len(ordered)) - 1]}


def table(results: list[QidoResult], setups: list[str], names: dict[str, str]) -> str:
    """Markdown: one row per size and query shape, p95 (p50) per setup."""
    head = "| instances | study QIDO-RS | " + " | ".join(f"{names[s]} p95 (p50) ms" for s in setups) + " |"
    lines = [head, "|---|---|" + "---|" * len(setups)]
    for r in results:
        for shape, per in r.shapes.items():
            cells = [_cell(per.get(s)) for s in setups]
            lines.append(f"| {r.instances:,} | {shape} | " + " | ".join(cells) + " |")
        worst = [r.worst_p95(s) for s in setups]
        lines.append(f"| {r.instances:,} | **worst p95** | " + " | ".join(worst) + " |")
    return "\n".join(lines)


def _cell(measured: dict | None) -> str:
    if measured is None:
        return "n/a"
    if "slow" in measured:
        return f"{measured['slow']} (a search)"
    few = f"; n={measured['n']}" if measured["n"] < 20 else ""
    return f"{measured['p95_ms']:,.1f} ({measured['p50_ms']:,.1f}{few})"
