"""Liveness and readiness for load balancers and operators.

``/health`` and ``/health/live``: 200 while the server is whole or repairing itself
(a component being restarted by the supervisor), 503 once it is stopping or has
given a component up, or when the background process stopped reporting.
``/health/ready``: 200 only when every component works now, with each one in JSON
(HTTP, DIMSE listener, index worker and its outbox lag, catalog, storage free space, and
whether the nodes sharing the catalog have the same DIMSE tables).
Components in other processes are read from ``<data_dir>/run`` (archive.lifecycle).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any

from flask import jsonify

from archive.errors import ArchiveError
from archive.lifecycle import SUPERVISOR_ENV, RunFiles

#: A heartbeat older than this (seconds) means the background process is not working now.
STALE_AFTER = 5.0
#: ... and older than this, that it hangs (the supervisor kills it at the same age).
HUNG_AFTER = 30.0


def _supervisor_pid() -> int | None:
    value = os.environ.get(SUPERVISOR_ENV)
    return int(value) if value else None


def _views(settings) -> tuple[dict | None, dict | None]:
    run = RunFiles(settings.data_dir)
    return RunFiles.read(run.supervisor), RunFiles.read(run.background)


def liveness(settings) -> tuple[bool, str]:
    pid = _supervisor_pid()
    if pid is None:
        return True, "not supervised"
    supervisor, beat = _views(settings)
    if supervisor is None or supervisor.get("pid") != pid:
        return False, "the supervisor's state is missing"
    if supervisor.get("state") in ("draining", "stopped"):
        return False, "the server is stopping"
    state = supervisor["background"]["state"]
    if state == "failed":
        return False, "the background process could not be kept running"
    if state == "up" and (beat is None or time.time() - beat.get("time", 0) > HUNG_AFTER):
        return False, "the background process stopped reporting"
    return True, "restarting the background process" if state != "up" else "ok"


def readiness(settings, archive) -> tuple[bool, dict[str, Any]]:
    components: dict[str, Any] = {"http": {"status": "ok", "pid": os.getpid(), "workers": settings.workers}}
    components["catalog"] = _catalog(archive)
    components["storage"] = _storage(settings, archive)
    components.update(_background(settings))
    ready = all(c["status"] in ("ok", "degraded", "disabled", "not supervised") for c in components.values())
    return ready, components


def _catalog(archive) -> dict[str, Any]:
    try:
        archive.catalog.ping()
    except Exception as e:  # noqa: BLE001 - any failure to read means not ready
        return {"status": "down", "detail": f"cannot read the catalog ({type(e).__name__})"}
    return {"status": "ok"}


def _storage(settings, archive) -> dict[str, Any]:
    """The local area (free space, writable: spool and temp files live there with S3 too) and,
    for S3, whether the bucket answers."""
    try:
        free = shutil.disk_usage(settings.storage_dir).free
    except OSError as e:
        return {"status": "down", "detail": f"cannot examine the storage area ({e.strerror})"}
    free_mb = free // (1024 * 1024)
    out = {"free_mb": free_mb, "min_free_mb": settings.min_free_space_mb}
    if free_mb < settings.min_free_space_mb:
        return {"status": "down", "detail": "less free space than [server] min_free_space_mb", **out}
    if not os.access(settings.storage_dir / "tmp", os.W_OK):
        return {"status": "down", "detail": "the storage area is not writable", **out}
    if archive.storage.kind == "s3":
        out["bucket"] = archive.storage.bucket
        try:
            archive.storage.check()
        except ArchiveError as e:
            return {"status": "down", "detail": e.message, **out}
    return {"status": "ok", **out}


def _background(settings) -> dict[str, Any]:
    """The DIMSE listener and the index worker, from the supervisor's view and the heartbeat."""
    dimse_off = {"status": "disabled"} if not settings.dimse.enabled else None
    if _supervisor_pid() is None:
        none = {"status": "not supervised", "detail": "the app was not started by slidearchive serve"}
        return {"dimse": dimse_off or none, "index": none, "configuration": none}
    supervisor, beat = _views(settings)
    down = None
    if supervisor is None or supervisor.get("pid") != _supervisor_pid():
        down = "the supervisor's state is missing"
    elif supervisor.get("state") != "running":
        down = f"the server is {supervisor.get('state')}"
    elif supervisor["background"]["state"] != "up":
        bg = supervisor["background"]
        down = f"the background process is {bg['state']}" + (f" (it {bg['last_exit']})" if bg["last_exit"] else "")
    elif beat is None or beat.get("pid") != supervisor["background"]["pid"]:
        down = "no heartbeat from the background process"
    elif (age := time.time() - beat.get("time", 0)) > STALE_AFTER:
        down = f"no heartbeat from the background process for {age:.0f} s"
    if down:
        return {"dimse": dimse_off or {"status": "down", "detail": down}, "index": {"status": "down", "detail": down},
                "configuration": {"status": "unknown", "detail": down}}
    return {"dimse": dimse_off or _dimse(beat["dimse"]), "index": _index(beat["index"]),
            "configuration": _configuration(beat.get("configuration"))}


def _configuration(c: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the other live nodes sharing the catalog have this node's DIMSE tables (archive/nodeconfig.py)."""
    if c is None:
        return {"status": "disabled", "detail": "the catalog is not shared"}
    out: dict[str, Any] = {"status": "ok", "digest": c["digest"]}
    if c.get("differing"):
        # C-MOVE or a storage commitment report may fail on some nodes: degraded, still ready
        out.update(status="degraded", differing=c["differing"],
                   detail=f"{len(c['differing'])} other node(s) have a different AE title or [[dimse.remote]] / "
                          "[[dimse.peer]] tables")
    elif c.get("error"):
        out.update(status="degraded", detail=f"cannot compare with the other nodes ({c['error']})")
    return out


def _dimse(d: dict[str, Any]) -> dict[str, Any]:
    if not d.get("ok"):
        return {"status": "down", "detail": "the DIMSE listener stopped"}
    return {"status": "ok", "ports": d["ports"], "associations": d["associations"]}


def _index(d: dict[str, Any]) -> dict[str, Any]:
    if not d.get("enabled"):
        return {"status": "disabled"}
    if not d.get("ok"):
        return {"status": "down", "detail": "the index worker stopped"}
    now = time.time()
    out: dict[str, Any] = {"status": "ok", "backend": d.get("backend"), "lag_events": d.get("lag_events"),
                           "oldest_pending_s": round(now - d["oldest_pending"], 1) if d.get("oldest_pending") else 0}
    if d.get("last_error"):
        # Searches miss the newest slides, ingest and retrieval work: degraded, still ready.
        out.update(status="degraded", detail="the index is unavailable; the worker retries with back-off")
    return out


def register(app) -> None:
    from archive.auth.access import requires

    from . import archive, settings

    @app.get("/health")
    @app.get("/health/live")
    @requires("public")
    def live():
        ok, detail = liveness(settings())
        response = jsonify(status="ok" if ok else "failing", detail=detail)
        response.status_code = 200 if ok else 503
        return response

    @app.get("/health/ready")
    @requires("public")
    def ready():
        ok, components = readiness(settings(), archive())
        response = jsonify(status="ready" if ok else "not ready", components=components)
        response.status_code = 200 if ok else 503
        return response
