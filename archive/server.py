"""``slidearchive serve``: the supervisor, so that the archive never runs half-dead.

This process is granian's main process: the HTTP workers are its children (granian
respawns one that dies and exits on a crash loop). Beside them runs one background
process (archive.background: DIMSE listener and index worker), which a thread here
restarts with back-off, or gives up on and stops the whole server. Every child dies
with this process (archive.lifecycle), ports are checked before anything reports ready,
and SIGTERM/SIGINT drain all of them within ``[server] stop_timeout`` + 10 s.
Before it forks them, the supervisor imports what they all run (archive.preload), so that
every child shares those pages instead of loading its own copy.
"""
from __future__ import annotations

import base64
import collections
import concurrent.futures
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from typing import Callable

from archive.config import ConfigError, Settings
from archive.lifecycle import KILL_GRACE, SUPERVISOR_ENV, RunFiles, busy_port, lock_data_dir, process_alive

log = logging.getLogger(__name__)
SETTINGS_ENV = "SLIDEARCHIVE_SETTINGS"
#: Back-off before each restart of the background process (seconds); the last one repeats.
RESTART_DELAYS = (1, 2, 4, 8, 16, 30)
#: More restarts than this within RESTART_WINDOW seconds and the server stops (exit 1).
RESTART_LIMIT, RESTART_WINDOW = 5, 600.0
#: A background process up this long has recovered: the back-off starts again from the first delay.
STABLE_AFTER = 60.0
#: Seconds without a heartbeat after which the background process counts as hung and is killed.
HANG_TIMEOUT = 30.0
#: Seconds the background process may take to open its ports and start the index worker.
START_TIMEOUT = 120.0


def say(message: str) -> None:
    """One line for the operator on standard error (where all of the server's logs go)."""
    print(f"slidearchive: {message}", file=sys.stderr, flush=True)


def _http_server(settings: Settings, on_stop: Callable[[], None], on_ready: Callable[[], None]):
    """Granian (a Rust HTTP server) runs the Flask app in ``workers`` processes.

    Chosen over gunicorn because it serves about 1.6x more frames per second on
    two cores while still streaming request bodies (STOW-RS stays in bounded memory).
    Its stop signal handler is extended so the background process drains in parallel.
    """
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    from archive.tls import granian_options

    class HttpServer(Granian):
        def signal_handler_interrupt(self, *args, **kwargs):
            on_stop()
            for worker in self.wrks:  # workers stopping on the same signal (Ctrl-C, killpg) are no crash
                worker.interrupt_by_parent = True
            super().signal_handler_interrupt(*args, **kwargs)

    os.environ[SETTINGS_ENV] = base64.b64encode(pickle.dumps(settings)).decode()
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    server = HttpServer("dicomweb.wsgi:app_from_environment", factory=True, interface=Interfaces.WSGI,
                        address=settings.host, port=settings.http_port, workers=settings.workers,
                        blocking_threads=settings.threads, log_level=LogLevels.warning, websockets=False,
                        respawn_failed_workers=True,
                        workers_kill_timeout=math.ceil(settings.stop_timeout + KILL_GRACE),
                        **granian_options(settings.tls))
    server.on_startup(on_ready)
    return server


def _prepare(settings: Settings) -> str | None:
    """Create the data directory, catalog and keys, sweep crash leftovers; a config error's message or None.

    Runs in a short-lived child: the supervisor holds no catalog connection, open file or
    thread of the archive that its forked children would inherit.
    """
    from archive.config import ConfigError
    from archive.logs import quiet_libraries
    from archive.service import Archive

    from indexer.config import load_index_config

    quiet_libraries()
    try:
        load_index_config(settings.index, settings.data_dir)
        Archive(settings).storage.sweep_temp()
    except (ConfigError, ValueError) as e:  # deid's PolicyError and the index's config error are ValueErrors
        return str(e)
    _first_admin_key(settings)
    return None


def _first_admin_key(settings: Settings) -> None:
    """On the first start with authentication on, no API key and no OIDC issuer: one admin key, shown once."""
    auth = settings.auth
    if not auth.enabled or not auth.first_admin_key or auth.issuers:
        return
    from archive.auth.apikeys import KeyStore

    keys = KeyStore.open(settings)
    if not keys.is_empty():
        return
    key, text = keys.create("first administrator", {}, admin=True)
    url = f"http://{settings.host}:{settings.http_port}/dicomweb"
    print(f"""slidearchive: authentication is on and this archive had no API key, so here is an
  administrator key. It is shown this once (only its hash is stored):

      {text}

  export SLIDEARCHIVE_KEY={text}
  curl -H "Authorization: Bearer $SLIDEARCHIVE_KEY" {url}/studies
  storescu --user admin --password "$SLIDEARCHIVE_KEY" ...    (DIMSE user identity)
  slidearchive keys create --name scanner1 --grant default:write   (keys for systems; see docs/security.md)
  slidearchive keys revoke {key.id}                                (when you have made your own)
""", file=sys.stderr, flush=True)


