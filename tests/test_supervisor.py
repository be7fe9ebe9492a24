"""The serve supervisor never leaves a half-dead archive: real servers, real signals, real sockets.

Covers issue 9 item 2: children die with the supervisor, busy ports stop the start,
a dead background process is restarted (and readiness shows it meanwhile), and
SIGTERM drains STOW-RS and C-STORE so that an instance is stored whole or not at all.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from conftest import IDENTIFIED, REPO, Server, free_port
from slides import SlideSpec, make_slide

ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    """Nobody listens on the port (bound without SO_REUSEPORT, so a granian worker counts)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def _supervisor_view(server: Server) -> dict:
    return json.loads((server.data_dir / "run" / "supervisor.json").read_text())


def _ready(server: Server) -> requests.Response:
    return requests.get(f"{server.url}/health/ready", timeout=10)


def _echo(server: Server) -> bool:
    return subprocess.run([ECHOSCU, "-aec", "SLIDEARCHIVE", "127.0.0.1", str(server.dimse_port)],
                          capture_output=True, timeout=60).returncode == 0


def _verify(server: Server) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", "verify", "--data-dir", str(server.data_dir),
                           "--config", str(server.config_path)], capture_output=True, text=True, cwd=REPO)


def _serve(data_dir: Path, http_port: int, *args: str) -> subprocess.CompletedProcess:
    """A second ``serve`` run to its end (it must end by itself: the test fails on a timeout)."""
    cmd = [sys.executable, "-m", "archive.cli", "serve", "--data-dir", str(data_dir),
           "--http-port", str(http_port), *args]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"the second server did not stop by itself:\n{out[-2000:]}")
    return subprocess.CompletedProcess(cmd, process.returncode, out, "")


def test_kill_9_of_the_supervisor_takes_every_child_and_frees_the_ports(tmp_path):
    server = Server(tmp_path / "s", IDENTIFIED).start()
    children: set[int] = set()
    try:
        children = _children(server.process.pid)
        assert len(children) >= 3, "two HTTP workers and the background process"
        os.kill(server.process.pid, signal.SIGKILL)  # the supervisor alone, not its process group
        server.process.wait(10)
        assert _wait(lambda: not any(_alive(p) for p in children), 60), \
            f"children still running: {[p for p in children if _alive(p)]}"
        assert _wait(lambda: _port_free(server.http_port) and _port_free(server.dimse_port), 30)
        # and a new server on the same ports and data directory is whole again
        server.start()
        assert _ready(server).status_code == 200
        assert _echo(server)
    finally:
        server.stop()
        for pid in children:  # orphans, should the test fail
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_second_server_on_a_busy_http_port_or_data_directory_stops_with_a_message(tmp_path):
    first = Server(tmp_path / "first", IDENTIFIED, dimse=False).start()
    try:
        result = _serve(tmp_path / "second", first.http_port, "--no-dimse")
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{first.http_port} (address already in use)" in result.stdout
        assert "Traceback" not in result.stdout
        assert "DICOMweb on" not in result.stdout, "it must not report ready"
        # only the first archive answers on the port
        answers = {requests.get(f"{first.url}/health/ready", timeout=10).json()["components"]["http"]["pid"]
                   for _ in range(20)}
        assert answers <= _children(first.process.pid)
        # nor can a second server share the first one's data directory
        result = _serve(first.data_dir, free_port(), "--no-dimse")
        assert result.returncode != 0
        assert "is in use by another slidearchive serve" in result.stdout
    finally:
        first.stop()


def test_a_second_server_on_a_busy_dimse_port_stops_with_a_message(tmp_path):
    first = Server(tmp_path / "first", IDENTIFIED).start()
    try:
        http_port = free_port()
        result = _serve(tmp_path / "second", http_port, "--dimse-port", str(first.dimse_port))
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{first.dimse_port} (address already in use)" in result.stdout
        assert "DICOMweb on" not in result.stdout
        assert _port_free(http_port), "the second server's HTTP port was left open"
        assert _echo(first)
    finally:
        first.stop()


def test_a_killed_background_process_is_restarted_and_readiness_shows_it(tmp_path):
    server = Server(tmp_path / "s", IDENTIFIED + "\n[server]\nmin_free_space_mb = 0\n").start()
    try:
        r = _ready(server)
        assert r.status_code == 200, r.text
        components = r.json()["components"]
        assert set(components) == {"http", "dimse", "index", "catalog", "storage", "configuration"}
        assert components["dimse"]["ports"] == [server.dimse_port]
        assert components["index"]["lag_events"] == 0
        assert components["storage"]["free_mb"] > 0
        old = _supervisor_view(server)["background"]["pid"]
        os.kill(old, signal.SIGKILL)
        seen_down = []

        def down() -> bool:
            r = _ready(server)
            if r.status_code == 503:
                seen_down.append(r.json())
            return bool(seen_down)

        assert _wait(down, 30, interval=0.05), "readiness never reported the dead background process"
        report = seen_down[0]
        assert report["status"] == "not ready"
        assert report["components"]["dimse"]["status"] == "down"
        assert report["components"]["index"]["status"] == "down"
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200, "restarting is alive"
        assert _wait(lambda: _ready(server).status_code == 200, 90), _ready(server).text
        assert _supervisor_view(server)["background"]["pid"] != old
        assert _echo(server)
        log = server.log_path.read_text()
        assert "was killed by SIGKILL; restarting it" in log
    finally:
        server.stop()


