"""``/metrics``: the Prometheus exposition of a real ``serve`` (two HTTP workers + the background process),
parsed with prometheus_client's own parser, counts moved by real STOW, QIDO, frames, storescu and findscu."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import AUTH_OFF, REPO, Server
from slides import SlideSpec, make_slide
from test_auth import cli, stow as stow_with_token
from test_dimse_tools import echo_ok, find, needs_dcmtk, store
from test_supervisor import _children

FRAME_ROUTE = "/dicomweb/studies/<study>/series/<series>/instances/<sop>/frames/<frames>"
QIDO_ROUTE = "/dicomweb/studies"


def scrape(server: Server, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape, through the real exposition parser."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with requests.get(f"{server.url}/metrics", headers=headers, timeout=30) as r:  # a new connection each time
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape_until(server: Server, done, token: str | None = None, timeout: float = 10) -> dict:
    """Scrape until ``done(samples)``: a request is counted once its last byte is sent, so the
    client may see its answer a moment before the count moves."""
    deadline = time.time() + timeout
    while True:
        samples = scrape(server, token)
        if done(samples) or time.time() > deadline:
            return samples
        time.sleep(0.1)


def settled(server: Server, name: str, **labels) -> dict:
    """A scrape once the count of ``name`` has stopped moving: a request the Flask app answers
    (a frame the fast path handed over) is counted when its response is closed, after the client
    has it, so a scrape right after the last answer may miss it."""
    counts: list[float] = []

    def still(samples: dict) -> bool:
        counts.append(value(samples, name, **labels))
        return len(counts) > 1 and counts[-1] == counts[-2]

    return scrape_until(server, still)


def value(samples: dict, name: str, **labels) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def stow(server: Server, paths: list[Path], token: str = "") -> requests.Response:
    return stow_with_token(server, paths, None, token)


@pytest.fixture(scope="module")
def node(server):
    """The module's identified-policy server (conftest), DIMSE on, two HTTP workers."""
    return server


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> list[Path]:
    return make_slide(tmp_path_factory.mktemp("slide"),
                      SlideSpec(width=600, height=400, seed=71, patient_id="METRICS-1", label=False, overview=False))


def test_exposition_parses_and_names_every_family(node):
    samples = scrape(node)
    names = {n for n, _ in samples}
    for family in ("slidearchive_background_up", "slidearchive_node_resident_memory_bytes",
                   "slidearchive_dimse_associations_active"):
        assert family in names, sorted(names)
    assert value(samples, "slidearchive_background_up") == 1
    memory = {dict(ls)["process"]: v for (n, ls), v in samples.items() if n == "slidearchive_node_resident_memory_bytes"}
    assert set(memory) == {"supervisor", "http", "background"}, memory
    assert all(v > 10_000_000 for v in memory.values()), memory


def test_a_counter_file_just_created_does_not_break_the_scrape(node):
    """A process opens its counter file empty and sizes it a moment later; a scrape in that moment
    (a worker's first request at start) answered 500 from prometheus_client's merge."""
    empty = node.data_dir / "run" / "metrics" / "counter_999999999.db"
    empty.touch()
    try:
        samples = scrape(node)
        assert value(samples, "slidearchive_background_up") == 1
    finally:
        empty.unlink()