class Background:
    """The background process (DIMSE listener + index worker): start, watch, restart, stop."""

    def __init__(self, settings: Settings, run: RunFiles, stopping: threading.Event):
        self.settings, self.run, self.stopping = settings, run, stopping
        self.context = multiprocessing.get_context("fork")  # light parent; no resource-tracker process
        self.process: multiprocessing.Process | None = None
        self.state = "starting"
        self.server_state = "starting"
        self.restarts: collections.deque[float] = collections.deque()
        self.total_restarts = 0
        self.last_exit: str | None = None
        self.started_at = 0.0
        self.lock = threading.Lock()

    def publish(self) -> None:
        p = self.process
        self.run.write(self.run.supervisor, {
            "pid": os.getpid(), "state": self.server_state, "time": time.time(),
            "background": {"pid": p.pid if p else None, "state": self.state, "restarts": self.total_restarts,
                           "last_exit": self.last_exit}})

    def start(self) -> str | None:
        """Spawn the process and wait until it reports; None when it is up, else why not."""
        from archive import background

        receive, send = self.context.Pipe(duplex=False)
        with self.lock:
            if self.stopping.is_set():
                return "stopping"
            self.process = self.context.Process(target=background.main, args=(self.settings, os.getpid(), send),
                                                name="slidearchive-background", daemon=True)
            self.process.start()
        send.close()
        self.state, self.started_at = "starting", time.monotonic()
        self.publish()
        try:
            message = self._wait_ready(receive)
        finally:
            receive.close()
        if message is None:
            self.state = "up"
            self.publish()
        return message

    def _wait_ready(self, receive) -> str | None:
        deadline = time.monotonic() + START_TIMEOUT
        p = self.process
        while time.monotonic() < deadline and not self.stopping.is_set():
            if receive.poll(0.2):
                try:
                    kind, detail = receive.recv()
                except EOFError:
                    p.join(5)
                    return f"the background process exited while starting ({_exit_text(p.exitcode)})"
                return None if kind == "ready" else detail
            if not p.is_alive():
                return f"the background process exited while starting ({_exit_text(p.exitcode)})"
        if self.stopping.is_set():
            return "stopping"
        p.kill()
        return f"the background process did not start within {START_TIMEOUT:.0f} s"

    def supervise(self, give_up: Callable[[str], None]) -> None:
        """Thread body: restart the process with back-off whenever it dies or hangs, or give up."""
        while not self.stopping.is_set():
            p = self.process
            multiprocessing.connection.wait([p.sentinel], timeout=1.0)
            if self.stopping.is_set():
                return
            if p.is_alive():
                if self._hung():
                    log.error("the background process sent no heartbeat for %.0f s; killing it", HANG_TIMEOUT)
                    p.kill()
                    p.join(10)
                else:
                    continue
            self.last_exit = _exit_text(p.exitcode)
            delay = self._next_delay()
            if delay is None:
                self.state = "failed"
                self.publish()
                give_up(f"the background process (DIMSE listener, index worker) died {RESTART_LIMIT + 1} times "
                        f"within {RESTART_WINDOW:.0f} s (last: {self.last_exit}); stopping the server")
                return
            self.state = "restarting"
            self.publish()
            log.error("the background process (DIMSE listener, index worker) %s; restarting it in %.0f s "
                      "(restart %d)", self.last_exit, delay, self.total_restarts)
            if self.stopping.wait(delay):
                return
            problem = self.start()
            if problem is None:
                log.warning("the background process is up again")
            elif problem != "stopping":
                log.error("restart failed: %s", problem)

    def _hung(self) -> bool:
        if self.state != "up" or time.monotonic() - self.started_at < HANG_TIMEOUT:
            return False
        beat = RunFiles.read(self.run.background)
        return beat is None or beat.get("pid") != self.process.pid or time.time() - beat.get("time", 0) > HANG_TIMEOUT

    def _next_delay(self) -> float | None:
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
            self.restarts.popleft()
        if len(self.restarts) >= RESTART_LIMIT:
            return None
        recent = 0 if now - self.started_at > STABLE_AFTER else len(self.restarts)
        self.restarts.append(now)
        self.total_restarts += 1
        return RESTART_DELAYS[min(recent, len(RESTART_DELAYS) - 1)]

    def begin_stop(self) -> None:
        """Signal-handler safe: mark the stop and ask the process to drain."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.server_state = "draining"
        self.publish()
        try:
            say(f"stopping: new requests and associations are refused, transfers in progress get "
                f"{self.settings.stop_timeout:g} s to finish")
        except RuntimeError:  # print re-entered from this signal handler
            pass
        p = self.process
        if p is not None and p.pid and process_alive(p.pid):
            os.kill(p.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Drain the process (SIGTERM), kill it if it is still there after the bound."""
        with self.lock:
            self.stopping.set()
            p = self.process
        if p is None:
            return
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
            p.join(self.settings.stop_timeout + KILL_GRACE)
        if p.is_alive():
            log.error("the background process did not stop in time; killing it")
            p.kill()
            p.join(10)
        self.state = "stopped"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "is not responding"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _sweep(settings: Settings) -> None:
    """Remove what interrupted transfers left behind, once no child can still be writing."""
    from archive.storage import open_storage

    open_storage(settings).sweep_temp()
    spool = settings.data_dir / "dimse-spool"
    if spool.is_dir():
        for leftover in spool.iterdir():
            leftover.unlink(missing_ok=True)