@pytest.mark.slow
def test_a_background_process_that_cannot_come_back_stops_the_server(tmp_path):
    """Its DIMSE port is taken while it is down: every restart fails, and after the back-off
    (1 + 2 + 4 + 8 + 16 s) the whole server exits 1 instead of going on without DIMSE."""
    server = Server(tmp_path / "s", IDENTIFIED).start()
    thief = socket.socket()
    try:
        os.kill(_supervisor_view(server)["background"]["pid"], signal.SIGKILL)
        assert _wait(lambda: _port_free(server.dimse_port), 30)
        thief.bind(("127.0.0.1", server.dimse_port))
        thief.listen()
        code = server.process.wait(240)
        assert code == 1
        log = server.log_path.read_text()
        assert f"cannot listen on 127.0.0.1:{server.dimse_port} (address already in use)" in log
        assert "died 6 times within 600 s" in log
        assert _port_free(server.http_port)
    finally:
        thief.close()
        server.stop()


def test_a_killed_http_worker_is_replaced(tmp_path):
    server = Server(tmp_path / "s", IDENTIFIED, dimse=False).start()
    try:
        background = _supervisor_view(server)["background"]["pid"]
        workers = _children(server.process.pid) - {background}
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        assert _wait(lambda: len(_children(server.process.pid) - {background, victim}) == len(workers), 60)
        assert server.process.poll() is None
        assert _wait(lambda: _answers_ready(server), 30)
    finally:
        server.stop()


def _answers_ready(server: Server) -> bool:
    """Ready, or not yet: a connection refused while the replacement worker starts is a 'not yet'."""
    try:
        return _ready(server).status_code == 200
    except requests.ConnectionError:
        return False


def test_readiness_is_503_when_storage_is_low(tmp_path):
    server = Server(tmp_path / "s", IDENTIFIED + "\n[server]\nmin_free_space_mb = 100000000\n",
                    dimse=False).start()
    try:
        r = _ready(server)
        assert r.status_code == 503
        assert r.json()["components"]["storage"]["status"] == "down"
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        server.stop()


# --- graceful stop ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory) -> Path:
    """One 12 MB native instance (2048 x 2048 RGB, one level)."""
    return make_slide(tmp_path_factory.mktemp("big"), SlideSpec(width=2048, height=2048, codec="native", levels=1,
                                                                 seed=91, label=False, overview=False))[0]


def _drip_stow(server: Server, data: bytes, chunk: int, pause: float, started: threading.Event, result: list):
    boundary = uuid.uuid4().hex

    def body():
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for i in range(0, len(data), chunk):
            yield data[i:i + chunk]
            started.set()
            time.sleep(pause)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = requests.post(f"{server.dicomweb}/studies", data=body(), timeout=120,
                          headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                                   "Accept": "application/dicom+json"})
        result.append(r.status_code)
    except requests.RequestException as e:
        result.append(type(e).__name__)


def _stop_and_measure(server: Server, sig: int = signal.SIGTERM) -> tuple[int, float]:
    start = time.monotonic()
    os.kill(server.process.pid, sig)  # the supervisor alone: it must stop its children itself
    code = server.process.wait(120)
    return code, time.monotonic() - start


def _wait_until_spooling(server: Server, timeout: float = 30) -> None:
    """Until the STOW's spool file exists: the worker is handling the request, not merely sent
    its first bytes (a request the worker takes up after the stop began is refused, 503)."""
    spool = server.data_dir / "storage" / "tmp"
    deadline = time.monotonic() + timeout
    while not any(spool.glob("*.part")):
        assert time.monotonic() < deadline, "the STOW never reached the worker's spool file"
        time.sleep(0.05)


def _instances_after_restart(server: Server) -> list:
    server.start()
    try:
        return requests.get(f"{server.dicomweb}/instances", timeout=30).json()
    finally:
        server.stop()


def test_sigterm_during_a_slow_stow_refuses_it_cleanly_within_the_bound(tmp_path, big_slide):
    server = Server(tmp_path / "s", IDENTIFIED + "\n[server]\nstop_timeout = 2\n", dimse=False).start()
    started, result = threading.Event(), []
    sender = threading.Thread(target=_drip_stow, args=(server, big_slide.read_bytes(), 64 * 1024, 0.2, started,
                                                       result), daemon=True)
    sender.start()
    assert started.wait(30)
    time.sleep(0.5)
    code, took = _stop_and_measure(server)
    sender.join(60)
    assert code == 0, server.log_path.read_text()[-2000:]
    assert took < 2 + 10 + 15, f"stop took {took:.1f} s"
    assert result and result[0] != 200, result
    assert _port_free(server.http_port)
    assert _instances_after_restart(server) == []
    check = _verify(server)
    assert check.returncode == 0 and "temp files: 0" in check.stdout, check.stdout