def test_requests_of_every_worker_are_counted(node, slide):
    r = stow(node, slide)
    assert r.status_code == 200, r.text
    level0 = pydicom.dcmread(slide[0], stop_before_pixels=True)
    url = (f"{node.dicomweb}/studies/{level0.StudyInstanceUID}/series/{level0.SeriesInstanceUID}"
           f"/instances/{level0.SOPInstanceUID}/frames/1")
    counter_files = lambda: {p.name for p in (node.data_dir / "run" / "metrics").glob("counter_*.db")}
    for _ in range(300):  # the kernel picks the worker per connection: go on until two processes hold counts
        if len(counter_files()) >= 2:
            break
        requests.get(url, headers={"Accept": "application/octet-stream"}, timeout=30)
    assert len(counter_files()) >= 2, f"counts from one process only: {counter_files()}"
    before = settled(node, "slidearchive_http_requests_total", route=FRAME_ROUTE, status="200")
    frames, queries = 30, 7
    for _ in range(frames):  # new connections: granian spreads them over its workers
        assert requests.get(url, headers={"Accept": "application/octet-stream"}, timeout=30).status_code == 200
    for _ in range(queries):
        assert requests.get(f"{node.dicomweb}/studies", params={"PatientID": "METRICS-1"}, timeout=30).ok
    assert requests.get(url.replace("/frames/1", "/frames/9999"), timeout=30).status_code == 400
    base = value(before, "slidearchive_http_requests_total", route=FRAME_ROUTE, status="200")
    scrape_until(node, lambda s: value(s, "slidearchive_http_requests_total", route=FRAME_ROUTE,
                                       status="200") >= base + frames)
    after = [scrape(node) for _ in range(6)]  # whichever worker answers the scrape, it sums them all
    frame_counts = {value(a, "slidearchive_http_requests_total", route=FRAME_ROUTE, status="200") for a in after}
    assert frame_counts == {base + frames}, frame_counts
    qido_before = value(before, "slidearchive_http_requests_total", route=QIDO_ROUTE, method="GET", status="200")
    latency_before = value(before, "slidearchive_http_request_duration_seconds_count", route=FRAME_ROUTE)
    after[-1] = scrape_until(node, lambda s: value(s, "slidearchive_http_requests_total", route=QIDO_ROUTE,
                                                   method="GET", status="200") >= qido_before + queries
                             and value(s, "slidearchive_http_request_duration_seconds_count",
                                       route=FRAME_ROUTE) >= latency_before + frames + 1)  # the 400 too
    qido = value(after[-1], "slidearchive_http_requests_total", route=QIDO_ROUTE, method="GET", status="200")
    assert qido - qido_before == queries
    latency = value(after[-1], "slidearchive_http_request_duration_seconds_count", route=FRAME_ROUTE)
    assert latency - latency_before == frames + 1
    assert value(after[-1], "slidearchive_http_request_duration_seconds_bucket", route=FRAME_ROUTE, le="+Inf") == latency
    assert value(after[-1], "slidearchive_errors_total", error="InvalidRequest", interface="http") >= 1


def test_ingest_counted_by_source_with_bytes(node, tmp_path):
    paths = make_slide(tmp_path / "stow", SlideSpec(width=500, height=300, seed=72, patient_id="METRICS-2",
                                                     label=False, overview=False))
    before = scrape(node)
    assert stow(node, paths).status_code == 200
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a DICOM file at all" * 10)
    assert stow(node, [bad]).status_code == 409
    after = scrape(node)
    stored = value(after, "slidearchive_ingest_instances_total", source="stow", outcome="stored")
    assert stored - value(before, "slidearchive_ingest_instances_total", source="stow", outcome="stored") == len(paths)
    size = sum(p.stat().st_size for p in paths) + bad.stat().st_size
    assert value(after, "slidearchive_ingest_bytes_total", source="stow") - \
        value(before, "slidearchive_ingest_bytes_total", source="stow") == size
    failed = value(after, "slidearchive_ingest_instances_total", source="stow", outcome="failed")
    assert failed - value(before, "slidearchive_ingest_instances_total", source="stow", outcome="failed") == 1
    errors = value(after, "slidearchive_errors_total", error="InvalidDataset", interface="stow")
    assert errors - value(before, "slidearchive_errors_total", error="InvalidDataset", interface="stow") == 1
    again = scrape(node)  # the failed part was counted once, not again by the HTTP layer
    assert value(again, "slidearchive_errors_total", error="InvalidDataset") == \
        value(after, "slidearchive_errors_total", error="InvalidDataset")


