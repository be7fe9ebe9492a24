"""HTTP door for vendor slides: ``POST /api/imports`` takes the file, ``GET /api/imports/{job}`` reports.

The body is the vendor file itself (``curl --data-binary @slide.svs``), streamed to disk
in chunks; ``?filename=`` gives its name (the extension picks the reader), and the
manifest's fields may come as query parameters (``specimen``, ``stain``, ``anatomy``,
``collection``, ``case_id``), checked before the upload is accepted. Conversion runs in
a background process (importer.job); the job resource reports phase, progress and the
resulting study and series.
"""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import uuid
from pathlib import Path

from flask import Blueprint, Flask, jsonify, request

from archive.auth.access import requires
from archive.errors import Busy, InvalidRequest, NotFound, UnsupportedFormat
from archive.storage import CHUNK, raise_for_os_error
from dicomweb import audit, base_url, principal, resource_url, settings
from dicomweb.stow import target_origin

from . import job as job_mod
from .formats import KNOWN_UNSUPPORTED, VENDOR_EXTENSIONS
from .manifest import COLUMNS, entry_from_row

bp = Blueprint("imports", __name__)
_JOB = re.compile(r"[0-9a-f]{32}")
#: Threads converting one uploaded slide (the CLI's --workers).
JOB_WORKERS = 2
#: Conversions running at once; another upload is answered 503 until one ends (each takes a core or two).
MAX_RUNNING_JOBS = 2


def register(app: Flask) -> None:
    app.register_blueprint(bp, url_prefix="/api")


def _jobs() -> Path:
    return settings().data_dir / "imports" / "jobs"


def _job_dir(job: str) -> Path:
    if not _JOB.fullmatch(job):
        raise NotFound("no such import job")
    path = _jobs() / job
    if not (path / "job.json").is_file():
        raise NotFound("no such import job")
    return path


@bp.post("/imports")
@requires("write")
def upload():
    name = request.args.get("filename", "")
    suffix = Path(name).suffix.lower()
    if suffix in KNOWN_UNSUPPORTED:
        raise UnsupportedFormat(f"{KNOWN_UNSUPPORTED[suffix]} files are not supported (docs/import.md)")
    if suffix not in VENDOR_EXTENSIONS:
        raise InvalidRequest("?filename= must name the vendor file, with its extension (.svs, .ndpi, .tiff, ...)")
    fields = {k: v for k, v in request.args.items() if k in COLUMNS}
    unknown = sorted(set(request.args) - set(COLUMNS) - {"filename"})
    if unknown:
        raise InvalidRequest(f"unknown parameter(s) {', '.join(u[:32] for u in unknown)}; "
                             f"known: filename, {', '.join(COLUMNS[1:])}")
    entry = entry_from_row(fields, "upload")
    origin = target_origin("api", entry.collection)
    if _running() >= MAX_RUNNING_JOBS:
        raise Busy(f"{MAX_RUNNING_JOBS} slide conversions are running; retry when one has finished")
    job = uuid.uuid4().hex
    job_dir = _jobs() / job
    job_dir.mkdir(parents=True)
    try:
        _receive(job_dir / f"source{suffix}")
    except BaseException:
        for p in job_dir.iterdir():
            p.unlink()
        job_dir.rmdir()
        raise
    fd = os.open(job_dir / "request.pickle", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the settings
    with os.fdopen(fd, "wb") as f:
        pickle.dump((settings(), origin, entry, JOB_WORKERS), f)
    job_mod.write_state(job_dir, job=job, status="queued", progress=0.0, owner=principal().subject)
    process = subprocess.Popen([sys.executable, "-m", "importer.job", str(job_dir)], cwd=_repo(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    job_mod.write_state(job_dir, pid=process.pid)
    audit("BeginTransferringDICOMInstances", detail={"action": "C", "description": "vendor slide upload"})
    response = jsonify(_public(job_mod.read_state(job_dir) or {}))
    response.status_code = 202
    response.headers["Location"] = f"{_api_root()}/imports/{job}"
    return response


@bp.get("/imports/<job>")
@requires("write")
def status(job: str):
    state = job_mod.read_state(_job_dir(job)) or {}
    who = principal()
    if state.get("owner") != who.subject and not who.admin:
        raise NotFound("no such import job")  # another principal's upload: not even its existence
    return jsonify(_public(state))


def _running() -> int:
    root = _jobs()
    if not root.is_dir():
        return 0
    states = (job_mod.read_state(d) for d in root.iterdir() if d.is_dir())
    return sum(1 for s in states if s and s.get("status") not in job_mod.FINAL)


def _receive(target: Path) -> None:
    """Stream the request body to ``target`` in bounded chunks (never the whole file in memory)."""
    stream = request.stream
    size = 0
    try:
        with open(target, "wb") as f:
            while chunk := stream.read(CHUNK):
                f.write(chunk)
                size += len(chunk)
    except OSError as e:
        raise_for_os_error(e)
    if size == 0:
        raise InvalidRequest("the request body is empty: send the vendor file as the body")


def _public(state: dict) -> dict:
    """The job as clients see it: no process id; links to the resulting study and series."""
    out = {k: v for k, v in state.items() if k not in ("pid", "updated", "owner")}
    result = out.get("result") or {}
    if result.get("study"):
        result["study_url"] = resource_url(result["study"])
        result["series_url"] = resource_url(result["study"], result.get("series"))
    return out


def _api_root() -> str:
    return base_url().rsplit("/dicomweb", 1)[0] + "/api"


def _repo() -> str:
    return os.fspath(Path(__file__).resolve().parent.parent)
