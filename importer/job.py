"""An upload's conversion, in its own process: ``python -m importer.job JOB_DIR``.

The HTTP worker that received the file only starts this process and answers; the job
writes its state to ``JOB_DIR/job.json`` (replaced atomically), which any HTTP worker
reads for ``GET /api/imports/{job}``. The uploaded file is removed when the job ends.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path

FINAL = ("done", "failed")


def write_state(job_dir: Path, **state) -> None:
    path = job_dir / "job.json"
    current = read_state(job_dir) or {}
    current.update(state, updated=time.time())
    temp = job_dir / "job.json.tmp"
    temp.write_text(json.dumps(current))
    os.replace(temp, path)


def read_state(job_dir: Path) -> dict | None:
    try:
        state = json.loads((job_dir / "job.json").read_text())
    except (OSError, ValueError):
        return None
    if state.get("status") not in FINAL and state.get("pid") and not _alive(int(state["pid"])):
        state.update(status="failed", error={"title": "Processing failure",
                                             "message": "the conversion process ended before finishing"})
    return state


def _alive(pid: int) -> bool:
    from archive.lifecycle import process_alive

    if not process_alive(pid):
        return False
    try:  # a zombie child of this process counts as ended
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def run(job_dir: Path) -> int:
    from archive.errors import ArchiveError
    from archive.logs import quiet_libraries
    from archive.service import Archive

    from .run import VendorImporter

    quiet_libraries()
    request = job_dir / "request.pickle"
    with open(request, "rb") as f:
        settings, origin, entry, workers = pickle.load(f)
    request.unlink()  # the settings it holds stay only in this process
    source = next(job_dir.glob("source.*"))
    last = [0.0]

    def progress(phase: str, done: int, total: int) -> None:
        share = done / max(total, 1)
        overall = 0.05 + 0.75 * share if phase == "converting" else 0.8 + 0.2 * share if phase == "storing" else 0.0
        if overall - last[0] >= 0.01 or done == total:
            last[0] = overall
            write_state(job_dir, status=phase, progress=round(overall, 3))

    try:
        write_state(job_dir, status="hashing", progress=0.0)
        outcome = VendorImporter(Archive(settings), workers).import_file(source, origin, entry, progress)
    except ArchiveError as e:
        write_state(job_dir, status="failed", error={"title": e.title, "message": e.message})
        return 1
    except Exception as e:  # never the text: it may quote the file's metadata
        write_state(job_dir, status="failed", error={"title": "Processing failure",
                                                     "message": f"unexpected {type(e).__name__} while converting"})
        return 1
    finally:
        source.unlink(missing_ok=True)
    write_state(job_dir, status="done", progress=1.0, result={
        "status": outcome.status, "format": outcome.format, "lossless": outcome.lossless,
        "stored": outcome.stored, "dropped": outcome.dropped, "dropped_reasons": list(outcome.notes),
        "study": outcome.study_uid, "series": outcome.series_uid})
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