def test_cli_import_beside_the_node_is_counted(node, tmp_path):
    paths = make_slide(tmp_path / "import", SlideSpec(width=400, height=300, seed=74, patient_id="METRICS-4",
                                                       label=False, overview=False))
    before = scrape(node)
    result = subprocess.run([sys.executable, "-m", "archive.cli", "import", "--data-dir", str(node.data_dir),
                             "--config", str(node.config_path), "--quiet", str(tmp_path / "import")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    after = scrape(node)
    assert value(after, "slidearchive_ingest_instances_total", source="import", outcome="stored") - \
        value(before, "slidearchive_ingest_instances_total", source="import", outcome="stored") == len(paths)


@needs_dcmtk
def test_dimse_associations_operations_and_cstore_ingest(node, tmp_path):
    paths = make_slide(tmp_path / "dimse", SlideSpec(width=500, height=300, seed=73, patient_id="METRICS-3",
                                                      label=False, overview=False))
    before = scrape(node)
    assert echo_ok(node)
    result = store(node, tmp_path / "dimse", options=["-xy"])
    assert result.returncode == 0, result.stderr
    result, found = find(node, tmp_path / "find", "STUDY", {"PatientID": "METRICS-3", "StudyInstanceUID": ""})
    assert result.returncode == 0 and len(found) == 1, result.stderr
    deadline = time.time() + 10  # the association-end events may land just after the tools exit
    while True:
        after = scrape(node)
        released = value(after, "slidearchive_dimse_associations_total", outcome="released") - \
            value(before, "slidearchive_dimse_associations_total", outcome="released")
        if released >= 3 or time.time() > deadline:
            break
        time.sleep(0.2)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("slidearchive_dimse_associations_total", outcome="accepted") == 3
    assert released == 3
    assert moved("slidearchive_dimse_operations_total", operation="C-ECHO", status="0x0000") == 1
    assert moved("slidearchive_dimse_operations_total", operation="C-STORE", status="0x0000") == len(paths)
    assert moved("slidearchive_dimse_operations_total", operation="C-FIND", status="0x0000") == 1
    assert moved("slidearchive_ingest_instances_total", source="dimse", outcome="stored") == len(paths)
    assert moved("slidearchive_ingest_bytes_total", source="dimse") > sum(p.stat().st_size for p in paths) * 0.9


def test_a_killed_worker_keeps_its_counts(node):
    for _ in range(10):
        assert requests.get(f"{node.url}/health/live", timeout=30).ok
    before = value(scrape(node), "slidearchive_http_requests_total", status="200")
    background = int(__import__("json").loads((node.data_dir / "run" / "background.json").read_text())["pid"])
    workers = sorted(_children(node.process.pid) - {background} - _children(background))
    assert len(workers) == 2, workers
    files = node.data_dir / "run" / "metrics"
    victim = next(pid for pid in workers if (files / f"counter_{pid}.db").exists())  # one that counted requests
    os.kill(victim, signal.SIGKILL)
    deadline = time.time() + 30
    while True:  # until granian has respawned the worker and answers again
        try:
            samples = scrape(node)
            break
        except requests.ConnectionError:
            assert time.time() < deadline, "the HTTP workers did not come back"
            time.sleep(0.2)
    after = value(samples, "slidearchive_http_requests_total", status="200")
    assert after >= before + 1  # the scrape itself, at least; never fewer


def test_access_admin_or_scrape_token(tmp_path):
    token_file = tmp_path / "scrape-token"
    token_file.write_text("s3cr3t-scrape-token-of-the-monitoring\n")
    server = Server(tmp_path / "auth", f"""
[auth]
enabled = true
first_admin_key = false
[metrics]
token_file = "{token_file}"
""")
    server.data_dir.mkdir(parents=True)
    admin = cli(server, "keys", "create", "--name", "admin", "--admin")
    reader = cli(server, "keys", "create", "--name", "reader", "--grant", "default:read")
    curator = cli(server, "keys", "create", "--name", "curator", "--grant", "default:admin")
    server.start()
    try:
        assert requests.get(f"{server.url}/metrics", timeout=30).status_code == 401
        assert requests.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"},
                            timeout=30).status_code == 401
        r = requests.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {reader}"}, timeout=30)
        assert r.status_code == 403 and "admin" in r.json()["message"]
        r = requests.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {curator}"}, timeout=30)
        assert r.status_code == 403 and "administrator of the archive" in r.json()["message"]
        assert scrape(server, admin)
        token = "s3cr3t-scrape-token-of-the-monitoring"
        samples = scrape_until(server, lambda s: value(s, "slidearchive_http_requests_total", route="/metrics") >= 5,
                               token)
        assert value(samples, "slidearchive_http_requests_total", route="/metrics", status="401") == 2
        assert value(samples, "slidearchive_http_requests_total", route="/metrics", status="403") == 2
        # the token opens /metrics and nothing else
        assert requests.get(f"{server.dicomweb}/studies", headers={
            "Authorization": "Bearer s3cr3t-scrape-token-of-the-monitoring"}, timeout=30).status_code == 401
    finally:
        server.stop()


def test_metrics_turned_off(make_server):
    server = make_server(AUTH_OFF + "[metrics]\nenabled = false\n", dimse=False)
    r = requests.get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 404 and "[metrics] enabled" in r.json()["message"]


@pytest.mark.parametrize("section, message", [
    ("[metrics]\ncolour = 1\n", "[metrics] unknown keys: colour"),
    ("[metrics]\nenabled = 1\n", "[metrics] enabled must be bool"),
    ('[metrics]\ntoken_file = "/nonexistent/token"\n', "[metrics] token_file: file not found"),
])
def test_metrics_configuration_mistakes(tmp_path, section, message):
    from archive.config import ConfigError, load_settings

    path = tmp_path / "c.toml"
    path.write_text(section)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(path)
