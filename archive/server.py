"""``slidearchive serve``: DICOMweb under granian, DIMSE and the index worker beside it.

DIMSE and the outbox worker share one spawned background process, so the HTTP
workers stay single-purpose; the supervisor itself imports no DICOM library.
"""
from __future__ import annotations

import base64
import concurrent.futures
import logging
import multiprocessing
import os
import pickle
import sys

from .config import ConfigError, Settings

log = logging.getLogger(__name__)
SETTINGS_ENV = "SLIDEARCHIVE_SETTINGS"


def _serve_http(settings: Settings) -> None:
    """Granian (a Rust HTTP server) runs the Flask app in ``workers`` processes.

    Chosen over gunicorn because it serves about 1.6x more frames per second on
    two cores while still streaming request bodies (STOW-RS stays in bounded memory).
    """
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    from .tls import granian_options

    os.environ[SETTINGS_ENV] = base64.b64encode(pickle.dumps(settings)).decode()
    Granian("dicomweb.wsgi:app_from_environment", factory=True, interface=Interfaces.WSGI,
            address=settings.host, port=settings.http_port, workers=settings.workers,
            blocking_threads=settings.threads, log_level=LogLevels.warning, websockets=False,
            **granian_options(settings.tls)).serve()


def _prepare(settings: Settings) -> str | None:
    """Create the data directory, catalog and keys, sweep crash leftovers; a config error's message or None.

    Runs in a short-lived child so the supervisor process never imports the heavy
    libraries (pydicom, highdicom) it does not use.
    """
    from .config import ConfigError
    from .service import Archive

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
    from .apikeys import KeyStore

    keys = KeyStore(settings.secrets_dir)
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


def _background_services(settings: Settings) -> None:
    """One process for what runs beside HTTP: the index worker (a thread) and the DIMSE listener."""
    import signal
    import threading

    quiet_libraries()
    from .logs import configure

    configure(settings.logging, settings.data_dir)
    from .audit_syslog import start as start_forwarder

    start_forwarder(settings.audit, settings.data_dir)
    try:
        from indexer.worker import start_worker
    except ImportError:
        start_worker = None
    if start_worker is not None:
        from .catalog import Catalog
        from .storage import StorageArea

        start_worker(settings, Catalog(settings.catalog_path, StorageArea(settings.storage_dir).path))
    if settings.dimse.enabled:
        from .dimse import run as run_dimse

        run_dimse(settings)
    else:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()


def quiet_libraries() -> None:
    """pydicom logs invalid values verbatim and pynetdicom logs data sets at debug: both could carry PHI."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM."""
    from .logs import configure

    configure(settings.logging, settings.data_dir)
    # fork: the supervisor is single-threaded and light here, and fork needs no resource-tracker process
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        problem = pool.submit(_prepare, settings).result()
    if problem is not None:
        raise ConfigError(problem)
    if not settings.auth.enabled:
        print(f"slidearchive: authentication is OFF ([auth] enabled = false): every request acts as an "
              f"administrator; allowed on loopback only ({settings.host})", file=sys.stderr)
    elif settings.host in ("127.0.0.1", "localhost", "::1"):
        print(f"slidearchive: listening on loopback only ({settings.host}); use --host 0.0.0.0 to accept "
              "other machines (authentication is on: see docs/security.md)", file=sys.stderr)
    background = context.Process(target=_background_services, args=(settings,), name="slidearchive-background",
                                 daemon=True)
    background.start()
    tls = settings.tls
    if settings.dimse.enabled:
        ports = {"off": f"{settings.dimse.port}", "only": f"{settings.dimse.port} (TLS)",
                 "separate": f"{settings.dimse.port}, TLS on {tls.dimse_port}"}[tls.dimse]
        print(f"slidearchive: DIMSE {settings.dimse.ae_title} on {settings.host}:{ports}", file=sys.stderr)
    print(f"slidearchive: DICOMweb on {'https' if tls.http else 'http'}://{settings.host}:{settings.http_port}/dicomweb, "
          f"data in {settings.data_dir}", file=sys.stderr)
    from .audit import AuditTrail

    audit = AuditTrail(settings.audit, settings.data_dir, settings.dimse.ae_title)
    audit.record("ApplicationActivity", principal=None, detail={"type": "Application Start"})
    audit.close()  # no writer thread while granian forks its workers (a fork copies no thread, only its locks)
    try:
        _serve_http(settings)
    finally:
        background.terminate()
        background.join(10)
        audit.record("ApplicationActivity", principal=None, detail={"type": "Application Stop"})
        audit.close()
        if settings.audit.syslog is not None and settings.audit.enabled:
            from .audit_syslog import SyslogForwarder

            SyslogForwarder(settings.audit, settings.data_dir).drain(timeout=5)
    return 0