def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until a component cannot be kept alive (exit 1)."""
    try:
        lock = lock_data_dir(settings.data_dir)  # before _prepare: it sweeps temp files
    except RuntimeError as e:
        say(str(e))
        return 1
    try:
        return _serve(settings)
    finally:
        os.close(lock)


def _serve(settings: Settings) -> int:
    from archive.logs import configure

    configure(settings.logging, settings.data_dir)
    from archive.metrics import prepare as prepare_metrics

    prepare_metrics(settings.data_dir)  # before any child: they all count into <data_dir>/run/metrics
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        problem = pool.submit(_prepare, settings).result()
    if problem is not None:
        raise ConfigError(problem)
    for port in _ports(settings):
        busy = busy_port(settings.host, port)
        if busy:
            say(busy)
            return 1
    if not settings.auth.enabled:
        say(f"authentication is OFF ([auth] enabled = false): every request acts as an "
            f"administrator; allowed on loopback only ({settings.host})")
    elif settings.host in ("127.0.0.1", "localhost", "::1"):
        say(f"listening on loopback only ({settings.host}); use --host 0.0.0.0 to accept "
            "other machines (authentication is on: see docs/security.md)")
    from archive.preload import preload

    preload()  # before the first fork
    stopping = threading.Event()
    run = RunFiles(settings.data_dir)
    background = Background(settings, run, stopping)
    for sig in (signal.SIGTERM, signal.SIGINT):  # until granian takes the signals over
        signal.signal(sig, lambda *_: background.begin_stop())
    problem = background.start()
    if problem is not None:
        background.stop()
        if problem == "stopping":
            return 0
        say(problem)
        return 1
    tls = settings.tls
    if settings.dimse.enabled:
        ports = {"off": f"{settings.dimse.port}", "only": f"{settings.dimse.port} (TLS)",
                 "separate": f"{settings.dimse.port}, TLS on {tls.dimse_port}"}[tls.dimse]
        say(f"DIMSE {settings.dimse.ae_title} on {settings.host}:{ports}")
    from archive.audit import AuditTrail

    audit = AuditTrail(settings.audit, settings.data_dir, settings.dimse.ae_title)
    audit.record("ApplicationActivity", principal=None, detail={"type": "Application Start"})
    audit.close()  # no writer thread while granian forks its workers (a fork copies no thread, only its locks)
    failure: list[str] = []

    def ready() -> None:
        background.server_state = "running"
        background.publish()
        scheme = "https" if tls.http else "http"
        say(f"DICOMweb on {scheme}://{settings.host}:{settings.http_port}/dicomweb, data in {settings.data_dir}; "
            f"health at {scheme}://{settings.host}:{settings.http_port}/health/ready; stop with Ctrl-C or SIGTERM")

    http = _http_server(settings, background.begin_stop, ready)

    def give_up(message: str) -> None:
        failure.append(message)
        log.error("%s", message)
        http.signal_handler_interrupt()

    monitor = threading.Thread(target=background.supervise, args=(give_up,), name="supervise-background",
                               daemon=True)
    code = 0
    try:
        monitor.start()
        http.serve()
    except SystemExit as e:  # granian exits 1 when HTTP workers keep dying (or one stopped first on Ctrl-C)
        code = 0 if stopping.is_set() else (e.code if isinstance(e.code, int) else 1)
        if code:
            log.error("the HTTP workers keep dying; stopping the server")
    except RuntimeError as e:  # granian's own bind, should the port be taken after the check
        say(f"cannot serve HTTP on {settings.host}:{settings.http_port} ({e})")
        code = 1
    finally:
        background.begin_stop()
        background.stop()
        monitor.join(5)
        _sweep(settings)
        background.server_state = "stopped"
        background.publish()
        say("stopped")
        audit.record("ApplicationActivity", principal=None, detail={"type": "Application Stop"})
        audit.close()
        if settings.audit.syslog is not None and settings.audit.enabled:
            from archive.audit.syslog import SyslogForwarder

            SyslogForwarder(settings.audit, settings.data_dir).drain(timeout=5)
    return 1 if failure else code


def _ports(settings: Settings) -> list[int]:
    """Every port this server listens on (with [tls] dimse = "only" the TLS listener uses [dimse] port)."""
    ports = [settings.http_port]
    if settings.dimse.enabled:
        ports.append(settings.dimse.port)
        if settings.tls.dimse == "separate":
            ports.append(settings.tls.dimse_port)
    return ports