def test_sigterm_during_a_stow_lets_it_finish(tmp_path, big_slide):
    server = Server(tmp_path / "s", IDENTIFIED + "\n[server]\nstop_timeout = 60\n", dimse=False).start()
    started, result = threading.Event(), []
    sender = threading.Thread(target=_drip_stow, args=(server, big_slide.read_bytes(), 1024 * 1024, 0.25, started,
                                                       result), daemon=True)
    sender.start()
    assert started.wait(30)
    _wait_until_spooling(server)
    code, took = _stop_and_measure(server)
    sender.join(60)
    assert code == 0
    assert result == [200], result
    assert took < 60 + 10 + 15
    sop = dcmread(big_slide, stop_before_pixels=True).SOPInstanceUID
    stored = _instances_after_restart(server)
    assert [i["00080018"]["Value"][0] for i in stored] == [sop]
    check = _verify(server)
    assert check.returncode == 0 and "temp files: 0" in check.stdout, check.stdout


STARTED_AFTER = 256 * 1024  # bytes relayed before a transfer counts as in flight


class SlowLink:
    """A TCP relay to the archive's DIMSE port that forwards what the peer sends at ``rate`` bytes/s:
    a slow network between a real storescu and the archive."""

    def __init__(self, target_port: int, rate: float):
        self.target_port, self.rate = target_port, rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.started = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pipe, args=(client, upstream, self.rate), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: float | None) -> None:
        sent = 0
        try:
            while data := src.recv(16384):
                if rate:
                    # past the A-ASSOCIATE-RQ (under 1 KB): the association is up and the data set is flowing
                    sent += len(data)
                    if sent > STARTED_AFTER:
                        self.started.set()
                    time.sleep(len(data) / rate)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _storescu(port: int, path: Path, result: list) -> None:
    done = subprocess.run([STORESCU, "-R", "-aec", "SLIDEARCHIVE", "-aet", "SLOWSCU", "-to", "120", "127.0.0.1", str(port),
                           str(path)], capture_output=True, text=True, timeout=300)
    result.append((done.returncode, done.stdout + done.stderr))


def test_sigterm_during_a_slow_c_store_aborts_it_and_refuses_new_associations(tmp_path, big_slide):
    server = Server(tmp_path / "s", IDENTIFIED + "\n[server]\nstop_timeout = 3\n").start()
    link, result = SlowLink(server.dimse_port, 1e6), []  # 12 s for the 12 MB instance
    sender = threading.Thread(target=_storescu, args=(link.port, big_slide, result), daemon=True)
    sender.start()
    assert link.started.wait(60)
    time.sleep(0.5)
    os.kill(server.process.pid, signal.SIGTERM)
    start = time.monotonic()
    assert _wait(lambda: not _echo(server), 10), "new associations must be refused while draining"
    code = server.process.wait(120)
    took = time.monotonic() - start
    sender.join(60)
    assert code == 0
    assert took < 3 + 10 + 15, f"stop took {took:.1f} s"
    assert result and result[0][0] != 0, result
    assert "No presentation context" not in result[0][1]
    assert "association(s) still in progress" in server.log_path.read_text()
    assert _instances_after_restart(server) == []
    check = _verify(server)
    assert check.returncode == 0 and "temp files: 0" in check.stdout, check.stdout
    assert not list((server.data_dir / "dimse-spool").iterdir())


def test_sigterm_during_a_c_store_lets_it_finish(tmp_path, big_slide):
    server = Server(tmp_path / "s", IDENTIFIED + "\n[server]\nstop_timeout = 60\n").start()
    link, result = SlowLink(server.dimse_port, 4e6), []  # 3 s for the 12 MB instance
    sender = threading.Thread(target=_storescu, args=(link.port, big_slide, result), daemon=True)
    sender.start()
    assert link.started.wait(60)
    code, took = _stop_and_measure(server)
    sender.join(60)
    assert code == 0
    assert result and result[0][0] == 0, result
    sop = dcmread(big_slide, stop_before_pixels=True).SOPInstanceUID
    assert [i["00080018"]["Value"][0] for i in _instances_after_restart(server)] == [sop]
    check = _verify(server)
    assert check.returncode == 0 and "temp files: 0" in check.stdout, check.stdout


def test_preload_opens_and_starts_nothing_the_children_would_inherit():
    """The supervisor forks its children after archive.preload: a thread, file or connection
    it left behind would be copied into each of them (a thread only as its held locks)."""
    script = """
import os, threading
before = set(os.listdir('/proc/self/fd'))
from archive.preload import MODULES, preload
preload()
import sys
missing = [m for m in MODULES if m not in sys.modules]
print(threading.active_count(), len(set(os.listdir('/proc/self/fd')) - before), 'pydicom' in sys.modules, missing)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    threads, new_fds, pydicom_loaded, missing = done.stdout.strip().split(" ", 3)
    assert (threads, new_fds) == ("1", "0"), done.stdout
    assert pydicom_loaded == "True" and missing == "[]", done.stdout
