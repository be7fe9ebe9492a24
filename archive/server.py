"""``slidearchive serve``: DICOMweb under granian, DIMSE and the index worker beside it.

DIMSE and the outbox worker run in their own processes (spawned, not forked),
so the HTTP workers stay single-purpose and a crash in one does not take the
others down.
"""
from __future__ import annotations

import logging
import multiprocessing
import sys
from typing import Callable

from .config import Settings

log = logging.getLogger(__name__)


def _serve_http(settings: Settings) -> None:
    """Granian (a Rust HTTP server) runs the Flask app in ``workers`` processes.

    Chosen over gunicorn because it serves about 1.6x more frames per second on
    two cores while still streaming request bodies (STOW-RS stays in bounded memory).
    """
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    from dicomweb.wsgi import export_settings

    export_settings(settings)
    Granian("dicomweb.wsgi:app_from_environment", factory=True, interface=Interfaces.WSGI,
            address=settings.host, port=settings.http_port, workers=settings.workers,
            blocking_threads=settings.threads, log_level=LogLevels.warning, websockets=False).serve()


def _background(target: Callable[[Settings], None], settings: Settings, name: str) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=_child, args=(target, settings), name=name,
                                                           daemon=True)
    process.start()
    return process


def _child(target: Callable[[Settings], None], settings: Settings) -> None:
    quiet_libraries()
    target(settings)


def _dimse_target():
    try:
        from .dimse import run as run_dimse
    except ImportError:
        return None
    return run_dimse


def _index_target():
    try:
        from indexer.worker import run as run_worker
    except ImportError:
        return None
    return run_worker


def quiet_libraries() -> None:
    """pydicom logs invalid values verbatim and pynetdicom logs data sets at debug: both could carry PHI."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM."""
    from .service import Archive

    quiet_libraries()
    Archive(settings).storage.sweep_temp()  # creates the data dir and catalog; removes crash leftovers
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        print(f"slidearchive: listening on loopback only ({settings.host}); use --host 0.0.0.0 to accept "
              "other machines (there is no authentication yet)", file=sys.stderr)
    children = []
    run_dimse = _dimse_target()
    if settings.dimse.enabled and run_dimse is not None:
        children.append(_background(run_dimse, settings, "slidearchive-dimse"))
        print(f"slidearchive: DIMSE {settings.dimse.ae_title} on {settings.host}:{settings.dimse.port}",
              file=sys.stderr)
    run_worker = _index_target()
    if run_worker is not None:
        children.append(_background(run_worker, settings, "slidearchive-indexer"))
    print(f"slidearchive: DICOMweb on http://{settings.host}:{settings.http_port}/dicomweb, "
          f"data in {settings.data_dir}", file=sys.stderr)
    try:
        _serve_http(settings)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(10)
    return 0

