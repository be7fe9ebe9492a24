"""Prometheus metrics of one node: every process of ``serve`` counts, one scrape sees them all.

``serve`` runs several HTTP worker processes beside one background process (DIMSE,
index worker), and a load balancer may send a scrape to any worker. So counters live
in per-process memory-mapped files under ``<data_dir>/run/metrics`` (prometheus_client's
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before any child
starts and emptied at each start), and ``/metrics`` sums them at scrape time. Counts of
a worker that died stay in its file, so counters never go backwards while the node runs.
State that is not a count (outbox lag, open associations, memory) is read at scrape
time from the background process's heartbeat and ``/proc``.

Labels are bounded: route templates, never paths; error class names from the one error
table (``archive.errors``); DIMSE status codes. No UID, name or query value is a label.
"""
from __future__ import annotations

import hmac
import inspect
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The exposition format a scrape gets (text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds; frames take milliseconds, a large STOW or C-MOVE minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def metrics_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / "metrics"


def prepare(data_dir: Path) -> Path:
    """Supervisor, before any child: an empty metrics directory, named in the environment children inherit.

    Must run before prometheus_client is imported in this process (it chooses its value
    store at import); the supervisor imports it only through this module's users, later.
    """
    directory = metrics_dir(data_dir)
    if directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def join_running(data_dir: Path) -> None:
    """A command run beside a serving node (``slidearchive import``) counts into that node's metrics.

    Only when the node's metrics directory exists and nothing chose one already; must run
    before this module's metrics are first used.
    """
    directory = metrics_dir(data_dir)
    if MULTIPROC_ENV not in os.environ and directory.is_dir():
        os.environ[MULTIPROC_ENV] = str(directory)


class _Metrics:
    """The metric objects, created on first use (after ``prepare`` or ``join_running`` chose the store)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.http_requests = Counter(
            "slidearchive_http_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"])
        self.http_latency = Histogram(
            "slidearchive_http_request_duration_seconds",
            "Time from request to the last byte of the response, by route template", ["route"],
            buckets=LATENCY_BUCKETS)
        self.ingest_instances = Counter(
            "slidearchive_ingest_instances",
            "Instances offered to the one ingest path, by source (stow, dimse, import, api, derived) and outcome "
            "(stored, duplicate, dropped, failed)", ["source", "outcome"])
        self.ingest_bytes = Counter(
            "slidearchive_ingest_bytes", "Bytes of instances received for ingest (as received, before "
            "de-identification), by source", ["source"])
        self.ingest_latency = Histogram(
            "slidearchive_ingest_duration_seconds", "Time to store one instance (parse, de-identify, store, "
            "catalog), by source", ["source"], buckets=LATENCY_BUCKETS)
        self.dimse_associations = Counter(
            "slidearchive_dimse_associations", "DIMSE associations, by outcome (accepted, rejected, aborted, "
            "released)", ["outcome"])
        self.dimse_operations = Counter(
            "slidearchive_dimse_operations", "DIMSE operations answered, by service (C-ECHO, C-STORE, C-FIND, "
            "C-MOVE, C-GET, N-ACTION) and final status code", ["operation", "status"])
        self.errors = Counter(
            "slidearchive_errors", "Failures reported to a client, by the error table's class (archive.errors) "
            "and the interface that reported it", ["error", "interface"])


_metrics: _Metrics | None = None
_create_lock = threading.Lock()


def metrics() -> _Metrics:
    """The metric objects of this process; made once (two threads at once would register them twice)."""
    global _metrics
    if _metrics is None:
        with _create_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


# --- what the entry points call ------------------------------------------------------

#: (route, method, status) -> that request counter and the route's latency histogram: ``labels()``
#: (argument checks, a lock) cost as much as the two updates themselves on the frame path. At most
#: ``HTTP_CHILDREN`` kept (a client picks the method), the rest looked up each time.
_http_children: dict[tuple[str, str, str], tuple] = {}
HTTP_CHILDREN = 1024


def http_request(route: str, method: str, status: str, seconds: float) -> None:
    key = (route, method, status)
    children = _http_children.get(key)
    if children is None:
        m = metrics()
        children = (m.http_requests.labels(route, method, status), m.http_latency.labels(route))
        if len(_http_children) < HTTP_CHILDREN:
            _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def ingested(source: str, outcome: str, size: int, seconds: float) -> None:
    m = metrics()
    m.ingest_instances.labels(source, outcome).inc()
    if size > 0:
        m.ingest_bytes.labels(source).inc(size)
    m.ingest_latency.labels(source).observe(seconds)


def error(e: BaseException, interface: str) -> None:
    """Count a failure once, where it is first reported (ingest, then HTTP or DIMSE see it again).

    Labelled with the error table's class name; anything else is "unexpected" (bounded labels)."""
    from archive.errors import ArchiveError

    if getattr(e, "_counted_in_metrics", False):
        return
    metrics().errors.labels(type(e).__name__ if isinstance(e, ArchiveError) else "unexpected", interface).inc()
    try:
        e._counted_in_metrics = True  # type: ignore[attr-defined]
    except AttributeError:
        pass


def association(outcome: str) -> None:
    metrics().dimse_associations.labels(outcome).inc()


def dimse_operation(operation: str, status: int) -> None:
    metrics().dimse_operations.labels(operation, f"0x{status:04X}").inc()


def counted(operation: str, handler: Callable) -> Callable:
    """A pynetdicom event handler that also counts its final status (plain or generator handlers).

    Generator handlers (C-FIND, C-MOVE, C-GET) yield pending statuses and end with the final one;
    one that ends after pending statuses means Success, and C-MOVE's ``(None, None)`` means 0xA801
    (move destination unknown), as pynetdicom answers them.
    """
    def wrapper(event):
        try:
            result = handler(event)
        except Exception:
            dimse_operation(operation, 0xC000)
            raise
        if inspect.isgenerator(result):
            return _counted_statuses(operation, result)
        dimse_operation(operation, _status_of(result[0] if isinstance(result, tuple) else result) or 0)
        return result

    return wrapper


def _counted_statuses(operation: str, results: Iterator) -> Iterator:
    final: int | None = None
    try:
        for item in results:
            if isinstance(item, tuple) and len(item) == 2:
                status = 0xA801 if item == (None, None) else _status_of(item[0])
                if status is not None and status not in PENDING:
                    final = status
            yield item
    except GeneratorExit:  # pynetdicom stopped asking: after a final status, or the association went away
        if final is None:
            final = 0xFE00  # Cancel
        raise
    finally:
        dimse_operation(operation, 0x0000 if final is None else final)


#: Pending statuses of C-FIND, C-MOVE and C-GET (PS3.4 C.4): not final.
PENDING = (0xFF00, 0xFF01)


def _status_of(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    status = getattr(value, "Status", None)
    return int(status) if isinstance(status, int) else None


# --- the scrape ------------------------------------------------------------------------

class NodeCollector:
    """Gauges read at scrape time: the background process's heartbeat and the node's memory."""

    def __init__(self, data_dir: Path, supervisor_pid: int | None):
        self.data_dir = Path(data_dir)
        self.supervisor_pid = supervisor_pid

    def collect(self) -> Iterable:
        from prometheus_client.core import GaugeMetricFamily

        from archive.lifecycle import RunFiles

        run = RunFiles(self.data_dir)
        beat = RunFiles.read(run.background) or {}
        fresh = bool(beat) and time.time() - beat.get("time", 0) < 5.0
        up = GaugeMetricFamily("slidearchive_background_up",
                               "1 when the background process (DIMSE, index worker) reported within 5 s")
        up.add_metric([], 1.0 if fresh else 0.0)
        yield up
        dimse = beat.get("dimse") or {}
        if dimse.get("enabled"):
            active = GaugeMetricFamily("slidearchive_dimse_associations_active", "DIMSE associations open now")
            active.add_metric([], float(dimse.get("associations") or 0))
            yield active
        index = beat.get("index") or {}
        if index.get("enabled") and "lag_events" in index:
            lag = GaugeMetricFamily("slidearchive_outbox_lag_events",
                                    "Catalog changes not yet applied to the search index")
            lag.add_metric([], float(index.get("lag_events") or 0))
            yield lag
            oldest = index.get("oldest_pending")
            age = GaugeMetricFamily("slidearchive_outbox_oldest_pending_seconds",
                                    "Age of the oldest catalog change not yet in the search index (0: none)")
            age.add_metric([], max(0.0, time.time() - oldest) if oldest else 0.0)
            yield age
            failing = GaugeMetricFamily("slidearchive_index_failing",
                                        "1 while the index worker's last attempt failed (it retries with back-off)")
            failing.add_metric([], 1.0 if index.get("last_error") else 0.0)
            yield failing
        rss = GaugeMetricFamily("slidearchive_node_resident_memory_bytes",
                                "Resident memory of this node's processes (supervisor, HTTP workers, background), "
                                "by role", labels=["process"])
        for role, size in node_memory(self.supervisor_pid or os.getpid(), beat.get("pid")).items():
            rss.add_metric([role], float(size))
        yield rss


def node_memory(root_pid: int, background_pid: int | None = None) -> dict[str, int]:
    """RSS in bytes of ``root_pid`` and its descendants, summed by role: supervisor, background
    (``background_pid`` and what it started) and http (the other children). Linux /proc; empty elsewhere."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    for entry in Path("/proc").iterdir() if Path("/proc/self/statm").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            resident = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])  # the field after the state
        children.setdefault(parent, []).append(int(entry.name))
        rss[int(entry.name)] = resident * page
    if root_pid not in rss:
        return {}
    out: dict[str, int] = {}
    todo = [(root_pid, "supervisor")]
    while todo:
        pid, role = todo.pop()
        out[role] = out.get(role, 0) + rss.get(pid, 0)
        for child in children.get(pid, ()):
            todo.append((child, role if role != "supervisor" else
                         "background" if child == background_pid else "http"))
    return out


def exposition(data_dir: Path, supervisor_pid: int | None) -> bytes:
    """The text exposition of this node: every process's counters, summed, and the node gauges."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client import REGISTRY

    metrics()  # every metric exists (at zero) from the first scrape on
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        registry.register(_ProcessFiles(Path(directory)))
    else:  # an app outside serve (tests of one blueprint): this process alone
        registry = REGISTRY
    registry_with_node = CollectorRegistry()
    registry_with_node.register(_Both(registry, NodeCollector(data_dir, supervisor_pid)))
    return generate_latest(registry_with_node)


class _ProcessFiles:
    """Every process's counter files, summed (prometheus_client's MultiProcessCollector.merge).

    A process creates its file empty and only then sizes it; a scrape in between would make
    the merge fail on the empty file (struct.error, a 500). A file only grows once sized, so
    an empty one is a process that has counted nothing yet: skipped.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector

        files = [str(path) for path in self.directory.glob("*.db") if path.stat().st_size > 0]
        return MultiProcessCollector.merge(files, accumulate=True)


class _Both:
    def __init__(self, registry, node: NodeCollector):
        self.registry, self.node = registry, node

    def collect(self):
        yield from self.registry.collect()
        yield from self.node.collect()


def token_matches(presented: str, token_file: Path | None) -> bool:
    """Whether ``presented`` is the scrape token kept in ``token_file`` (constant-time comparison)."""
    if token_file is None or not presented:
        return False
    try:
        expected = token_file.read_text().strip()
    except OSError:
        return False
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())
